"""``quillman bench`` at CI scale against the real server: its JSON's shape, and no lost turns.

Tiny on purpose (1 caller x 1 turn in each variant and the baseline, then 2 callers x 1 turn
starting together); it checks that
the benchmark works end to end, not how fast the server is: no wall-clock assertions.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from quillman_bench import bench
from quillman_bench.report import SCHEMA_VERSION
from quillman.protocol import STAGES

pytestmark = pytest.mark.e2e

LEVEL_KEYS = {"mode", "concurrency", "wall_s", "turns", "completed", "failed", "cancelled", "lost",
              "turns_per_min", "latency_ms", "server_stages_ms", "wer_mean", "reply_rtf_mean",
              "reply_audio_s_mean", "speculative_share", "cpu", "records", "refused_sessions",
              "underruns", "underrun_s_max"}
RECORD_KEYS = {"caller", "turn", "question", "status", "latency_ms", "wer", "reply_text", "reply_audio_s",
               "reply_rtf", "timings", "error", "mode", "underrun_s"}


def check_level(level: dict, mode: str, concurrency: int, turns: int) -> None:
    assert set(level) == LEVEL_KEYS, set(level) ^ LEVEL_KEYS
    assert (level["mode"], level["concurrency"]) == (mode, concurrency)
    assert level["lost"] == 0, [r["error"] for r in level["records"] if r["status"] == "lost"]
    assert level["failed"] == 0, [r["error"] for r in level["records"] if r["status"] == "failed"]
    assert level["turns"] == level["completed"] == concurrency * turns
    assert len(level["records"]) == level["turns"]
    for r in level["records"]:
        assert set(r) == RECORD_KEYS and r["mode"] == mode and r["underrun_s"] >= 0
        assert r["status"] == "completed" and r["latency_ms"] > 0 and r["reply_audio_s"] > 0
        assert 0 <= r["wer"] <= 1.0, r
        for stage in ("turn_detected_ms", "transcript_ms", "first_token_ms", "first_audio_ms", "total_ms"):
            assert isinstance(r["timings"].get(stage), (int, float)), (stage, r["timings"])
    lat = level["latency_ms"]
    assert lat["n"] == level["completed"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert set(level["server_stages_ms"]) == set(STAGES)
    assert level["server_stages_ms"]["first_audio_ms"]["p50"] is not None
    assert level["reply_rtf_mean"] > 0
    cpu = level["cpu"]
    assert cpu["cores"] >= 1
    if cpu["mean_pct"] is not None:
        assert 0 <= cpu["mean_pct"] <= cpu["max_pct"] <= 100


def test_bench_cli_json_with_baseline(ws_url, tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "quillman.cli", "bench", "--url", ws_url, "--concurrency", "1", "--turns", "1",
           "--variants", "streaming,server_vad", "--baseline", "--warmup-turns", "0", "--pause-s", "0.5", "--json", str(out), "--markdown", "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["schema"] == SCHEMA_VERSION and report["url"] == ws_url
    assert {"cpu", "cores"} <= set(report["machine"])
    assert [(lvl["mode"], lvl["concurrency"]) for lvl in report["levels"]] == [
        ("streaming", 1), ("server_vad", 1), ("sequential", 1)]
    for level, mode in zip(report["levels"], ("streaming", "server_vad", "sequential")):
        check_level(level, mode, 1, 1)
    # "streaming" is the server's default turn detection (semantic_vad), server_vad the other.
    assert report["levels"][0]["records"][0]["timings"].get("turn_decision_ms") is not None
    assert report["totals"]["lost"] == 0 and report["totals"]["completed"] == 3
    (row,) = report["comparison"]
    assert row["concurrency"] == 1 and row["ratio_p50"] > 0 and row["ratio_p95"] > 0
    assert set(report["slo"]) == {"threshold_ms", "quantile", "max_concurrency"}
    # --markdown prints the tables on stdout.
    assert "| streaming | 1 | 1/0/0 |" in proc.stdout and "| sequential | 1 | 1/0/0 |" in proc.stdout
    assert "sequential/streaming p50" in proc.stdout


async def test_bench_two_callers_starting_together(ws_url):
    (level,) = await bench.run_levels(ws_url, concurrency=2, turns=1, duration_s=None, pause_s=0.5,
                                      show_progress=False, modes=["streaming"], together=True)
    check_level(level, "streaming", 2, 1)
    assert {r["caller"] for r in level["records"]} == {0, 1}
