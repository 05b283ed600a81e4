"""The load tests' statistics and the bench report (quillman_bench.report).

Pure: synthetic turn records; no server, no psutil.
"""

from __future__ import annotations

import json
import statistics

import numpy as np
import pytest

from quillman_bench import report as bench
from quillman_bench.report import TurnRecord
from quillman.protocol import STAGES

TIMINGS = {"turn_detected_ms": 500.0, "transcript_ms": 700.0, "first_token_ms": 800.0,
           "first_sentence_ms": 950.0, "first_audio_ms": 1150.0, "total_ms": 2150.0,
           "asr_last_segment_ms": 350.0, "llm_ttft_ms": 90.0, "tts_first_chunk_ms": 200.0, "speculative": 1.0}


def record(latency_ms: float | None = 1200.0, status: str = "completed", caller: int = 0, turn: int = 0,
           mode: str = "streaming", **timings: float) -> TurnRecord:
    return TurnRecord(caller, turn, "What is the capital of France?", status, latency_ms,
                      0.0 if status == "completed" else None, "Paris.", 2.0 if status == "completed" else 0.0,
                      0.5, {**TIMINGS, **timings} if status == "completed" else {}, mode=mode)


def test_percentile_interpolates_and_handles_empty():
    assert bench.percentile([], 50) is None
    assert bench.percentile([100.0], 99) == 100.0
    assert bench.percentile([100.0, 200.0, 300.0, 400.0], 50) == 250.0
    assert bench.percentile(list(range(1, 101)), 95) == pytest.approx(95.05, abs=0.1)


def test_percentile_is_numpy_linear_interpolation():
    values = [812.0, 1304.5, 990.0, 877.25, 2210.0, 905.0, 1010.0]
    for q in (0, 25, 50, 90, 95, 99, 100):
        assert bench.percentile(values, q, digits=None) == pytest.approx(float(np.percentile(values, q)))
    # rank h = (n - 1) * q / 100 = 0.95 * 3 = 2.85: x[2] + 0.85 * (x[3] - x[2])
    assert bench.percentile([10.0, 20.0, 30.0, 40.0], 95, digits=None) == pytest.approx(38.5)
    assert bench.percentile([1.0, 2.0], 50, digits=None) == 1.5
    assert bench.percentile(iter([3.0, 1.0, 2.0]), 100) == 3.0  # any iterable, unsorted


def test_median_is_p50_and_agrees_with_statistics_median():
    for values in ([5.0], [1.0, 9.0], [7.0, 1.0, 3.0], [4.0, 1.0, 3.0, 2.0]):
        assert bench.median(values, digits=None) == statistics.median(values) == bench.percentile(values, 50, None)
    assert bench.median([]) is None
    assert bench.median([1.23456, 2.0], digits=3) == 1.617


def test_distribution_fields():
    d = bench.distribution([300.0, 100.0, 200.0])
    assert d == {"p50": 200.0, "p95": 290.0, "p99": 298.0, "mean": 200.0, "min": 100.0, "max": 300.0, "n": 3}
    assert bench.distribution([])["p50"] is None


def test_reply_rtf_is_generation_time_per_audio_second():
    assert bench.reply_rtf({"transcript_ms": 500.0, "total_ms": 1500.0}, 4.0) == 0.25
    # A speculative transcript ready before the end of speech counts from the end of speech.
    assert bench.reply_rtf({"transcript_ms": -100.0, "total_ms": 1000.0}, 2.0) == 0.5
    assert bench.reply_rtf({"total_ms": 1000.0}, 0.0) is None
    assert bench.reply_rtf({}, 2.0) is None


def test_summarize_counts_every_status_and_only_completed_latencies():
    records = [record(1000.0), record(1400.0, turn=1), record(None, status="failed", turn=2),
               record(None, status="cancelled", turn=3), record(None, status="lost", caller=1)]
    s = bench.summarize(records, concurrency=2, wall_s=30.0, cpu={"mean_pct": 50.0, "max_pct": 90.0, "cores": 2})
    assert (s["turns"], s["completed"], s["failed"], s["cancelled"], s["lost"]) == (5, 2, 1, 1, 1)
    assert s["mode"] == "streaming" and s["concurrency"] == 2
    assert s["latency_ms"]["p50"] == 1200.0 and s["latency_ms"]["n"] == 2
    assert s["latency_ms"]["max"] == 1400.0
    assert set(s["server_stages_ms"]) == set(STAGES)
    assert s["server_stages_ms"]["first_audio_ms"]["p50"] == 1150.0
    assert s["wer_mean"] == 0.0 and s["reply_rtf_mean"] == 0.5 and s["speculative_share"] == 1.0
    assert s["turns_per_min"] == 4.0
    assert s["cpu"]["mean_pct"] == 50.0


def test_summarize_without_completed_turns():
    s = bench.summarize([record(None, status="lost")], 1, 10.0)
    assert s["latency_ms"]["p50"] is None and s["wer_mean"] is None and s["lost"] == 1


def test_latency_segments_add_up_to_the_client_median():
    s = bench.summarize([record(1200.0)], 1, 10.0)
    segments = bench.latency_segments(s)
    assert list(segments) == [label for _, label in bench.MARKS] + [bench.TRANSPORT_SEGMENT]
    assert segments["end of turn detected"] == 500.0
    assert segments["transcript"] == 200.0
    assert segments[bench.TRANSPORT_SEGMENT] == 50.0
    assert sum(segments.values()) == pytest.approx(1200.0)


def test_latency_segments_speculative_transcript_before_end_of_turn_adds_nothing():
    s = bench.summarize([record(1200.0, transcript_ms=300.0)], 1, 10.0)
    segments = bench.latency_segments(s)
    assert segments["transcript"] == 0.0
    assert segments["LLM first token"] == 300.0  # 800 - 500: measured from the later mark
    assert sum(segments.values()) == pytest.approx(1200.0)


def levels_for_sweep() -> list[dict]:
    levels = []
    for concurrency, fast, slow in ((1, 1000.0, 1600.0), (2, 1300.0, 2000.0), (4, 1800.0, 3000.0)):
        levels.append(bench.summarize([record(fast), record(fast + 100, turn=1)], concurrency, 10.0))
        levels.append(bench.summarize([record(slow, mode="sequential"), record(slow + 100, turn=1, mode="sequential")],
                                      concurrency, 10.0, mode="sequential"))
    return levels


def test_compare_gives_sequential_over_streaming_ratios():
    rows = bench.compare(levels_for_sweep())
    assert [r["concurrency"] for r in rows] == [1, 2, 4]
    assert rows[0]["streaming_p50"] == 1050.0 and rows[0]["sequential_p50"] == 1650.0
    assert rows[0]["ratio_p50"] == round(1650 / 1050, 2)
    assert set(rows[0]) == {"concurrency", "streaming_p50", "sequential_p50", "ratio_p50",
                            "streaming_p95", "sequential_p95", "ratio_p95"}
    assert bench.compare([lvl for lvl in levels_for_sweep() if lvl["mode"] == "streaming"]) == []


def test_max_concurrency_within_slo():
    levels = levels_for_sweep()
    assert bench.max_concurrency_within(levels, 1500.0) == 2
    assert bench.max_concurrency_within(levels, 500.0) is None
    assert bench.max_concurrency_within(levels, 1700.0, mode="sequential") == 1
    # A level that lost turns does not count, however fast.
    lossy = bench.summarize([record(100.0), record(None, status="lost")], 8, 10.0)
    assert bench.max_concurrency_within(levels + [lossy], 1500.0) == 2


def test_markdown_tables_have_one_row_per_level():
    levels = levels_for_sweep()
    report = bench.build_report("ws://x/v1/realtime", levels, {"turns": 2}, 1500.0, machine={"cpu": "test", "cores": 2})
    text = bench.markdown_report(report)
    main = bench.markdown_table(levels).splitlines()
    assert len(main) == 2 + len(levels)
    assert main[2].startswith("| streaming | 1 | 2/0/0 | 0 | 1050 |")
    assert "| sequential | 4 |" in text
    assert "| 1 | 1050 | 1650 | 1.57× |" in text
    assert "Largest concurrency with streaming v2v p95 < 1500 ms: 2" in text
    assert all(line.count("|") == main[0].count("|") for line in main)
    engines = bench.markdown_engine_table(levels).splitlines()
    assert len(engines) == 2 + len(levels) and "350 / 350" in engines[2]


def test_markdown_shows_missing_values_as_dashes():
    s = bench.summarize([record(None, status="lost")], 1, 5.0)
    assert "| streaming | 1 | 0/0/1 | 0 | – | – | – |" in bench.markdown_table([s])


def test_report_shape_is_json_serializable():
    levels = levels_for_sweep()
    report = bench.build_report("ws://x/v1/realtime", levels, {"turns": 2}, machine={"cpu": "t", "cores": 2})
    assert set(report) >= {"schema", "url", "started_at", "machine", "settings", "levels", "comparison", "slo", "totals"}
    assert report["totals"] == {"turns": 12, "completed": 12, "failed": 0, "cancelled": 0, "lost": 0,
                                "refused_sessions": 0, "underruns": 0}
    assert report["slo"] == {"threshold_ms": 1500.0, "quantile": "p95", "max_concurrency": 2}
    json.dumps(report)


def test_refused_callers_and_underruns_are_counted():
    refused = record(None, status="refused")
    refused.error = "connect: InvalidStatus: server rejected WebSocket connection: HTTP 503"
    starved = record(900.0)
    starved.underrun_s = 0.4
    s = bench.summarize([refused, starved, record(800.0)], 2, 5.0)
    assert s["refused_sessions"] == 1 and s["failed"] == 0
    assert s["underruns"] == 1 and s["underrun_s_max"] == 0.4
