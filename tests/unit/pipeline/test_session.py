"""RealtimeSession with fake models: protocol sequences, spoken turns, barge-in, errors, cleanup.

The session runs as the ingress runs it (``run(receive)`` with the sender draining the outbox);
client events go through ``handle_frame``. Speech is espeak-ng audio through real Silero VAD,
fed faster than real time. Models are the fakes of conftest.py.
"""

from __future__ import annotations

import asyncio
import base64
import json

import numpy as np
import pytest

from tests.unit.conftest import until

pytestmark = pytest.mark.usefixtures("hang_guard")

GA_RESPONSE_AUDIO = [
    "response.created", "response.output_item.added", "conversation.item.added",
    "response.content_part.added",
    "response.output_audio.done", "response.output_audio_transcript.done", "response.content_part.done",
    "response.output_item.done", "conversation.item.done", "response.done",
]
DELTAS = {"response.output_audio.delta", "response.output_audio_transcript.delta",
          "response.output_text.delta", "conversation.item.input_audio_transcription.delta"}
AUDIO_END_TOLERANCE_MS = 120


def b64(pcm: np.ndarray) -> str:
    return base64.b64encode(np.asarray(pcm, dtype="<i2").tobytes()).decode()


def response_events(d, response_id: str) -> list[dict]:
    """Every event of one response, in order (its item's conversation.item.* events included)."""
    item_ids = set()
    out = []
    for e in d.events:
        body = e.get("response") if e["type"] in ("response.created", "response.done") else None
        if body is not None and body["id"] == response_id:
            out.append(e)
        elif e.get("response_id") == response_id:
            out.append(e)
            if "item" in e:
                item_ids.add(e["item"]["id"])
        elif e["type"].startswith("conversation.item.") and e.get("item", {}).get("id") in item_ids:
            out.append(e)
    return out


def skeleton(events: list[dict]) -> list[str]:
    return [e["type"] for e in events if e["type"] not in DELTAS]


def statuses(d) -> list[str]:
    return [e["response"]["status"] for e in d.of_type("response.done")]


# --- text turns ---------------------------------------------------------------------------------


async def test_session_created_first(driver):
    first = driver.events[0]
    assert first["type"] == "session.created"
    session = first["session"]
    assert session["type"] == "realtime"
    assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert session["audio"]["input"]["turn_detection"]["type"] == "server_vad"


async def test_text_turn_exact_ga_sequence(driver, backends):
    backends.reply = "Sure thing my friend, here it is. It is noon."
    start = len(driver.events)
    done = await driver.text_turn("What time is it?")
    await driver.settle()
    types = driver.types(start)
    # The user item, then the response of PROTOCOL.md §5 (steps 3-5), nothing else.
    assert types[:2] == ["conversation.item.added", "conversation.item.done"]
    assert [t for t in types[2:] if t not in DELTAS] == GA_RESPONSE_AUDIO
    body = types[2:]
    first_delta = min(i for i, t in enumerate(body) if t in DELTAS)
    last_delta = max(i for i, t in enumerate(body) if t in DELTAS)
    assert body.index("response.content_part.added") < first_delta
    assert last_delta < body.index("response.output_audio.done")
    # Transcript and audio deltas are interleaved: audio starts before the text is complete.
    kinds = [t for t in body if t in DELTAS]
    assert kinds.index("response.output_audio.delta") < len(kinds) - 1 - kinds[::-1].index(
        "response.output_audio_transcript.delta")
    user_item = driver.events[start]["item"]
    assert user_item["role"] == "user" and user_item["content"][0]["text"] == "What time is it?"

    response = done["response"]
    assert response["status"] == "completed"
    assert response["output"][0]["content"][0]["transcript"] == backends.reply
    timings = response["timings"]
    assert timings and all(isinstance(v, (int, float)) for v in timings.values())
    for key in ("first_token_ms", "first_audio_ms", "total_ms"):
        assert key in timings
    assert len(driver.of_type("response.done")) == 1
    assert driver.errors() == []
    messages = backends.llm_calls[0].args["messages"]
    assert messages[0]["role"] == "system"
    assert messages[1:] == [{"role": "user", "content": "What time is it?"}]


async def test_second_text_turn_sees_the_conversation(driver, backends):
    backends.replies = {0: "Paris is the capital.", 1: "About two million people."}
    await driver.text_turn("Capital of France?")
    await driver.text_turn("How many people live there?")
    messages = backends.llm_calls[1].args["messages"]
    assert [(m["role"], m["content"]) for m in messages[1:]] == [
        ("user", "Capital of France?"), ("assistant", "Paris is the capital."),
        ("system", "New question."), ("user", "How many people live there?")]
    # previous_item_id chains the conversation items.
    added = [e for e in driver.of_type("conversation.item.added") if e["item"]["role"] == "user"]
    assert added[0].get("previous_item_id") is None
    first_reply = driver.of_type("response.done")[0]["response"]["output"][0]["id"]
    assert added[1]["previous_item_id"] == first_reply


async def test_response_create_options_apply_to_that_response_only(driver, backends):
    done = await driver.text_turn("hi", instructions="Talk like a pirate.", output_modalities=["text"],
                                  metadata={"trace": "t1"})
    assert backends.llm_calls[0].args["messages"][0] == {"role": "system", "content": "Talk like a pirate."}
    assert backends.tts_calls == []
    assert done["response"]["output_modalities"] == ["text"]
    assert done["response"]["metadata"]["trace"] == "t1"
    assert "response.output_text.delta" in driver.types()
    done = await driver.text_turn("again")
    assert backends.llm_calls[1].args["messages"][0]["content"] != "Talk like a pirate."
    assert done["response"]["output_modalities"] == ["audio"]
    assert backends.tts_calls


async def test_session_update_changes_the_session(driver, backends):
    await driver.send({"type": "session.update", "event_id": "ev_u", "session": {
        "type": "realtime", "instructions": "Be terse.", "output_modalities": ["text"],
        "audio": {"output": {"format": {"type": "audio/pcm", "rate": 16000}, "voice": "alloy"}}}})
    updated = await driver.wait_for("session.updated")
    session = updated["session"]
    assert session["instructions"] == "Be terse."
    assert session["output_modalities"] == ["text"]
    assert session["audio"]["output"]["format"]["rate"] == 16000
    assert session["audio"]["output"]["voice"] == "joe"  # unknown voices fall back to the default
    await driver.text_turn("hi")
    assert backends.llm_calls[0].args["messages"][0]["content"] == "Be terse."
    assert backends.tts_calls == []


async def test_output_rate_reaches_tts(driver, backends):
    await driver.send({"type": "session.update", "session": {
        "audio": {"output": {"format": {"type": "audio/pcm", "rate": 16000}}}}})
    await driver.text_turn("hi")
    assert {c.args["rate"] for c in backends.tts_calls} == {16000}


# --- spoken turns -------------------------------------------------------------------------------


async def spoken_turn(d, clip, responses: int = 1):
    await d.append(clip.pcm, rate=clip.rate)
    await d.wait_for("response.done", count=responses)
    await d.wait_for("conversation.item.input_audio_transcription.completed", count=responses)
    await d.settle()


async def test_spoken_turn_events(driver, backends, paused_speech_24k):
    clip = paused_speech_24k
    backends.transcripts = ["what is the capital of france", "and how many people live there"]
    await spoken_turn(driver, clip)
    types = driver.types()
    assert types.count("input_audio_buffer.speech_started") == 1  # the inner pause is not a new turn
    assert types.count("input_audio_buffer.speech_stopped") == 1
    assert types.count("input_audio_buffer.committed") == 1
    assert types.count("response.done") == 1
    order = ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
             "input_audio_buffer.committed"]
    assert [types.index(t) for t in order] == sorted(types.index(t) for t in order)
    started = driver.of_type("input_audio_buffer.speech_started")[0]
    stopped = driver.of_type("input_audio_buffer.speech_stopped")[0]
    committed = driver.of_type("input_audio_buffer.committed")[0]
    item_id = started["item_id"]
    assert stopped["item_id"] == committed["item_id"] == item_id
    # The user item: added in progress right after the commit, done with its transcript.
    user_added = [e for e in driver.of_type("conversation.item.added") if e["item"]["id"] == item_id]
    assert len(user_added) == 1 and types.index("conversation.item.added") == types.index(
        "input_audio_buffer.committed") + 1
    transcription = driver.of_type("conversation.item.input_audio_transcription.completed")[0]
    assert transcription["item_id"] == item_id
    assert transcription["transcript"] == "what is the capital of france and how many people live there"
    assert transcription["usage"]["type"] == "duration" and transcription["usage"]["seconds"] > 0
    user_done = [e for e in driver.of_type("conversation.item.done") if e["item"]["id"] == item_id]
    assert user_done[0]["item"]["content"][0]["transcript"] == transcription["transcript"]
    assert driver.events.index(transcription) < driver.events.index(user_done[0])
    # Times: start includes the prefix padding; the end is the true end of the speech.
    assert abs(stopped["audio_end_ms"] - clip.speech_end_ms) <= AUDIO_END_TOLERANCE_MS
    expected_start = clip.speech_start_ms - 300
    assert expected_start - AUDIO_END_TOLERANCE_MS <= started["audio_start_ms"] <= clip.speech_start_ms
    # The response: the GA sequence, completed, with numeric timings.
    done = driver.of_type("response.done")[0]
    events = response_events(driver, done["response"]["id"])
    assert skeleton(events) == GA_RESPONSE_AUDIO
    assert done["response"]["status"] == "completed"
    assert types.index("input_audio_buffer.committed") < types.index("response.created")
    assert all(isinstance(v, (int, float)) for v in done["response"]["timings"].values())
    assert driver.errors() == []


async def test_spoken_turn_audio_reaches_asr_at_16k(driver, backends, paused_speech_24k):
    clip = paused_speech_24k
    await spoken_turn(driver, clip)
    calls = [c for c in backends.asr_calls if c.completed]
    assert len(calls) >= 2  # the pause closed a first segment: transcribed while the user spoke on
    for call in calls:
        assert call.args["pcm"].dtype == np.float32
    stopped = driver.of_type("input_audio_buffer.speech_stopped")[0]
    started = driver.of_type("input_audio_buffer.speech_started")[0]
    heard_ms = sum(len(c.args["pcm"]) for c in calls[:2]) / 16.0
    # The segments cover the speech (from the padded start to at least its end), at 16 kHz.
    assert heard_ms >= stopped["audio_end_ms"] - started["audio_start_ms"]
    assert heard_ms <= clip.duration_ms
    # The first segment ends in the inner pause.
    first_end_ms = started["audio_start_ms"] + len(calls[0].args["pcm"]) / 16.0
    (_, a_end), (b_start, _) = clip.phrases
    assert clip.ms(a_end) <= first_end_ms <= clip.ms(b_start) + 50
    # The first segment is loud where phrase A is.
    assert np.abs(calls[0].args["pcm"]).max() > 0.05


async def test_the_unseen_speculation_leaves_no_trace(driver, backends, paused_speech_24k):
    # At the inner pause a reply is started speculatively; the speech resumes, so it is dropped.
    # Neither it nor its text may reach the client or the conversation history.
    backends.replies = {0: "SPECULATIVE ONE.", 1: "SPECULATIVE TWO.", 2: "SPECULATIVE THREE."}
    await spoken_turn(driver, paused_speech_24k)
    assert len(driver.of_type("response.created")) == 1
    shown = driver.of_type("response.done")[0]["response"]["output"][0]["content"][0]["transcript"]
    committed = driver.of_type("input_audio_buffer.committed")[0]
    assert committed.get("previous_item_id") is None  # nothing came before this item
    await driver.text_turn("thanks")
    last = backends.llm_calls[-1].args["messages"]
    assistant = [m["content"] for m in last if m["role"] == "assistant"]
    assert assistant == [shown]


async def test_session_is_idle_after_a_spoken_turn(driver, backends, paused_speech_24k):
    # Fast models finish the (speculative) reply before the end of turn is even detected; once
    # its response.done is out, nothing may remain "active".
    await spoken_turn(driver, paused_speech_24k)
    await driver.send({"type": "response.cancel", "event_id": "ev_c"})
    await driver.settle()
    assert [e["code"] for e in driver.errors()] == ["response_cancel_not_active"]
    done = await driver.text_turn("and now by text")
    assert done["response"]["status"] == "completed"
    assert [e["code"] for e in driver.errors()] == ["response_cancel_not_active"]


async def test_history_order_after_a_spoken_turn(driver, backends, paused_speech_24k):
    backends.transcripts = ["part one", "part two"]
    backends.replies = {}
    backends.reply = "The answer."
    await spoken_turn(driver, paused_speech_24k)
    await driver.text_turn("follow up")
    messages = backends.llm_calls[-1].args["messages"]
    assert [(m["role"], m["content"]) for m in messages[1:]] == [
        ("user", "part one part two"), ("assistant", "The answer."), ("system", "New question."),
        ("user", "follow up")]


async def test_two_spoken_turns_each_get_one_response(driver, backends, two_turns_24k):
    clip = two_turns_24k
    await driver.append(clip.pcm)
    await driver.wait_for("response.done", count=2)
    await driver.settle()
    assert driver.types().count("input_audio_buffer.speech_started") == 2
    assert driver.types().count("input_audio_buffer.committed") == 2
    assert statuses(driver) == ["completed", "completed"]
    ends = [e["audio_end_ms"] for e in driver.of_type("input_audio_buffer.speech_stopped")]
    for end, (_, true_end) in zip(ends, clip.phrases):
        assert abs(end - clip.ms(true_end)) <= AUDIO_END_TOLERANCE_MS


async def test_input_rate_16k_is_resampled(make_driver, backends, paused_speech_16k):
    d = await make_driver()
    await d.send({"type": "session.update", "session": {
        "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}}})
    updated = await d.wait_for("session.updated")
    assert updated["session"]["audio"]["input"]["format"]["rate"] == 16000
    clip = paused_speech_16k
    await spoken_turn(d, clip)
    stopped = d.of_type("input_audio_buffer.speech_stopped")[0]
    assert abs(stopped["audio_end_ms"] - clip.speech_end_ms) <= AUDIO_END_TOLERANCE_MS
    calls = [c for c in backends.asr_calls if c.completed]
    heard_ms = sum(len(c.args["pcm"]) for c in calls) / 16.0
    assert heard_ms <= clip.duration_ms + 50
    assert statuses(d) == ["completed"]


@pytest.mark.parametrize("rate", [8000, 44100, 48000])
async def test_other_input_rates(make_driver, backends, short_speech_24k, rate):
    from quillman.audio import resample

    d = await make_driver()
    await d.send({"type": "session.update", "session": {
        "audio": {"input": {"format": {"type": "audio/pcm", "rate": rate}}}}})
    pcm = resample(short_speech_24k.pcm, 24000, rate)
    await d.append(pcm, rate=rate)
    stopped = await d.wait_for("input_audio_buffer.speech_stopped")
    assert abs(stopped["audio_end_ms"] - short_speech_24k.speech_end_ms) <= AUDIO_END_TOLERANCE_MS
    assert (await d.wait_for("response.done"))["response"]["status"] == "completed"
    assert d.types().count("input_audio_buffer.speech_started") == 1


async def test_manual_commit_without_turn_detection(make_driver, backends, paused_speech_24k):
    d = await make_driver()
    await d.send({"type": "session.update", "session": {"audio": {"input": {"turn_detection": None}}}})
    updated = await d.wait_for("session.updated")
    assert updated["session"]["audio"]["input"]["turn_detection"] is None
    clip = paused_speech_24k
    await d.append(clip.pcm)
    await d.settle()
    assert "input_audio_buffer.speech_started" not in d.types()
    assert backends.asr_calls == [] and backends.llm_calls == []
    await d.send({"type": "input_audio_buffer.commit"})
    committed = await d.wait_for("input_audio_buffer.committed")
    done = await d.wait_for("response.done")
    await d.wait_for("conversation.item.input_audio_transcription.completed")
    assert done["response"]["status"] == "completed"
    assert "input_audio_buffer.speech_stopped" not in d.types()
    # The whole buffer went to ASR.
    heard_ms = sum(len(c.args["pcm"]) for c in backends.asr_calls) / 16.0
    assert abs(heard_ms - clip.duration_ms) <= 100
    transcription = d.of_type("conversation.item.input_audio_transcription.completed")[0]
    assert transcription["item_id"] == committed["item_id"]
    # Nothing left: committing again is an error, and the session still works.
    await d.send({"type": "input_audio_buffer.commit", "event_id": "ev_again"})
    await d.settle()
    assert d.errors()[-1]["code"] == "input_audio_buffer_commit_empty"
    assert d.errors()[-1]["event_id"] == "ev_again"
    assert (await d.text_turn("ok"))["response"]["status"] == "completed"


async def test_clear_drops_uncommitted_audio(make_driver, backends, paused_speech_24k):
    d = await make_driver()
    await d.send({"type": "session.update", "session": {"audio": {"input": {"turn_detection": None}}}})
    await d.append(paused_speech_24k.pcm[:24000])
    await d.send({"type": "input_audio_buffer.clear"})
    await d.wait_for("input_audio_buffer.cleared")
    await d.send({"type": "input_audio_buffer.commit"})
    await d.settle()
    assert [e["code"] for e in d.errors()] == ["input_audio_buffer_commit_empty"]


async def test_turn_detection_back_on(make_driver, backends, short_speech_24k):
    d = await make_driver()
    await d.send({"type": "session.update", "session": {"audio": {"input": {"turn_detection": None}}}})
    await d.send({"type": "session.update", "session": {"audio": {"input": {
        "turn_detection": {"type": "server_vad", "silence_duration_ms": 600}}}}})
    updated = await d.wait_for("session.updated", count=2)
    assert updated["session"]["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 600
    await spoken_turn(d, short_speech_24k)
    assert statuses(d) == ["completed"]


async def transcribed_turn(make_driver, pcm: np.ndarray, **turn_detection):
    """A spoken turn under server_vad with ``turn_detection``, until its transcript (and settled)."""
    d = await make_driver()
    await d.send({"type": "session.update", "session": {"audio": {"input": {
        "turn_detection": {"type": "server_vad", **turn_detection}}}}})
    await d.append(pcm)
    await d.wait_for("conversation.item.input_audio_transcription.completed")
    await d.settle()
    return d


async def test_create_response_false(make_driver, backends, short_speech_24k):
    d = await transcribed_turn(make_driver, short_speech_24k.pcm, create_response=False)
    assert "response.created" not in d.types()
    assert backends.llm_calls == []
    # The client asks for the reply itself; it sees the spoken item.
    await d.send({"type": "response.create"})
    done = await d.wait_for("response.done")
    assert done["response"]["status"] == "completed"
    transcript = d.of_type("conversation.item.input_audio_transcription.completed")[0]["transcript"]
    assert backends.llm_calls[0].args["messages"][-1] == {"role": "user", "content": transcript}


@pytest.mark.parametrize("create_response", [True, False])
async def test_only_speech_is_transcribed(make_driver, backends, short_speech_24k, create_response):
    # The silence after the last pause (no speech resumed) holds no words: sending it to Whisper
    # costs a full ASR pass on the CPU and invites hallucinated text ("Thank you.").
    d = await transcribed_turn(make_driver, short_speech_24k.pcm, create_response=create_response)
    assert len(backends.asr_calls) == 1
    assert all(np.abs(c.args["pcm"]).max() > 0.05 for c in backends.asr_calls)
    transcript = d.of_type("conversation.item.input_audio_transcription.completed")[0]["transcript"]
    assert transcript == "hello there"


# --- barge-in and cancellation ------------------------------------------------------------------


async def start_slow_text_response(d, backends, hang_after: int = 6):
    """A text turn whose LLM stops after a first clause and whose TTS stalls after one chunk."""
    backends.replies = {0: "Let me think about that, it is a good question to ask you."}
    backends.llm_hang_calls = {0: hang_after}
    backends.tts_hang_after_first_chunk = True
    await d.send({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": "question"}]}})
    await d.send({"type": "response.create"})
    await d.wait_for("response.output_audio.delta")
    return d.of_type("response.created")[0]["response"]["id"]


async def test_barge_in_cancels_the_response(driver, backends, short_speech_24k):
    response_id = await start_slow_text_response(driver, backends)
    # Fresh calls from now on are fast; the stalled ones stay stalled until cancelled.
    backends.tts_hang_after_first_chunk = False
    await driver.append(short_speech_24k.pcm)
    await driver.wait_for("response.done", count=2)
    await driver.settle()
    first, second = driver.of_type("response.done")
    assert first["response"]["id"] == response_id
    assert first["response"]["status"] == "cancelled"
    assert first["response"]["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
    assert first["response"]["output"][0]["status"] == "incomplete"
    # speech_started came first, then the interrupted response closed its part and item.
    types = driver.types()
    assert types.index("input_audio_buffer.speech_started") < types.index("response.done")
    events = response_events(driver, response_id)
    assert skeleton(events) == GA_RESPONSE_AUDIO
    # The stalled LLM and TTS calls saw the cancellation and ran their finally blocks.
    llm, tts = backends.llm_calls[0], backends.tts_calls[0]
    assert llm.cancelled and llm.finalized and not llm.completed
    assert tts.cancelled and tts.finalized and not tts.completed
    # The new spoken turn got its own, completed response.
    assert second["response"]["status"] == "completed"
    assert len(driver.of_type("input_audio_buffer.committed")) == 1


async def talk_over_a_reply_without_interrupting(make_driver, backends, pcm) -> tuple[str, list[dict]]:
    """interrupt_response off: ``pcm`` is spoken and committed while a slow reply plays, and the
    reply plays on; then both responses finish. The playing reply's id and the response.done."""
    d = await make_driver()
    await d.send({"type": "session.update", "session": {"audio": {"input": {
        "turn_detection": {"type": "server_vad", "interrupt_response": False}}}}})
    response_id = await start_slow_text_response(d, backends)
    backends.tts_hang_after_first_chunk = False
    await d.append(pcm)
    await d.wait_for("input_audio_buffer.committed")
    await d.settle()
    assert "response.done" not in d.types(), statuses(d)  # the first reply plays on
    backends.llm_release.set()
    backends.tts_release.set()
    await d.wait_for("response.done", count=2)
    return response_id, d.of_type("response.done")


async def test_no_barge_in_when_interrupt_response_is_off(make_driver, backends, short_speech_24k):
    response_id, (first, second) = await talk_over_a_reply_without_interrupting(
        make_driver, backends, short_speech_24k.pcm)
    assert first["response"]["id"] == response_id
    assert (first["response"]["status"], second["response"]["status"]) == ("completed", "completed")


async def test_dropped_speculation_does_not_cancel_the_playing_response(make_driver, backends,
                                                                        paused_speech_24k):
    # interrupt_response off: a reply is still playing while the user talks with a pause; the
    # speculation started at that pause waits for the playing reply, and is dropped when the
    # speech resumes. Dropping it must not cancel the reply it was waiting for.
    response_id, done = await talk_over_a_reply_without_interrupting(make_driver, backends, paused_speech_24k.pcm)
    first = done[0]
    assert first["response"]["id"] == response_id
    assert first["response"]["status"] == "completed"


async def test_response_cancel(driver, backends):
    response_id = await start_slow_text_response(driver, backends)
    await driver.send({"type": "response.cancel", "event_id": "ev_cancel"})
    done = await driver.wait_for("response.done")
    assert done["response"]["id"] == response_id
    assert done["response"]["status"] == "cancelled"
    assert done["response"]["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
    assert backends.llm_calls[0].cancelled and backends.llm_calls[0].finalized
    assert backends.tts_calls[0].cancelled and backends.tts_calls[0].finalized
    assert driver.errors() == []
    backends.tts_hang_after_first_chunk = False
    assert (await driver.text_turn("again"))["response"]["status"] == "completed"


async def test_response_cancel_by_id(driver, backends):
    response_id = await start_slow_text_response(driver, backends)
    await driver.send({"type": "response.cancel", "response_id": "resp_other", "event_id": "ev_x"})
    await driver.settle()
    assert [(e["code"], e.get("event_id")) for e in driver.errors()] == [("response_cancel_not_active", "ev_x")]
    await driver.send({"type": "response.cancel", "response_id": response_id})
    done = await driver.wait_for("response.done")
    assert done["response"]["status"] == "cancelled"


async def test_response_cancel_right_after_create(driver, backends):
    # Both frames handled back to back, before the response task ever ran.
    await driver.send({"type": "response.create"})
    await driver.send({"type": "response.cancel"})
    done = await driver.wait_for("response.done", timeout=3)
    assert done["response"]["status"] == "cancelled"
    assert (await driver.text_turn("next"))["response"]["status"] == "completed"
    assert driver.errors() == []


@pytest.mark.parametrize("steps", [0, 1, 2, 3])
async def test_response_cancel_at_any_moment_of_a_fast_stream(driver, backends, steps):
    # The fake LLM's tokens are always ready: the cancel lands while a token is being handed
    # over, whatever the moment. The response must still end, with exactly one response.done.
    await driver.send({"type": "response.create"})
    for _ in range(steps):
        await asyncio.sleep(0)
    await driver.send({"type": "response.cancel"})
    done = await driver.wait_for("response.done", timeout=3)
    assert done["response"]["status"] == "cancelled"
    assert done["response"]["status_details"]["reason"] == "client_cancelled"
    assert (await driver.text_turn("next"))["response"]["status"] == "completed"
    assert len(driver.of_type("response.done")) == 2
    assert driver.errors() == []


async def test_failing_llm_fails_the_turn_and_the_next_turn_works(driver, backends):
    backends.llm_fail_calls = {0: 2}
    done = await driver.text_turn("hi")
    assert done["response"]["status"] == "failed"
    assert done["response"]["status_details"]["error"]["code"] == "model_error"
    assert [e["code"] for e in driver.errors()] == ["model_error"]
    assert (await driver.text_turn("hi again"))["response"]["status"] == "completed"
    assert len(driver.of_type("response.done")) == 2


async def test_failing_asr_fails_the_spoken_turn(driver, backends, short_speech_24k):
    backends.asr_fail = True
    await driver.append(short_speech_24k.pcm)
    done = await driver.wait_for("response.done")
    failed = await driver.wait_for("conversation.item.input_audio_transcription.failed")
    await driver.settle()
    assert statuses(driver) == ["failed"]
    # Reported once, on the item (GA shape), not as error events.
    assert len(driver.of_type("conversation.item.input_audio_transcription.failed")) == 1
    assert failed["error"]["code"] == "model_error"
    assert failed["item_id"] == driver.of_type("input_audio_buffer.committed")[0]["item_id"]
    assert not driver.of_type("conversation.item.input_audio_transcription.completed")
    assert driver.errors() == []
    backends.asr_fail = False
    assert (await driver.text_turn("typed instead"))["response"]["status"] == "completed"
    assert done["response"]["status_details"]["error"]["code"] == "model_error"


@pytest.mark.parametrize("stage", ["llm", "tts"])
async def test_hung_model_fails_instead_of_hanging(make_driver, backends, stage, session_config):
    d = await make_driver(session_config(model_timeout_s=0.3))
    if stage == "llm":
        backends.llm_hang_calls = {0: 0}
    else:
        backends.tts_hang = True
    done = await d.text_turn("hi")
    assert done["response"]["status"] == "failed"
    assert done["response"]["status_details"]["error"]["code"] == "model_error"
    backends.tts_hang = False
    assert (await d.text_turn("again"))["response"]["status"] == "completed"


async def test_hung_asr_fails_the_spoken_turn(make_driver, backends, short_speech_24k, session_config):
    d = await make_driver(session_config(model_timeout_s=0.3))
    backends.asr_hang = True
    await d.append(short_speech_24k.pcm)
    done = await d.wait_for("response.done")
    assert done["response"]["status"] == "failed"


async def test_every_committed_turn_gets_exactly_one_response_done(driver, backends, two_turns_24k,
                                                                   short_speech_24k):
    # Mixed: a spoken turn, a barge-in on a slow text reply, a failure, another spoken turn.
    await driver.append(two_turns_24k.pcm)
    await driver.wait_for("response.done", count=2)
    backends.replies = {len(backends.llm_calls): "Let me think about that, it is a good one."}
    backends.llm_hang_calls = {len(backends.llm_calls): 6}
    await driver.send({"type": "response.create"})
    await driver.wait_for("response.output_audio.delta", count=len(driver.of_type("response.output_audio.delta")) + 1,
                          fail_on_request_error=True)
    await driver.append(short_speech_24k.pcm)
    await driver.wait_for("response.done", count=4)
    await driver.settle()
    committed = len(driver.of_type("input_audio_buffer.committed"))
    assert committed == 3
    created = len(driver.of_type("response.created"))
    assert created == len(driver.of_type("response.done")) == 4
    assert statuses(driver).count("cancelled") == 1


# --- errors: every code, and the session keeps working -----------------------------------------


ERROR_CASES = [
    ("invalid_json", "{not json", None),
    ("invalid_json", "[1, 2]", None),
    ("unknown_event_type", {"type": "response.teleport", "event_id": "ev1"}, "ev1"),
    ("invalid_event", {"type": "input_audio_buffer.append", "event_id": "ev2"}, "ev2"),
    ("invalid_event", {"type": "conversation.item.create", "event_id": "ev3",
                       "item": {"type": "message", "role": "robot", "content": [{"type": "input_text", "text": "x"}]}},
     "ev3"),
    ("invalid_event", {"type": "session.update", "event_id": "ev4",
                       "session": {"audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 3}}}}},
     "ev4"),
    ("unsupported_event", {"type": "output_audio_buffer.clear", "event_id": "ev5"}, "ev5"),
    ("item_delete_invalid_item_id", {"type": "conversation.item.delete", "event_id": "ev5a", "item_id": "item_1"},
     "ev5a"),
    ("item_retrieve_invalid_item_id", {"type": "conversation.item.retrieve", "event_id": "ev5c",
                                       "item_id": "item_1"}, "ev5c"),
    ("item_create_invalid_previous_item_id", {"type": "conversation.item.create", "event_id": "ev5d",
                                              "previous_item_id": "item_1", "item": {
                                                  "type": "message", "role": "user",
                                                  "content": [{"type": "input_text", "text": "x"}]}}, "ev5d"),
    ("item_truncate_invalid_item_id", {"type": "conversation.item.truncate", "event_id": "ev5b",
                                       "item_id": "item_nope", "content_index": 0, "audio_end_ms": 500}, "ev5b"),
    ("invalid_base64", {"type": "input_audio_buffer.append", "event_id": "ev6", "audio": "%%%not base64%%%"}, "ev6"),
    ("invalid_audio_length", {"type": "input_audio_buffer.append", "event_id": "ev7",
                              "audio": base64.b64encode(b"\x00\x01\x02").decode()}, "ev7"),
    ("unsupported_audio_format", {"type": "session.update", "event_id": "ev9", "session": {
        "audio": {"input": {"format": {"type": "audio/pcm", "rate": 12345}}}}}, "ev9"),
    ("unsupported_audio_format", {"type": "session.update", "event_id": "ev10", "session": {
        "audio": {"output": {"format": {"type": "audio/pcm", "rate": 7000}}}}}, "ev10"),
    ("input_audio_buffer_commit_empty", {"type": "input_audio_buffer.commit", "event_id": "ev11"}, "ev11"),
    ("response_cancel_not_active", {"type": "response.cancel", "event_id": "ev12"}, "ev12"),
]


@pytest.mark.parametrize("code, frame, event_id", ERROR_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(ERROR_CASES)])
async def test_error_codes(driver, backends, code, frame, event_id):
    await driver.send(frame)
    await driver.drain()
    errors = driver.errors()
    assert len(errors) == 1, errors
    assert errors[0]["code"] == code
    assert errors[0]["type"] == "invalid_request_error"
    assert errors[0]["message"]
    assert errors[0].get("event_id") == event_id
    # The session goes on.
    assert (await driver.text_turn("still there?"))["response"]["status"] == "completed"
    assert len(driver.errors()) == 1


async def test_rejected_session_update_changes_nothing(driver, backends):
    await driver.send({"type": "session.update", "session": {
        "instructions": "NEW", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 7}}}}})
    await driver.drain()
    assert driver.errors()[0]["code"] == "unsupported_audio_format"
    assert "session.updated" not in driver.types()
    await driver.text_turn("hi")
    assert backends.llm_calls[0].args["messages"][0]["content"] != "NEW"


async def test_frame_too_large(make_driver, backends, session_config):
    d = await make_driver(session_config(max_frame_bytes=1024))
    frame = json.dumps({"type": "input_audio_buffer.append", "event_id": "ev_big",
                        "audio": b64(np.zeros(1000, np.int16))})
    assert len(frame) > 1024
    await d.send(frame)
    await d.drain()
    assert [e["code"] for e in d.errors()] == ["frame_too_large"]
    assert backends.asr_calls == []
    await d.send({"type": "input_audio_buffer.append", "audio": b64(np.zeros(240, np.int16))})
    assert (await d.text_turn("small frames work"))["response"]["status"] == "completed"
    assert len(d.errors()) == 1


async def test_audio_faster_than_real_time_overflows(make_driver, backends, session_config):
    d = await make_driver(session_config(max_audio_ahead_s=0.5))
    await d.send({"type": "input_audio_buffer.append", "event_id": "ev_fast",
                  "audio": b64(np.zeros(24000, np.int16))})  # 1 s at once
    await d.drain()
    errors = d.errors()
    assert [e["code"] for e in errors] == ["input_audio_buffer_overflow"]
    assert errors[0]["event_id"] == "ev_fast"
    # Audio at a sane pace is still accepted.
    await d.send({"type": "input_audio_buffer.append", "audio": b64(np.zeros(480, np.int16))})
    await d.drain()
    assert len(d.errors()) == 1
    assert (await d.text_turn("hello"))["response"]["status"] == "completed"


async def test_response_create_while_active(driver, backends):
    response_id = await start_slow_text_response(driver, backends)
    await driver.send({"type": "response.create", "event_id": "ev_dup"})
    await driver.drain()
    errors = driver.errors()
    assert [(e["code"], e.get("event_id")) for e in errors] == [
        ("conversation_already_has_active_response", "ev_dup")]
    assert response_id in errors[0]["message"]
    await driver.send({"type": "response.cancel"})
    await driver.wait_for("response.done")
    backends.tts_hang_after_first_chunk = False
    assert (await driver.text_turn("now"))["response"]["status"] == "completed"


async def test_many_bad_frames_in_a_row(driver, backends):
    for frame in ["", "null", "{}", '{"type": 1}', "x" * 1000]:
        await driver.send(frame)
    await driver.drain()
    assert len(driver.errors()) == 5
    assert (await driver.text_turn("ok"))["response"]["status"] == "completed"


# --- conversation.item.truncate ----------------------------------------------------------------


async def test_truncate_keeps_the_heard_share_of_a_reply(driver, backends):
    words = [f"w{i}" for i in range(20)]
    backends.replies = {0: " ".join(words) + "."}
    done = await driver.text_turn("talk")
    item_id = done["response"]["output"][0]["id"]
    audio_ms = done["response"]["audio_s"] * 1000
    assert audio_ms > 0
    await driver.send({"type": "conversation.item.truncate", "event_id": "ev_t", "item_id": item_id,
                       "content_index": 0, "audio_end_ms": int(audio_ms / 2)})
    truncated = await driver.wait_for("conversation.item.truncated")
    assert truncated["item_id"] == item_id and truncated["audio_end_ms"] == int(audio_ms / 2)
    await driver.text_turn("go on")
    assistant = [m["content"] for m in backends.llm_calls[1].args["messages"] if m["role"] == "assistant"]
    assert len(assistant) == 1
    assert 8 <= len(assistant[0].split()) <= 12  # about half of the 20 words
    assert assistant[0].split() == words[:len(assistant[0].split())]
    assert driver.errors() == []


async def test_truncate_after_the_end_changes_nothing(driver, backends):
    backends.replies = {0: "All of this was heard."}
    done = await driver.text_turn("talk")
    item_id = done["response"]["output"][0]["id"]
    await driver.send({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0,
                       "audio_end_ms": 600000})
    await driver.wait_for("conversation.item.truncated")
    await driver.text_turn("and?")
    assert {"role": "assistant", "content": "All of this was heard."} in backends.llm_calls[1].args["messages"]


async def test_truncate_of_a_running_response_is_refused(driver, backends):
    await start_slow_text_response(driver, backends)
    item_id = driver.of_type("response.output_item.added")[0]["item"]["id"]
    await driver.send({"type": "conversation.item.truncate", "event_id": "ev_run", "item_id": item_id,
                       "content_index": 0, "audio_end_ms": 10})
    await driver.drain()
    assert [(e["code"], e.get("event_id")) for e in driver.errors()] == [("invalid_event", "ev_run")]
    assert "conversation.item.truncated" not in driver.types()


# --- closing --------------------------------------------------------------------------------------


def pending_tasks() -> list[asyncio.Task]:
    current = asyncio.current_task()
    return [t for t in asyncio.all_tasks() if t is not current and not t.done()]


async def test_close_cancels_the_running_response(make_driver, backends):
    d = await make_driver()
    await start_slow_text_response(d, backends)
    await d.session.close()
    # When close() returns, the model calls have been cancelled, not merely asked to stop.
    assert backends.llm_calls[0].finalized and backends.llm_calls[0].cancelled
    assert backends.tts_calls[0].finalized


async def test_close_cancels_a_turn_in_progress(make_driver, backends, paused_speech_24k):
    d = await make_driver()
    backends.asr_hang = True
    clip = paused_speech_24k
    # Up to the middle of phrase B: a segment is being transcribed, a speculation waits on it.
    await d.append(clip.pcm[: (clip.phrases[1][0] + clip.phrases[1][1]) // 2])
    await d.wait_for("input_audio_buffer.speech_started")
    assert backends.asr_calls
    await d.session.close()
    assert all(c.finalized and c.cancelled for c in backends.asr_calls)
    assert backends.llm_calls == []


async def test_disconnect_leaves_nothing_running(make_driver, backends, paused_speech_24k):
    d = await make_driver()
    await start_slow_text_response(d, backends)
    backends.asr_hang = True
    await d.append(paused_speech_24k.pcm[: paused_speech_24k.phrases[1][0]])
    await d.stop()
    assert d.task.done() and d.task.exception() is None
    for call in backends.llm_calls + backends.tts_calls + backends.asr_calls:
        assert call.finalized, call.args.get("text", call.args.keys())
    await asyncio.sleep(0)
    assert pending_tasks() == []


# --- no input can kill a session ---------------------------------------------------------------


async def test_turn_detection_off_commit_on_again_with_real_silero(driver, short_speech_24k):
    """The reported sequence: the socket used to close with no error (VAD cursor left behind)."""
    silence = np.zeros(24000, dtype=np.int16)
    await driver.send({"type": "session.update", "session": {"audio": {"input": {"turn_detection": None}}}})
    await driver.append(silence)
    await driver.send({"type": "input_audio_buffer.commit"})
    await driver.append(silence)
    await driver.send({"type": "session.update", "session": {"audio": {"input": {
        "turn_detection": {"type": "server_vad"}}}}})
    await driver.append(silence)
    await driver.append(short_speech_24k.pcm)
    await driver.wait_for("input_audio_buffer.speech_started")
    await driver.wait_for("response.done", count=2)
    assert not driver.task.done() and driver.errors() == []


async def test_an_unexpected_exception_is_one_server_error_and_the_session_goes_on(driver, monkeypatch):
    def broken(item):
        raise RuntimeError("bug at 0x7f00 in actor 3f2a")

    monkeypatch.setattr(driver.session.conversation, "add_client_item", broken)
    await driver.send({"type": "conversation.item.create", "event_id": "ev_bug", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}})
    await driver.drain()
    [error] = driver.errors()
    assert error["code"] == "server_error" and error["event_id"] == "ev_bug"
    assert "0x7f00" not in error["message"] and "actor" not in error["message"]
    monkeypatch.undo()
    assert (await driver.text_turn("still there?"))["response"]["status"] == "completed"


async def test_a_deeply_nested_frame_is_invalid_json(driver):
    await driver.send('{"type": "session.update", "session": ' + '{"a": ' * 5000 + "1" + "}" * 5000 + "}")
    await driver.drain()
    assert [e["code"] for e in driver.errors()] == ["invalid_json"]
    assert (await driver.text_turn("hello"))["response"]["status"] == "completed"


async def test_text_too_long_for_the_context_is_refused_at_creation(driver, backends):
    await driver.send({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": "word " * 480_000}]}})
    await driver.drain()
    assert [e["code"] for e in driver.errors()] == ["input_too_long"]
    assert not driver.of_type("conversation.item.added")
    assert (await driver.text_turn("short one"))["response"]["status"] == "completed"
    prompt = backends.llm_calls[-1].args["messages"]
    assert all("word word" not in m["content"] for m in prompt)


async def test_instructions_too_long_are_refused(driver):
    await driver.send({"type": "session.update", "session": {"instructions": "x" * 1_000_000}})
    await driver.drain()
    assert [e["code"] for e in driver.errors()] == ["input_too_long"]


@pytest.mark.parametrize("session", [
    {"tools": [{"type": "mcp", "server_label": "x", "server_url": "http://x"}]},
])
async def test_features_not_built_yet_are_refused_with_a_code(driver, session):
    # MCP tools on a server whose operator enabled none (the default config).
    await driver.send({"type": "session.update", "session": session})
    await driver.drain()
    assert [e["code"] for e in driver.errors()] == ["mcp_disabled"]
    assert not driver.of_type("session.updated")


async def test_a_client_that_stops_reading_is_closed_with_one_error(backends, session_config):
    """The outgoing queue is bounded: past it, one error and close 1011; memory stays flat."""
    from quillman.config import LlmConfig, VadConfig
    from quillman.engines.vad import SileroVad
    from quillman.pipeline.session import RealtimeSession

    sent: list[str] = []
    stuck = asyncio.Event()

    async def send(frame: str) -> None:
        sent.append(frame)
        if len(sent) > 2:
            await stuck.wait()  # the peer stopped reading: the socket's buffer is full

    inbox: asyncio.Queue = asyncio.Queue()
    backends.reply = "A long answer. " * 30
    session = RealtimeSession(backends, session_config(max_outbox_bytes=64 * 1024), VadConfig(), SileroVad,
                              send=send, llm=LlmConfig(max_tokens=200))
    run = asyncio.create_task(session.run(inbox.get))
    for i in range(5):
        await inbox.put(json.dumps({"type": "response.create"}))
        # The reply runs until the session closes its full queue (or, were it shorter, to its end).
        await until(lambda: session.connection.outbox.finished or session.responses_done > i)
        await inbox.put(json.dumps({"type": "response.cancel"}))
    close_code = await asyncio.wait_for(run, 10)
    assert close_code == 1011
    assert session.connection.outbox.queued_bytes <= 64 * 1024 + 16 * 1024 or session.connection.outbox.finished
    assert not [t for t in session.connection.tasks if not t.done()]


async def test_usage_counts_the_engines_tokens(driver, backends):
    from quillman.engines.llm.base import Usage

    without = (await driver.text_turn("count yourself"))["response"]["usage"]
    assert without["output_tokens"] == len(backends.tokens(backends.reply)) and without["input_tokens"] == 0
    backends.usage = Usage(input_tokens=123, output_tokens=17)
    usage = (await driver.text_turn("and now?"))["response"]["usage"]
    assert usage == {"total_tokens": 140, "input_tokens": 123, "output_tokens": 17,
                     "input_token_details": {"cached_tokens": 0, "text_tokens": 123}}
