"""The bench report as a PNG: latency vs concurrency, and the median latency split by stage.

matplotlib is optional (it comes with the ``bench`` extra): without it no plot is written.
"""

from __future__ import annotations

import sys
from typing import Any

from quillman_bench import INSTALL_HINT
from quillman_bench.report import MARKS, MODES, TRANSPORT_SEGMENT, latency_segments


def plot(report: dict[str, Any], path: str) -> bool:
    """Latency vs concurrency (left) and the median latency split by stage (right)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"--plot: matplotlib is not installed ({INSTALL_HINT}); no plot written", file=sys.stderr)
        return False
    levels = report["levels"]
    modes = [m for m in MODES if any(s["mode"] == m for s in levels)]
    fig, (ax_lat, ax_bar) = plt.subplots(1, 2, figsize=(13, 4.8))
    colors = {"streaming": "tab:blue", "server_vad": "tab:green", "sequential": "tab:red"}
    for mode in modes:
        rows = sorted((s for s in levels if s["mode"] == mode), key=lambda s: s["concurrency"])
        xs = [s["concurrency"] for s in rows]
        for q, style in (("p50", "-o"), ("p95", "--s")):
            ys = [s["latency_ms"][q] if s["latency_ms"][q] is not None else float("nan") for s in rows]
            ax_lat.plot(xs, ys, style, color=colors[mode], label=f"{mode} {q}")
    slo = (report.get("slo") or {}).get("threshold_ms")
    if slo:
        ax_lat.axhline(slo, color="gray", linewidth=0.8, linestyle=":", label=f"{slo:g} ms")
    concurrencies = sorted({s["concurrency"] for s in levels})
    ax_lat.set_xscale("log", base=2)
    ax_lat.set_xticks(concurrencies, [str(c) for c in concurrencies])
    ax_lat.set_xlabel("concurrent callers")
    ax_lat.set_ylabel("voice-to-voice latency at the client (ms)")
    ax_lat.set_title("Latency vs concurrency")
    ax_lat.grid(alpha=0.3)
    ax_lat.legend(fontsize=8)

    labels = [label for _, label in MARKS] + [TRANSPORT_SEGMENT]
    cmap = plt.get_cmap("tab10")
    width = 0.8 / max(len(modes), 1)
    ticks, tick_labels = [], []
    for i, concurrency in enumerate(concurrencies):
        for j, mode in enumerate(modes):
            level = next((s for s in levels if s["mode"] == mode and s["concurrency"] == concurrency), None)
            if level is None:
                continue
            x = i + (j - (len(modes) - 1) / 2) * width
            bottom = 0.0
            for label, ms in latency_segments(level).items():
                ax_bar.bar(x, ms, width * 0.9, bottom=bottom, color=cmap(labels.index(label)),
                           label=label if (i, j) == (0, 0) else None,
                           hatch="//" if mode == "sequential" else None, edgecolor="white")
                bottom += ms
            ticks.append(x)
            tick_labels.append(f"{concurrency}\n{mode[:3]}")
    ax_bar.set_xticks(ticks, tick_labels, fontsize=8)
    ax_bar.set_xlabel("concurrent callers / pipeline (str = streaming, seq = sequential)")
    ax_bar.set_ylabel("median latency by stage (ms)")
    ax_bar.set_title("Where the median latency goes")
    ax_bar.grid(axis="y", alpha=0.3)
    ax_bar.legend(fontsize=8)
    machine = report.get("machine") or {}
    fig.suptitle(f"quillman bench — {machine.get('cpu')}, {machine.get('cores')} cores", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
