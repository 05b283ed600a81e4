"""Fill the generated blocks of docs/benchmarks.md from the benchmark JSON files.

  python benchmarks/update_docs.py [--bench docs/benchmarks/bench.json] [--engines docs/benchmarks/engines.json]
                                   [--doc docs/benchmarks.md] [--note "taken while the machine was shared"]

Each block sits between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` and is replaced as a
whole; the prose around the blocks is left alone. Blocks: ``machine``, ``headline``, ``bench``,
``engines``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from quillman_bench.report import markdown_report  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
import engines as engines_mod  # noqa: E402


def replace_block(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- {name}:begin -->\n).*?(\n<!-- {name}:end -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"docs: no <!-- {name}:begin --> ... <!-- {name}:end --> block")
    return pattern.sub(lambda m: m.group(1) + body.strip("\n") + m.group(2), text)


def add_output_arguments(parser: argparse.ArgumentParser, doc_help: str) -> None:
    """A benchmark script's outputs: ``--out`` (the folder for its JSON, markdown and plot),
    ``--doc`` (a markdown file with its block to fill) and ``--note`` (how the machine was)."""
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks"))
    parser.add_argument("--doc", help=doc_help)
    parser.add_argument("--note", default="", help="how the machine was")


def output_dir(args: argparse.Namespace) -> Path:
    """``--out``, created if need be."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def machine_block(bench: dict[str, Any], engines: dict[str, Any] | None, note: str) -> str:
    m = bench["machine"]
    s = bench["settings"]
    lines = [
        f"- Machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('memory_gb')} GB RAM, {m.get('os')}, "
        f"Python {m.get('python')}; no GPU.",
        f"- Taken {bench['started_at']}{' — ' + note if note else ''}.",
        f"- `quillman bench`: concurrency {', '.join(map(str, s['concurrency']))}; {s['turns']} turns per caller "
        f"and level; pipelines: {', '.join(s['modes'])}"
        f"{f' alternating in {rounds} blocks per level' if (rounds := s.get('rounds', 1)) > 1 else ''}; "
        f"{s['warmup_turns']} warm-up turn(s) per pipeline; "
        f"{s['questions']} espeak-ng questions, {s['chunk_ms']} ms frames at live pace, "
        f"~{s['pause_s']:g} s (±50 %) of silence between a reply and the next question.",
    ]
    if engines:
        es = engines["settings"]
        lines.append(f"- `benchmarks/engines.py`: {es['repeats']} repeats per input and side; "
                     f"ASR {es['asr']['model']} ({es['asr']['compute_type']}, {es['asr']['cpu_threads']} threads), "
                     f"LLM {es['llm']['model']} ({es['llm']['n_threads']} thread(s)), TTS Piper {es['tts']['model']} "
                     f"({es['tts']['threads']} thread); private Ray started in {es['ray_startup_s']} s; "
                     f"whole run {es['wall_s']} s.")
    return "\n".join(lines)


def headline_block(bench: dict[str, Any], engines: dict[str, Any] | None) -> str:
    levels = bench["levels"]
    one = next((lvl for lvl in levels if lvl["mode"] == "streaming" and lvl["concurrency"] == 1), None)
    rows = ["| measure | value |", "|---|---|"]
    if one:
        rows.append(f"| voice-to-voice at the client, 1 caller, default turn detection (semantic_vad), p50 / p95 | "
                    f"{one['latency_ms']['p50']:.0f} / {one['latency_ms']['p95']:.0f} ms |")
    for lvl in levels:
        if lvl["mode"] == "server_vad" and lvl["concurrency"] == 1:
            rows.append(f"| the same with server_vad, p50 / p95 | {lvl['latency_ms']['p50']:.0f} / "
                        f"{lvl['latency_ms']['p95']:.0f} ms |")
    if one and one.get("in_situ_over_alone"):
        medians = (bench.get("alone") or {}).get("median_ms", {})
        for key, ratio in one["in_situ_over_alone"].items():
            in_situ = (one["server_stages_ms"].get(key) or {}).get("p50")
            rows.append(f"| {key.removesuffix('_ms')}, 1 caller: in situ p50 / alone median | "
                        f"{in_situ} / {medians.get(key)} ms = {ratio}× |")
    slo = bench.get("slo") or {}
    tested = sorted({lvl["concurrency"] for lvl in levels})
    best = slo.get("max_concurrency")
    rows.append(f"| largest concurrency with streaming p95 < {slo.get('threshold_ms', 1500):g} ms "
                f"(of {', '.join(map(str, tested))}) | {best if best is not None else 'none'} |")
    for row in bench.get("comparison", []):
        rows.append(f"| sequential / streaming latency, {row['concurrency']} caller(s), p50 / p95 | "
                    f"{row['ratio_p50']}× / {row['ratio_p95']}× |")
    totals = bench["totals"]
    rows.append(f"| turns completed / failed / cancelled / lost | {totals['completed']} / {totals['failed']} / "
                f"{totals['cancelled']} / {totals['lost']} |")
    if engines:
        s = engines["summary"]
        rows += [
            f"| Ray / plain: ASR latency | {s['asr_latency_ratio']}× ({s['asr_overhead_ms']:+g} ms) |",
            f"| Ray / plain: LLM time to first token | {s['llm_ttft_ratio']}× ({s['llm_ttft_overhead_ms']:+g} ms) |",
            f"| Ray / plain: LLM tokens/s | {s['llm_tokens_per_s_ratio']}× |",
            f"| Ray / plain: TTS first chunk | {s['tts_first_chunk_ratio']}× ({s['tts_first_chunk_overhead_ms']:+g} ms) |",
            f"| Ray / plain: TTS real-time factor | {s['tts_rtf_ratio']}× |",
            f"| DeploymentHandle round trip (no-op) p50 | {s['handle_round_trip_ms']} ms |",
        ]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", default=str(ROOT / "docs" / "benchmarks" / "bench.json"))
    parser.add_argument("--engines", default=str(ROOT / "docs" / "benchmarks" / "engines.json"))
    parser.add_argument("--doc", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument("--note", default="", help="how the machine was (e.g. shared with other work)")
    args = parser.parse_args(argv)
    bench = json.loads(Path(args.bench).read_text())
    engines = json.loads(Path(args.engines).read_text()) if Path(args.engines).exists() else None
    doc = Path(args.doc)
    text = doc.read_text()
    text = replace_block(text, "machine", machine_block(bench, engines, args.note))
    text = replace_block(text, "headline", headline_block(bench, engines))
    text = replace_block(text, "bench", markdown_report(bench))
    if engines:
        text = replace_block(text, "engines", engines_mod.markdown(engines))
    doc.write_text(text)
    print(f"updated {doc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
