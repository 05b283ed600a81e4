"""The reply's prompt prefilled from partial transcripts while the user speaks (prefill.py),
session level with the fake models: what is sent, when, and when nothing is."""

from __future__ import annotations

import asyncio

from quillman.config import VadConfig
from quillman.engines.llm.base import GenerationParams, GenerationRequest
from quillman.pipeline.prefill import SpeechPrefill

VAD = VadConfig(early_asr_ms=0)


def last_user(messages: list[dict]) -> str:
    return [m for m in messages if m["role"] == "user"][-1]["content"]


async def speak(make_driver, backends, phrases_24k, make_clip, session_config, **session):
    config = session_config(prefill_during_speech=True, partial_transcript_interval_ms=300)
    driver = await make_driver(config=config, vad_config=VAD)
    if session:
        await driver.send({"type": "session.update", "session": {"type": "realtime", **session}})
        await driver.wait_for("session.updated")
    # Two phrases, 120 ms apart (no pause): one segment, ~3 s of speech; partials every 300 ms.
    clip = make_clip(list(phrases_24k), 24000, 0.3, [0.12], 1.0)
    await driver.append(clip.pcm)
    await driver.wait_for("response.done")
    return driver


async def test_the_prompt_with_the_words_heard_so_far_is_prefilled_before_the_turn_ends(
        make_driver, backends, phrases_24k, make_clip, session_config):
    # The partial ASR calls come first (call order), then the turn's own.
    backends.transcripts = ["what is", "what is the capital", "what is the capital of france and how"]
    backends.default_transcript = "what is the capital of france and how many people live there"
    driver = await speak(make_driver, backends, phrases_24k, make_clip, session_config)
    assert backends.prefill_calls, "nothing was prefilled while the user spoke"
    heard = [last_user(call.args["messages"]) for call in backends.prefill_calls]
    # Each hypothesis less its newest word (it may be cut off), and never a single word.
    # ("what is" gave one word: no request; later partials hear the whole question.)
    assert heard[:2] == ["what is the", "what is the capital of france and"]
    assert set(heard[2:]) <= {"what is the capital of france and how many people live"}
    # The reply's own request has the same prompt up to the user's words: the engine's cache
    # of the prefill is its prefix.
    reply = backends.llm_calls[-1].args["messages"]
    prefilled = backends.prefill_calls[-1].args["messages"]
    assert reply[:-1] == prefilled[:-1]
    assert last_user(reply).startswith(last_user(prefilled))
    assert all(call.args["request"].session_id == driver.session.id for call in backends.prefill_calls)
    # The client asked for no partial transcripts: the hypotheses stay on the server.
    assert not driver.of_type("conversation.item.input_audio_transcription.delta")


async def test_no_prefill_while_tools_decide_the_prompt(make_driver, backends, phrases_24k, make_clip, session_config):
    tool = {"type": "function", "name": "get_weather", "description": "The weather in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
    await speak(make_driver, backends, phrases_24k, make_clip, session_config, tools=[tool])
    assert backends.prefill_calls == []


async def test_no_prefill_and_no_partial_asr_when_turned_off(make_driver, backends, phrases_24k, make_clip):
    driver = await make_driver(vad_config=VAD)  # the harness's config: prefill_during_speech off
    clip = make_clip(list(phrases_24k), 24000, 0.3, [0.12], 1.0)
    await driver.append(clip.pcm)
    await driver.wait_for("response.done")
    assert backends.prefill_calls == []
    assert len(backends.asr_calls) == 1  # only the turn's own


async def test_a_newer_hypothesis_supersedes_the_prefill_in_flight():
    started: list[str] = []
    began = asyncio.Queue()

    async def prefill(request):
        started.append(request.messages[-1]["content"])
        began.put_nowait(None)
        await asyncio.Event().wait()  # until cancelled

    tasks: list[asyncio.Task] = []

    def spawn(coro, name):
        tasks.append(asyncio.ensure_future(coro))
        return tasks[-1]

    params = GenerationParams(max_tokens=8, temperature=0.0, top_p=1.0)
    prefill_of = SpeechPrefill(prefill, spawn, lambda item, words: GenerationRequest(
        [{"role": "user", "content": words}], params, session_id="s"))
    prefill_of.heard("item", "one")  # a single word: not worth a request
    prefill_of.heard("item", "what is the cap")
    await began.get()
    prefill_of.heard("item", "what is the capital of")
    await began.get()
    assert started == ["what is the", "what is the capital"]
    assert tasks[0].cancelled() and not tasks[1].done()
    prefill_of.stop()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert tasks[1].cancelled() and len(tasks) == 2  # two requests sent in all
