"""The benchmark's arithmetic and reports, the metrics discovery and the Grafana dashboard.

Pure: synthetic turn records, a fake Ray temp dir, sample Prometheus text; no server.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from quillman import bench
from quillman.bench import TurnRecord
from quillman.server_process import http_url, metrics_urls, parse_samples

ROOT = Path(__file__).resolve().parents[2]

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
    assert set(s["server_stages_ms"]) == set(bench.STAGES)
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
    assert main[2].startswith("| streaming | 1 | 2/0/0 | 1050 |")
    assert "| sequential | 4 |" in text
    assert "| 1 | 1050 | 1650 | 1.57× |" in text
    assert "Largest concurrency with streaming v2v p95 < 1500 ms: 2" in text
    assert all(line.count("|") == main[0].count("|") for line in main)
    engines = bench.markdown_engine_table(levels).splitlines()
    assert len(engines) == 2 + len(levels) and "350 / 350" in engines[2]


def test_markdown_shows_missing_values_as_dashes():
    s = bench.summarize([record(None, status="lost")], 1, 5.0)
    assert "| streaming | 1 | 0/0/1 | – | – | – |" in bench.markdown_table([s])


def test_report_shape_is_json_serializable():
    levels = levels_for_sweep()
    report = bench.build_report("ws://x/v1/realtime", levels, {"turns": 2}, machine={"cpu": "t", "cores": 2})
    assert set(report) >= {"schema", "url", "started_at", "machine", "settings", "levels", "comparison", "slo", "totals"}
    assert report["totals"] == {"turns": 12, "completed": 12, "failed": 0, "cancelled": 0, "lost": 0}
    assert report["slo"] == {"threshold_ms": 1500.0, "quantile": "p95", "max_concurrency": 2}
    json.dumps(report)


def test_parse_concurrency():
    assert bench.parse_concurrency("1,2,4,8") == [1, 2, 4, 8]
    assert bench.parse_concurrency("3") == [3]
    for bad in ("0", "", "1,-2"):
        with pytest.raises(Exception):
            bench.parse_concurrency(bad)


def test_cli_parses_every_option():
    import argparse

    parser = argparse.ArgumentParser()
    bench.add_bench_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "--concurrency", "1,2", "--turns", "2", "--duration", "60", "--baseline",
                              "--json", "o.json", "--markdown", "--plot", "o.png", "--start", "--port", "8011",
                              "--warmup-turns", "0", "--slo-ms", "1000", "--rounds", "3", "--quiet"])
    assert args.concurrency == [1, 2] and args.baseline and args.start and args.port == 8011
    assert args.rounds == 3
    assert args.run is bench.run


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    report = bench.build_report("ws://x", levels_for_sweep(), {}, machine={"cpu": "test", "cores": 2})
    out = tmp_path / "plot.png"
    assert bench.plot(report, str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_split_turns_over_rounds():
    assert bench.split_turns(10, 2) == [5, 5]
    assert bench.split_turns(10, 3) == [4, 3, 3]
    assert bench.split_turns(2, 5) == [1, 1]
    assert bench.split_turns(3, 1) == [3]


def test_cpu_summary_merges_stretches():
    import os

    parts = [{"samples": [10.0, 30.0], "wall_s": 2.0, "client_cpu_s": 0.2},
             {"samples": [50.0], "wall_s": 2.0, "client_cpu_s": 0.2}]
    cpu = bench.cpu_summary(parts)
    assert cpu["mean_pct"] == 30.0 and cpu["max_pct"] == 50.0
    assert cpu["bench_client_pct"] == round(100 * 0.4 / 4.0 / (os.cpu_count() or 1), 1)
    assert bench.cpu_summary([{"samples": [], "wall_s": 0.0, "client_cpu_s": 0.0}])["mean_pct"] is None


def test_cpu_sample_from_proc_stat():
    sample = bench._proc_stat()
    if sample is None:
        pytest.skip("no /proc/stat")
    busy, total = sample
    assert 0 <= busy <= total


# --- metrics discovery -------------------------------------------------------------------------


def test_http_url():
    assert http_url("ws://127.0.0.1:8000/v1/realtime") == "http://127.0.0.1:8000"
    assert http_url("http://127.0.0.1:8000") == "http://127.0.0.1:8000"


def test_metrics_urls_from_discovery_file_and_live_sessions(tmp_path, monkeypatch):
    import os

    monkeypatch.delenv("QUILLMAN_METRICS_URL", raising=False)
    (tmp_path / "prom_metrics_service_discovery.json").write_text(
        json.dumps([{"labels": {"job": "ray"}, "targets": ["192.0.2.2:37543", "192.0.2.2:44217"]}]))
    live = tmp_path / f"session_2026-01-01_00-00-00_000000_{os.getpid()}"
    dead = tmp_path / "session_2025-01-01_00-00-00_000000_999999999"
    for session, port in ((live, "37543"), (dead, "5555")):
        session.mkdir()
        (session / "metrics_export_port_abc").write_text(port)
    live_only = tmp_path / f"session_2026-01-02_00-00-00_000000_{os.getpid()}"
    live_only.mkdir()
    (live_only / "metrics_export_port_def").write_text("40000")
    assert metrics_urls(tmp_path) == ["http://127.0.0.1:37543/metrics", "http://127.0.0.1:44217/metrics",
                                      "http://127.0.0.1:40000/metrics"]
    monkeypatch.setenv("QUILLMAN_METRICS_URL", "http://127.0.0.1:1/metrics")
    assert metrics_urls(tmp_path) == ["http://127.0.0.1:1/metrics"]


def test_metrics_urls_without_ray(tmp_path, monkeypatch):
    monkeypatch.delenv("QUILLMAN_METRICS_URL", raising=False)
    assert metrics_urls(tmp_path / "nothing") == []


def test_parse_samples_keeps_quillman_series():
    text = """# HELP ray_quillman_turns_total User turns committed.
# TYPE ray_quillman_turns_total counter
ray_quillman_turns_total{application="quillman",deployment="Ingress"} 4.0
# TYPE ray_serve_num_http_requests_total counter
ray_serve_num_http_requests_total{route="/"} 7.0
"""
    assert parse_samples(text) == [("ray_quillman_turns_total", {"application": "quillman", "deployment": "Ingress"}, 4.0)]


# --- dashboard -----------------------------------------------------------------------------------


def test_grafana_dashboard_uses_only_exported_metrics():
    dashboard = json.loads((ROOT / "configs" / "grafana" / "quillman-dashboard.json").read_text())
    source = (ROOT / "quillman" / "metrics.py").read_text()
    ours = set(re.findall(r'"(quillman_\w+)"', source))
    assert ours >= {"quillman_sessions_active", "quillman_turns_total", "quillman_voice_to_voice_ms",
                    "quillman_stage_ms", "quillman_cancellations_total", "quillman_errors_total",
                    "quillman_audio_in_seconds_total", "quillman_audio_out_seconds_total"}
    exprs = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                exprs.append(node["expr"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(dashboard["panels"])
    used = {re.sub(r"_(bucket|sum|count)$", "", m) for e in exprs for m in re.findall(r"ray_quillman_\w+", e)}
    assert used, "no quillman series in the dashboard"
    assert {name.removeprefix("ray_") for name in used} <= ours
    assert {f"ray_{name}" for name in ours} <= used, "every metric has a panel"
    for e in exprs:
        assert e.count("(") == e.count(")") and e.count("{") == e.count("}"), e
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
