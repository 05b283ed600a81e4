"""The simulated cluster, measured: per-stage autoscaling under `quillman bench` load, a node lost
mid-turn, an in-place update. One run, one cluster.

  python benchmarks/cluster.py [--concurrency 6] [--turns 4] [--out docs/benchmarks]
                               [--doc docs/deploy.md] [--note "shared machine"]

Starts the nodes of ``CPU_NODES`` with ``ray start`` (quillman_bench/local_cluster.py), deploys
configs/cpu-nodes.yaml with ``serve deploy``, then: samples each stage's running replicas
(``GET /healthz``) every ``--sample-s`` while ``quillman bench`` runs and afterwards until every
stage is back at its minimum; loses the speech node mid-reply and replaces it; updates the app in
place (quillman_bench/cluster.py, the scenarios tests/e2e/test_cluster.py asserts on). Writes
cluster.json, cluster.md and cluster.png under --out, and with --doc fills the ``cluster`` block of
docs/deploy.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from quillman_bench.cluster import (STAGES, UPDATED_INSTRUCTIONS, deploy_config,  # noqa: E402
                                       lose_the_speech_node, replica_counts, update_in_place,
                                       wait_healthy)
from quillman_bench.local_cluster import CPU_NODES, local_cluster  # noqa: E402
from quillman_bench.machine import machine_info  # noqa: E402
from quillman_bench.report import _fmt  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from update_docs import add_output_arguments, output_dir, replace_block  # noqa: E402

PORT = 8005
URL = f"http://127.0.0.1:{PORT}"
WS_URL = f"ws://127.0.0.1:{PORT}/v1/realtime"


class Sampler(threading.Thread):
    """Replica counts per stage every ``every_s``: ``[(seconds since start, {stage: n}), ...]``."""

    def __init__(self, every_s: float):
        super().__init__(daemon=True)
        self.every_s, self.samples, self.start_at = every_s, [], time.monotonic()
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.samples.append((round(time.monotonic() - self.start_at, 1), replica_counts(URL)))
            except OSError:
                pass
            self.stopped.wait(self.every_s)

    def now(self) -> float:
        return round(time.monotonic() - self.start_at, 1)


def autoscaling(args: argparse.Namespace, minimum: dict[str, int], out: Path) -> dict[str, Any]:
    sampler = Sampler(args.sample_s)
    sampler.start()
    time.sleep(args.sample_s * 3)  # at rest first
    bench_start = sampler.now()
    command = [sys.executable, "-m", "quillman.cli", "bench", "--url", WS_URL, "--concurrency",
               str(args.concurrency), "--turns", str(args.turns), "--json", str(out / "cluster-bench.json"), "--quiet"]
    status = subprocess.run(command, cwd=ROOT).returncode
    bench_end = sampler.now()
    deadline = time.monotonic() + args.settle_s
    while time.monotonic() < deadline:  # until every stage is back at its minimum
        if sampler.samples and sampler.samples[-1][0] > bench_end and sampler.samples[-1][1] == minimum:
            break
        time.sleep(args.sample_s)
    sampler.stopped.set()
    sampler.join()
    bench = json.loads((out / "cluster-bench.json").read_text()) if status in (0, 1) else {}
    return {"samples": sampler.samples, "bench_start_s": bench_start, "bench_end_s": bench_end,
            "bench_status": status, "bench": bench.get("levels", [])}


def changes(timeline: dict[str, Any]) -> list[tuple[float, dict[str, int], str]]:
    """The samples where a count changed, with the bench start and end marked."""
    rows, last = [], None
    marks = {timeline["bench_start_s"]: "bench starts", timeline["bench_end_s"]: "bench ends"}
    for t, counts in timeline["samples"]:
        note = " / ".join(label for at, label in marks.items() if last is not None and last[0] < at <= t)
        if last is None or counts != last[1] or note:
            rows.append((t, counts, note))
        last = (t, counts)
    return rows


def markdown(result: dict[str, Any]) -> str:
    timeline = result["autoscaling"]
    lines = ["| t (s) | " + " | ".join(STAGES) + " | |", "|---" * (len(STAGES) + 2) + "|"]
    for t, counts, note in changes(timeline):
        lines.append(f"| {t:g} | " + " | ".join(str(counts.get(s, 0)) for s in STAGES) + f" | {note} |")
    level = (timeline["bench"] or [{}])[0]
    lat = level.get("latency_ms", {})
    lines += ["", f"`quillman bench --concurrency {result['settings']['concurrency']} --turns "
              f"{result['settings']['turns']}` against it: turns ok/failed/lost "
              f"{level.get('completed')}/{level.get('failed')}/{level.get('lost')}, voice-to-voice p50 "
              f"{_fmt(lat.get('p50'))} ms, p95 {_fmt(lat.get('p95'))} ms."]
    loss, update = result["node_loss"], result["update"]
    lines += ["", "| scenario | outcome |", "|---|---|",
              f"| speech node killed mid-reply | that turn `{loss['lost_status']}` "
              f"(`{', '.join(loss['lost_codes']) or '-'}`) {loss['failed_after_s']:.1f} s after the kill; "
              f"a text session generating on the models node at the same moment: `{loss['untouched_status']}` |",
              f"| replacement node `speech-2` started | app healthy again {loss['replaced_after_s']:.1f} s later "
              f"(Speaker on {', '.join(loss['speaker_nodes'])}); the failed session's next spoken turn "
              f"`{loss['after_status']}` |",
              f"| `serve deploy` of new instructions during a reply | that reply `{update['open_status']}`; new "
              f"sessions on the new version {update['new_version_after_s']:.1f} s after the deploy, their turn "
              f"`{update['new_status']}`; the old session's next turn `{update['old_next_status']}` with its old "
              f"instructions |"]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timeline = result["autoscaling"]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    ts = [t for t, _ in timeline["samples"]]
    for offset, stage in enumerate(STAGES):
        ax.step(ts, [c.get(stage, 0) + offset * 0.04 for _, c in timeline["samples"]], where="post", label=stage)
    ax.axvspan(timeline["bench_start_s"], timeline["bench_end_s"], color="grey", alpha=0.15, label="bench load")
    ax.set_xlabel("seconds")
    ax.set_ylabel("running replicas")
    ax.set_yticks([0, 1, 2, 3])
    ax.set_title(f"Per-stage autoscaling, {result['settings']['concurrency']} bench callers")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


async def scenarios(cluster, folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    loss = await lose_the_speech_node(cluster, WS_URL, URL, ("What is the capital of France?",
                                                              "How many legs does a spider have?"))
    update = await update_in_place(cluster, WS_URL, deploy_config(folder, PORT, instructions=UPDATED_INSTRUCTIONS))
    return ({"lost_status": loss.lost.status, "lost_codes": [e["code"] for e in loss.lost.errors],
             "failed_after_s": round(loss.failed_after_s, 1), "untouched_status": loss.untouched.status,
             "replaced_after_s": round(loss.replaced_after_s, 1), "speaker_nodes": loss.speaker_nodes,
             "after_status": loss.after.status},
            {"open_status": update.open_turn.status, "new_version_after_s": round(update.new_version_after_s, 1),
             "new_status": update.new_turn.status, "old_next_status": update.old_next_turn.status})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=6)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--sample-s", type=float, default=2.0)
    parser.add_argument("--settle-s", type=float, default=240.0, help="the most to wait for scale-down")
    add_output_arguments(parser, "fill the cluster block of this markdown file")
    args = parser.parse_args()
    out = output_dir(args)
    started_at = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with local_cluster() as cluster:
        t0 = time.monotonic()
        cluster.start(CPU_NODES)
        nodes_s = time.monotonic() - t0
        cluster.deploy(deploy_config(cluster.workdir, PORT))
        deploy_s = wait_healthy(URL)
        minimum = replica_counts(URL)
        timeline = autoscaling(args, minimum, out)
        node_loss, update = asyncio.run(scenarios(cluster, cluster.workdir))
    result = {"started_at": started_at, "machine": machine_info(),
              "settings": {"concurrency": args.concurrency, "turns": args.turns, "sample_s": args.sample_s,
                           "nodes": CPU_NODES},
              "nodes_up_s": round(nodes_s, 1), "deploy_to_healthy_s": round(deploy_s, 1),
              "autoscaling": timeline, "node_loss": node_loss, "update": update}
    (out / "cluster.json").write_text(json.dumps(result, indent=1))
    text = markdown(result)
    (out / "cluster.md").write_text(text + "\n")
    print(text)
    plot(result, out / "cluster.png")
    if args.doc:
        doc = Path(args.doc)
        m = result["machine"]
        header = (f"Taken {started_at} on {m.get('cpu')}, {m.get('cores')} cores, {m.get('memory_gb')} GB"
                  f"{' — ' + args.note if args.note else ''}. Three nodes ({', '.join(CPU_NODES)}) up in "
                  f"{result['nodes_up_s']:g} s, `serve deploy` to healthy in {result['deploy_to_healthy_s']:g} s. "
                  f"Running replicas per stage (`GET /healthz`, sampled every {args.sample_s:g} s; rows where "
                  "a count changed):")
        doc.write_text(replace_block(doc.read_text(), "cluster", f"{header}\n\n{text}\n\n"
                                     "![replicas over time](benchmarks/cluster.png)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
