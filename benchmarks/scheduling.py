"""Graph variants A/B: the concurrency sweep on each, in one run, as one table and one plot.

  python benchmarks/scheduling.py [--variants batched,serial] [--concurrency 1,2,4,8] [--turns 3]
                                  [--out docs/benchmarks] [--doc docs/benchmarks.md] [--note "..."]

Variants: "batched" is serve_config.yaml (llama.cpp, batched and deadline-ordered); "serial" is
it with the pre-scheduling settings: llm.scheduler serial (one generation at a time behind a
lock), two syntheses / transcriptions at once per replica in arrival order (no deadline gate);
"vllm" is configs/cpu-vllm.yaml (vLLM's continuous batching on this CPU, the rest the same).
Each variant gets its own `serve run` (started and stopped here); the callers, questions and
pauses are the same. Writes <name>-<variant>.json, <name>.md and <name>.png under --out (name:
--block), and with --doc fills the ``--block`` block of docs/benchmarks.md ("scheduling" for
batched,serial; "vllm-cpu" for batched,vllm).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from quillman_bench.report import _fmt  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from update_docs import add_output_arguments, output_dir, replace_block  # noqa: E402

VARIANTS = ("batched", "serial", "vllm")


def serial_config(base: Path, folder: Path) -> Path:
    config = yaml.safe_load(base.read_text())
    app = config["applications"][0]
    app["args"]["llm"].update(scheduler="serial", n_threads_batch=2)
    app["args"].setdefault("tts", {}).update(max_concurrent=2, lead_s=1e9)
    app["args"].setdefault("asr", {})["max_concurrent"] = 2
    for deployment in app["deployments"]:
        if deployment["name"] in ("Transcriber", "Speaker"):
            deployment["max_ongoing_requests"] = 2
        if deployment["name"] == "LanguageModel":
            deployment["max_ongoing_requests"] = 4
    path = folder / "serve_config.serial.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_variant(config: Path, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    command = [sys.executable, "-m", "quillman.cli", "bench", "--start", "--config", str(config),
               "--concurrency", args.concurrency, "--turns", str(args.turns), "--pause-s", str(args.pause_s),
               "--json", str(out), "--quiet"]
    status = subprocess.run(command, cwd=ROOT).returncode
    if status not in (0, 1):  # 1: some turns were lost, still a report
        raise SystemExit(f"bench on {config} failed ({status})")
    return json.loads(out.read_text())


def table(reports: dict[str, dict[str, Any]]) -> str:
    lines = ["| variant | callers | turns ok/failed/lost | refused | v2v p50 | v2v p95 | v2v p99 | "
             "LLM TTFT p50/p95 | LLM queued p50/p95 | TTS first chunk p50/p95 | TTS queued p50/p95 | "
             "under-runs | CPU mean % |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for variant, report in reports.items():
        for s in report["levels"]:
            st = s["server_stages_ms"]

            def pair(stage: str) -> str:
                return f"{_fmt(st[stage]['p50'])} / {_fmt(st[stage]['p95'])}"

            lat = s["latency_ms"]
            lines.append(
                f"| {variant} | {s['concurrency']} | {s['completed']}/{s['failed']}/{s['lost']} | "
                f"{s.get('refused_sessions', 0)} | {_fmt(lat['p50'])} | {_fmt(lat['p95'])} | {_fmt(lat['p99'])} | "
                f"{pair('llm_ttft_ms')} | {pair('llm_queue_ms')} | {pair('tts_first_chunk_ms')} | "
                f"{pair('tts_queue_ms')} | {s.get('underruns', 0)} | {_fmt((s.get('cpu') or {}).get('mean_pct'))} |")
    return "\n".join(lines)


def plot(reports: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for variant, style in zip(reports, ("-o", "--s", "-.^")):
        levels = sorted(reports[variant]["levels"], key=lambda s: s["concurrency"])
        xs = [s["concurrency"] for s in levels]
        for q, alpha in (("p50", 1.0), ("p95", 0.6)):
            ax.plot(xs, [s["latency_ms"][q] for s in levels], style, alpha=alpha, label=f"{variant} {q}")
    ax.axhline(1500, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("concurrent callers")
    ax.set_ylabel("voice-to-voice latency (ms)")
    ax.set_xscale("log", base=2)
    ax.set_title(" vs ".join(reports))
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "serve_config.yaml"))
    parser.add_argument("--concurrency", default="1,2,4,8")
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--pause-s", type=float, default=1.0)
    parser.add_argument("--variants", default="batched,serial", help=f"of {', '.join(VARIANTS)}")
    parser.add_argument("--block", default="scheduling", help="output name and docs block")
    add_output_arguments(parser, "fill the --block block of this markdown file")
    args = parser.parse_args()
    out = output_dir(args)
    reports: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        configs = {"batched": Path(args.config), "serial": serial_config(Path(args.config), Path(tmp)),
                   "vllm": ROOT / "configs" / "cpu-vllm.yaml"}
        for variant in args.variants.split(","):
            print(f"== {variant}", file=sys.stderr)
            reports[variant] = run_variant(configs[variant], args, out / f"{args.block}-{variant}.json")
    text = table(reports)
    (out / f"{args.block}.md").write_text(text + "\n")
    print(text)
    plot(reports, out / f"{args.block}.png")
    if args.doc:
        doc = Path(args.doc)
        first = next(iter(reports.values()))
        m = first["machine"]
        header = (f"Taken {first['started_at']} on {m.get('cpu')}, {m.get('cores')} cores"
                  f"{' — ' + args.note if args.note else ''}; {args.turns} turns per caller and level, "
                  f"callers {args.concurrency}. ms; server stages p50 / p95.")
        doc.write_text(replace_block(doc.read_text(), args.block, f"{header}\n\n{text}\n\n"
                                     f"![latency vs callers](benchmarks/{args.block}.png)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
