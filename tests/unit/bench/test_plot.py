"""The bench report as a PNG (quillman_bench.plot); skipped without matplotlib."""

from __future__ import annotations

import pytest

from quillman_bench import report
from quillman_bench.plot import plot

TIMINGS = {"turn_detected_ms": 500.0, "transcript_ms": 700.0, "first_token_ms": 800.0,
           "first_sentence_ms": 950.0, "first_audio_ms": 1150.0, "total_ms": 2150.0}


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    levels = []
    for concurrency in (1, 2):
        for mode, latency in (("streaming", 1000.0), ("sequential", 1700.0)):
            records = [report.TurnRecord(0, t, "q", "completed", latency + 100 * t, 0.0, "a", 2.0, 0.5,
                                         dict(TIMINGS), mode=mode) for t in range(2)]
            levels.append(report.summarize(records, concurrency, 10.0, mode))
    out = tmp_path / "plot.png"
    assert plot(report.build_report("ws://x", levels, {}, machine={"cpu": "test", "cores": 2}), str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
