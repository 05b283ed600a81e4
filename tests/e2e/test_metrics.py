"""The Prometheus metrics of quillman.metrics reach Ray's metrics agent, with sane values.

Ray exports every ``ray.serve.metrics`` series through the node's metrics agent (names get a
``ray_`` prefix); its port is found through the Ray temp dir (quillman_bench.server_process). The
server may be shared (QUILLMAN_TEST_URL): every check is on what *this* test added, so other
traffic can only add to the counters. Ray reports to the agent every few seconds, so the test
polls; it asserts nothing about how fast anything is.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import defaultdict

import pytest

from quillman.client import RealtimeClient
from quillman_bench.server_process import metrics_urls, parse_samples, scrape_quillman
from quillman_bench.speech import spoken_question

pytestmark = pytest.mark.e2e

POLL_TIMEOUT_S = 90.0  # Ray's metrics report interval is 10 s by default
QUESTION = "Where do penguins live?"
SPOKEN_STAGES = ("turn_detected_ms", "transcript_ms", "first_token_ms", "first_sentence_ms",
                 "first_audio_ms", "total_ms")


def snapshot() -> list[tuple[str, dict[str, str], float]]:
    return parse_samples(scrape_quillman())


def total(samples, name: str, **labels: str) -> float:
    """Sum over every series of ``name`` (all replicas, all endpoints) matching ``labels``."""
    return sum(value for n, lbls, value in samples
               if n == name and all(lbls.get(k) == v for k, v in labels.items()))


def bucket_series(samples, name: str) -> dict[tuple, list[tuple[float, float]]]:
    """Histogram buckets grouped by their series (labels other than ``le``): [(le, count)]."""
    series: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
    for n, lbls, value in samples:
        if n == f"{name}_bucket":
            key = tuple(sorted((k, v) for k, v in lbls.items() if k != "le"))
            series[key].append((float(lbls["le"]), value))
    return series


async def drive_traffic(ws_url: str) -> None:
    """One spoken turn (completed), one bad frame (invalid_json), one cancelled text response."""
    async with RealtimeClient(ws_url) as client:
        result = await client.talk(spoken_question(QUESTION), 24000)
        assert result.status == "completed", (result.status, result.errors)
        assert result.reply_audio_s > 0
        await client.ws.send("{not json")
        error = await client.next_event(timeout=30)
        while error["type"] != "error":
            error = await client.next_event(timeout=30)
        assert error["error"]["code"] == "invalid_json", error
        await client.send({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "Tell me a long story about the sea."}]}})
        await client.send({"type": "response.create"})
        await client.send({"type": "response.cancel"})
        done = await client.wait_for("response.done", timeout=60)
        assert done["response"]["status"] == "cancelled", done["response"]


def test_metrics_endpoint_is_discovered(server_url):
    urls = metrics_urls()
    assert urls, "no Ray metrics endpoint found under the Ray temp dir; set QUILLMAN_METRICS_URL"
    assert all(u.startswith("http://127.0.0.1:") for u in urls)


async def test_expected_series_with_sane_values(server_url, ws_url):
    before = await asyncio.to_thread(snapshot)
    await drive_traffic(ws_url)

    want = {
        "sessions": lambda s: total(s, "ray_quillman_sessions_total") >= total(before, "ray_quillman_sessions_total") + 1,
        "turns": lambda s: total(s, "ray_quillman_turns_total") >= total(before, "ray_quillman_turns_total") + 2,
        "completed": lambda s: (total(s, "ray_quillman_responses_total", status="completed")
                                >= total(before, "ray_quillman_responses_total", status="completed") + 1),
        "cancelled": lambda s: (total(s, "ray_quillman_responses_total", status="cancelled")
                                >= total(before, "ray_quillman_responses_total", status="cancelled") + 1),
        "cancellations": lambda s: (total(s, "ray_quillman_cancellations_total")
                                    >= total(before, "ray_quillman_cancellations_total") + 1),
        "invalid_json": lambda s: (total(s, "ray_quillman_errors_total", code="invalid_json")
                                   >= total(before, "ray_quillman_errors_total", code="invalid_json") + 1),
        "audio_in": lambda s: (total(s, "ray_quillman_audio_in_seconds_total")
                               >= total(before, "ray_quillman_audio_in_seconds_total") + 1.0),
        "audio_out": lambda s: (total(s, "ray_quillman_audio_out_seconds_total")
                                > total(before, "ray_quillman_audio_out_seconds_total")),
        "voice_to_voice": lambda s: (total(s, "ray_quillman_voice_to_voice_ms_count")
                                     >= total(before, "ray_quillman_voice_to_voice_ms_count") + 1),
        "stages": lambda s: all(
            total(s, "ray_quillman_stage_ms_count", stage=stage)
            >= total(before, "ray_quillman_stage_ms_count", stage=stage) + 1 for stage in SPOKEN_STAGES),
        "sessions_active": lambda s: total(s, "ray_quillman_sessions_active") >= 1,
    }
    missing = set(want)
    samples = before
    # A session stays open while polling: sessions_active counts it.
    async with RealtimeClient(ws_url):
        deadline = time.monotonic() + POLL_TIMEOUT_S
        while missing and time.monotonic() < deadline:
            await asyncio.sleep(2)
            samples = await asyncio.to_thread(snapshot)
            missing = {name for name in missing if not want[name](samples)}
    names = sorted({n for n, _, _ in samples})
    assert not missing, f"not seen within {POLL_TIMEOUT_S:g} s: {sorted(missing)}; series: {json.dumps(names)}"

    # Every quillman series is tagged with its Serve application and deployment.
    for name, labels, value in samples:
        assert labels.get("application") and labels.get("deployment") == "Ingress", (name, labels)
        assert math.isfinite(value) and value >= 0, (name, labels, value)

    # Histograms: cumulative buckets, the +Inf bucket equals the series' count, sums not negative.
    counts_by_series = {(n, tuple(sorted(lbls.items()))): v for n, lbls, v in samples if n.endswith("_count")}
    for histogram in ("ray_quillman_voice_to_voice_ms", "ray_quillman_stage_ms"):
        series = bucket_series(samples, histogram)
        assert series, histogram
        for key, buckets in series.items():
            buckets.sort()
            counts = [count for _, count in buckets]
            assert counts == sorted(counts), (histogram, key, buckets)
            assert buckets[-1][0] == math.inf, (histogram, key)
            assert buckets[-1][1] == counts_by_series[(f"{histogram}_count", key)], (histogram, key)
    assert total(samples, "ray_quillman_voice_to_voice_ms_sum") > 0
    # Responses by status: only the statuses the protocol knows.
    statuses = {lbls.get("status") for n, lbls, _ in samples if n == "ray_quillman_responses_total"}
    assert statuses <= {"completed", "cancelled", "failed", "incomplete"}, statuses
