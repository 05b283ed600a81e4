"""configs/cpu-cluster.yaml on this machine: every stage autoscaled with 2+ replicas, sessions
spread over them, a session's turns kept on the LLM replica that holds its prompt cache."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
import yaml

from quillman.client import RealtimeClient
from quillman_bench.speech import spoken_question as spoken
from quillman_bench.speech import word_error_rate
from quillman_bench.server_process import ROOT, serve_run

pytestmark = pytest.mark.e2e

PORT = 8004
QUESTIONS = ["What is the capital of France?", "How many legs does a spider have?",
             "Why is the sky blue?", "Where do penguins live?"]


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cluster")
    config = yaml.safe_load((ROOT / "configs" / "cpu-cluster.yaml").read_text())
    config["http_options"].update(host="127.0.0.1", port=PORT)
    config["proxy_location"] = "HeadOnly"
    path = folder / "cpu-cluster.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with serve_run(path, port=PORT, log_path=folder / "serve.log") as server:
        yield server.url


def replicas(url: str) -> dict[str, int]:
    deployments = httpx.get(f"{url}/healthz", timeout=10).json()["deployments"]
    return {name: d.get("replicas", 0) for name, d in deployments.items()}


async def test_sessions_spread_over_two_replicas_per_stage(cluster_url):
    deadline = time.monotonic() + 120
    while min(replicas(cluster_url).values()) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(2)
    counts = replicas(cluster_url)
    assert all(n >= 2 for n in counts.values()), counts

    ws_url = cluster_url.replace("http://", "ws://") + "/v1/realtime"

    async def conversation(question: str) -> tuple:
        async with RealtimeClient(ws_url) as client:
            first = await client.talk(spoken(question), 24000)
            second = await client.say("Thank you. Say that again, shorter.")
        return first, second

    results = await asyncio.gather(*(conversation(q) for q in QUESTIONS))
    for question, (first, second) in zip(QUESTIONS, results):
        assert first.status == "completed" and second.status == "completed", (first.errors, second.errors)
        assert word_error_rate(question, first.user_transcript) <= 0.34, first.user_transcript
        assert first.reply_audio_s > 0.3 and second.reply_audio_s > 0.3
        # The follow-up reached the LLM replica that evaluated the first turn: its prompt came
        # from that session's cache, not evaluated again.
        cached = second.response["usage"]["input_token_details"]["cached_tokens"]
        assert cached > first.response["usage"]["input_tokens"] // 2, (cached, first.response["usage"])
