"""One response on its own: event sequence, speculative gating, ordering, failures, timeouts."""

from __future__ import annotations

import asyncio
import base64

import numpy as np
import pytest

import json

from quillman import protocol
from quillman.config import SessionConfig
from quillman.pipeline.response import Response, Timings, UserInput
from quillman.pipeline.settings import ResponseSettings
from tests.unit.conftest import until

pytestmark = pytest.mark.usefixtures("hang_guard")

GA_OPEN = ["response.created", "response.output_item.added", "conversation.item.added",
           "response.content_part.added"]
GA_CLOSE_AUDIO = ["response.output_audio.done", "response.output_audio_transcript.done",
                  "response.content_part.done", "response.output_item.done", "conversation.item.done",
                  "response.done"]
DELTAS = {"response.output_audio.delta", "response.output_audio_transcript.delta", "response.output_text.delta"}


def decode_b64_pcm(data: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(data), dtype="<i2")


PIPELINE_KNOBS = ("tts_concurrency", "first_chunk_min_words", "first_chunk_max_words", "max_chunk_words",
                  "output_chunk_ms", "model_timeout_s")


def settings(**overrides) -> ResponseSettings:
    knobs = dict(tts_concurrency=2, first_chunk_min_words=4, first_chunk_max_words=12, max_chunk_words=40,
                 output_chunk_ms=20, model_timeout_s=5.0)
    knobs.update({k: overrides.pop(k) for k in PIPELINE_KNOBS if k in overrides})
    values = dict(instructions="Be brief.", output_audio=True, voice="joe", output_rate_hz=24000,
                  max_output_tokens=50, temperature=0.3, top_p=0.8, pipeline=SessionConfig(**knobs))
    values.update(overrides)
    return ResponseSettings(**values)


class Harness:
    def __init__(self, fakes, speculative: bool = False, user: UserInput | None = None,
                 after: asyncio.Task | None = None, history: list | None = None, **overrides):
        self.events: list[dict] = []
        self.finished: list[tuple[str, str]] = []
        self.history_calls: list[str | None] = []
        self.history = history or []

        response_settings = settings(**overrides)

        def prompt_fn(text):
            self.history_calls.append(text)
            return [{"role": "system", "content": response_settings.instructions}, *self.history,
                    *([{"role": "user", "content": text}] if text else [])]

        def record(event: protocol.ServerEvent) -> None:
            self.events.append(json.loads(protocol.serialize(event)))  # as the wire carries it

        self.response = Response(
            settings=response_settings, backends=fakes, emit=record,
            prompt=prompt_fn, on_finished=lambda r, status, text: self.finished.append((status, text)),
            timings=Timings(origin=0.0), user=user, speculative=speculative, after=after,
        )

    def start(self) -> "Harness":
        self.response.start()
        return self

    async def done(self, timeout: float = 5.0) -> dict:
        try:
            await asyncio.wait_for(asyncio.shield(self.response.task), timeout)
        except asyncio.CancelledError:
            pass
        return self.of_type("response.done")[-1]

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]

    def skeleton(self) -> list[str]:
        return [t for t in self.types() if t not in DELTAS]

    def of_type(self, t: str) -> list[dict]:
        return [e for e in self.events if e["type"] == t]

    def audio(self) -> np.ndarray:
        chunks = [decode_b64_pcm(e["delta"]) for e in self.of_type("response.output_audio.delta")]
        return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)


def user_input(text: str = "what time is it", item_id: str = "item_user") -> UserInput:
    async def transcript():
        await asyncio.sleep(0)
        return text
    return UserInput(item_id=item_id, transcript=transcript, speech_end=0.0)


async def test_completed_audio_response(backends):
    backends.reply = "Sure thing my friend, here it is. It is noon. Have a nice day."
    h = Harness(backends, user=user_input()).start()
    done = await h.done()
    assert h.skeleton() == GA_OPEN + GA_CLOSE_AUDIO
    # Deltas only between content_part.added and output_audio.done.
    types = h.types()
    first_delta = min(i for i, t in enumerate(types) if t in DELTAS)
    last_delta = max(i for i, t in enumerate(types) if t in DELTAS)
    assert types.index("response.content_part.added") < first_delta
    assert last_delta < types.index("response.output_audio.done")
    text = "".join(e["delta"] for e in h.of_type("response.output_audio_transcript.delta"))
    assert text == backends.reply
    assert h.of_type("response.output_audio_transcript.done")[0]["transcript"] == backends.reply
    body = done["response"]
    assert body["status"] == "completed" and body["status_details"] is None
    assert body["output"][0]["content"] == [{"type": "output_audio", "transcript": backends.reply}]
    assert body["output"][0]["status"] == "completed"
    assert body["usage"]["output_tokens"] == len(backends.tokens(backends.reply))
    assert h.finished == [("completed", backends.reply)]
    # The LLM saw the system prompt, the history and this turn's text; the params are passed.
    call = backends.llm_calls[0]
    assert call.args["messages"] == [{"role": "system", "content": "Be brief."},
                                     {"role": "user", "content": "what time is it"}]
    params = call.args["params"]
    assert (params.max_tokens, params.temperature, params.top_p) == (50, 0.3, 0.8)
    # Sentences went to TTS in order, with the voice and rate of the response.
    assert [c.args["text"] for c in backends.tts_calls] == [
        "Sure thing my friend,", "here it is.", "It is noon.", "Have a nice day."]
    assert {(c.args["voice"], c.args["rate"]) for c in backends.tts_calls} == {("joe", 24000)}


async def test_every_event_names_the_response_and_item(backends):
    h = Harness(backends).start()
    done = await h.done()
    response_id = done["response"]["id"]
    item_id = done["response"]["output"][0]["id"]
    for event in h.events:
        assert event["event_id"].startswith("event_")
        if "response_id" in event:
            assert event["response_id"] == response_id
        if "item_id" in event:
            assert event["item_id"] == item_id
        if event["type"].startswith("response.") and event["type"] not in ("response.created", "response.done"):
            assert event.get("output_index") == 0
    assert h.of_type("response.created")[0]["response"]["id"] == response_id
    assert h.of_type("response.created")[0]["response"]["status"] == "in_progress"


async def test_timings_are_numeric_and_metadata_strings(backends):
    h = Harness(backends, user=user_input(), metadata={"topic": "time"}).start()
    body = (await h.done())["response"]
    timings = body["timings"]
    for key in ("transcript_ms", "first_token_ms", "first_sentence_ms", "first_audio_ms", "total_ms",
                "llm_ttft_ms", "tts_first_chunk_ms"):
        assert isinstance(timings[key], (int, float)) and not isinstance(timings[key], bool), key
        assert timings[key] >= 0
    assert timings["first_token_ms"] <= timings["first_audio_ms"] <= timings["total_ms"]
    # metadata must stay Dict[str, str] with at most 16 keys (PROTOCOL.md §6).
    assert body["metadata"]["topic"] == "time"
    assert all(isinstance(v, str) for v in body["metadata"].values())
    assert len(body["metadata"]) <= 16


async def test_audio_is_chunked_and_in_sentence_order(backends):
    backends.reply = "One two three four, five six. Seven eight nine. Ten."
    backends.tts_delays = {0: 0.05}  # the first sentence is the slowest
    h = Harness(backends, output_chunk_ms=20).start()
    await h.done()
    chunk_samples = 24000 * 20 // 1000
    sizes = [len(decode_b64_pcm(e["delta"])) for e in h.of_type("response.output_audio.delta")]
    assert max(sizes) <= chunk_samples
    audio = h.audio()
    expected = sum(max(1, len(c.args["text"].split())) * backends.samples_per_word for c in backends.tts_calls)
    assert len(audio) == expected
    # The fake marks each sentence's audio with 1 + its TTS call index: non-decreasing = in order.
    assert np.all(np.diff(audio.astype(int)) >= 0)
    assert audio[0] == 1 and audio[-1] == len(backends.tts_calls)


async def test_text_only_response(backends):
    h = Harness(backends, output_audio=False).start()
    done = await h.done()
    assert backends.tts_calls == []
    assert "response.output_audio.delta" not in h.types()
    assert h.skeleton() == GA_OPEN + ["response.output_text.done", "response.content_part.done",
                                      "response.output_item.done", "conversation.item.done", "response.done"]
    assert "".join(e["delta"] for e in h.of_type("response.output_text.delta")) == backends.reply
    assert h.of_type("response.content_part.added")[0]["part"] == {"type": "text", "text": ""}
    assert done["response"]["output_modalities"] == ["text"]
    assert done["response"]["output"][0]["content"][0] == {"type": "output_text", "text": backends.reply}


async def test_empty_transcript_gives_an_empty_completed_response(backends):
    h = Harness(backends, user=user_input("")).start()
    done = await h.done()
    assert backends.llm_calls == []
    assert done["response"]["status"] == "completed"
    assert h.skeleton() == GA_OPEN + GA_CLOSE_AUDIO


async def test_speculative_response_is_held_until_the_gate_opens(backends):
    h = Harness(backends, speculative=True, user=user_input()).start()
    await until(lambda: h.response.task.done())
    assert h.events == []  # it ran to the end unseen
    h.response.timings.turn_decision = 0.9
    h.response.open_gate(1.0)
    assert h.skeleton() == GA_OPEN + GA_CLOSE_AUDIO
    assert h.response.visible
    assert h.finished == [("completed", backends.reply)]
    # Its response.done is built when the gate opens: it knows when the turn was detected.
    timings = h.of_type("response.done")[0]["response"]["timings"]
    assert timings["turn_detected_ms"] == 1000.0 and timings["turn_decision_ms"] == 900.0


async def test_speculative_response_streams_live_after_the_gate(backends):
    backends.llm_hang_calls = {0: 3}
    h = Harness(backends, speculative=True, user=user_input()).start()
    await until(lambda: len(backends.llm_calls) == 1 and len(backends.llm_calls[0].outputs) == 3)
    assert h.events == []
    h.response.open_gate(1.0)
    assert h.types()[:4] == GA_OPEN
    assert len(h.of_type("response.output_audio_transcript.delta")) == 3
    h.response.cancel("client_cancelled")
    done = await h.done()
    assert done["response"]["status"] == "cancelled"


async def test_cancelled_speculation_ends_silently(backends):
    backends.llm_hang_calls = {0: 2}
    h = Harness(backends, speculative=True, user=user_input()).start()
    await until(lambda: backends.llm_calls and len(backends.llm_calls[0].outputs) == 2)
    h.response.cancel("turn_detected")
    with pytest.raises(asyncio.CancelledError):
        await h.response.task
    assert h.events == []
    assert h.finished == []
    assert backends.llm_calls[0].finalized and backends.llm_calls[0].cancelled


@pytest.mark.parametrize("reason", ["turn_detected", "client_cancelled"])
async def test_cancel_reason_and_incomplete_item(backends, reason):
    backends.reply = "Let me think about that, it is a good question to ask."
    backends.llm_hang_calls = {0: 6}
    backends.tts_hang_after_first_chunk = True
    h = Harness(backends).start()
    await until(lambda: h.of_type("response.output_audio.delta"))
    h.response.cancel(reason)
    done = await h.done()
    body = done["response"]
    assert body["status"] == "cancelled"
    assert body["status_details"] == {"type": "cancelled", "reason": reason}
    assert body["output"][0]["status"] == "incomplete"
    assert h.skeleton() == GA_OPEN + GA_CLOSE_AUDIO
    assert h.of_type("response.output_item.done")[0]["item"]["status"] == "incomplete"
    # Both models saw the cancellation and cleaned up.
    assert backends.llm_calls[0].cancelled and backends.llm_calls[0].finalized
    assert backends.tts_calls[0].cancelled and backends.tts_calls[0].finalized
    assert h.finished == [("cancelled", "Let me think about that, it")]


async def test_llm_failure_fails_the_response(backends):
    backends.llm_fail_calls = {0: 2}
    h = Harness(backends).start()
    done = await h.done()
    body = done["response"]
    assert body["status"] == "failed"
    assert body["status_details"]["type"] == "failed"
    assert body["status_details"]["error"]["code"] == "model_error"
    # The client hears that the model failed, not the exception (it may carry Ray internals:
    # actor ids, pids, addresses); the log has it.
    message = body["status_details"]["error"]["message"]
    assert message == "a model failed while answering; the turn ended"
    assert "fake LLM failure" not in message
    errors = h.of_type("error")
    assert len(errors) == 1 and errors[0]["error"]["code"] == "model_error"
    assert h.types().index("error") < h.types().index("response.done")
    assert h.finished and h.finished[0][0] == "failed"


async def test_tts_failure_fails_the_response(backends):
    async def broken(text, voice, rate):
        raise OSError("voice file missing")
        yield  # pragma: no cover

    backends.synthesize = broken
    h = Harness(backends).start()
    body = (await h.done())["response"]
    assert body["status"] == "failed"
    assert "voice file missing" not in body["status_details"]["error"]["message"]
    assert backends.llm_calls[0].finalized


@pytest.mark.parametrize("stage", ["asr", "llm_first_token", "llm_midway", "tts"])
async def test_a_hung_model_fails_the_response_after_the_timeout(backends, stage):
    user = None
    if stage == "asr":
        user = UserInput(item_id="item_u", transcript=asyncio.Event().wait)
    elif stage == "llm_first_token":
        backends.llm_hang_calls = {0: 0}
    elif stage == "llm_midway":
        backends.llm_hang_calls = {0: 4}
    else:
        backends.tts_hang = True
    h = Harness(backends, user=user, model_timeout_s=0.2).start()
    body = (await h.done(timeout=5))["response"]
    assert body["status"] == "failed"
    assert body["status_details"]["error"]["code"] == "model_error"
    assert "0.2" in body["status_details"]["error"]["message"]
    for call in backends.llm_calls + backends.tts_calls:
        assert call.finalized


def previous_response() -> tuple[asyncio.Task, asyncio.Event]:
    """What a response waits for (``after``): a task that runs until the returned event is set."""
    release = asyncio.Event()
    return asyncio.create_task(release.wait()), release


async def test_waits_for_the_previous_response(backends):
    before, release = previous_response()
    h = Harness(backends, after=before).start()
    for _ in range(20):  # loop steps, not wall time: everything it could do without waiting
        await asyncio.sleep(0)
    assert h.events == [] and backends.llm_calls == []
    release.set()
    assert (await h.done())["response"]["status"] == "completed"


async def test_cancelling_a_response_does_not_cancel_the_one_it_waits_for(backends):
    before, release = previous_response()
    h = Harness(backends, after=before).start()
    await asyncio.sleep(0)  # its task runs to the wait for the previous one
    h.response.cancel("client_cancelled")
    await h.done()
    await asyncio.sleep(0)
    assert not before.cancelled(), "cancelling the new response cancelled the previous one"
    release.set()
    await before


async def test_cancel_before_the_task_runs_still_reports_done(backends):
    # response.create and response.cancel can be handled back to back, before the response's
    # task has had a single step: the client must still get its response.done.
    h = Harness(backends).start()
    h.response.cancel("client_cancelled")
    await asyncio.wait({h.response.task})
    assert [e["response"]["status"] for e in h.of_type("response.done")] == ["cancelled"]
    assert h.finished and h.finished[0][0] == "cancelled"


@pytest.mark.parametrize("steps", range(1, 6))
async def test_cancel_at_any_step_ends_the_response(backends, steps):
    # Tokens and audio are always ready in the fakes, so some step lands the cancellation
    # while a model call is completing (asyncio.wait_for on 3.11 may swallow it there).
    h = Harness(backends).start()
    for _ in range(steps):
        await asyncio.sleep(0)
    h.response.cancel("client_cancelled")
    try:
        await asyncio.wait_for(asyncio.shield(h.response.task), 2)
    except asyncio.CancelledError:
        pass
    except asyncio.TimeoutError:
        pytest.fail(f"the cancelled response never ended: {h.skeleton()[-3:]}")
    done = h.of_type("response.done")
    assert len(done) == 1
    assert done[0]["response"]["status"] in ("cancelled", "completed")
    if done[0]["response"]["status"] == "cancelled":
        assert backends.llm_calls[0].finalized


async def test_sentences_carry_playback_deadlines_and_the_llm_the_session_and_pacing(backends):
    import time

    from quillman.scheduling import SPOKEN_REPLY_PACING

    backends.reply = "One two three four, five six seven eight. Nine ten eleven twelve. Thirteen."
    h = Harness(backends, user=user_input())
    h.response.session_id = "sess_x"
    before = time.time()
    h.start()
    await h.done()
    request = backends.llm_calls[0].args["request"]
    assert request.session_id == "sess_x" and request.pacing == SPOKEN_REPLY_PACING
    assert before <= request.deadline <= time.time()
    calls = backends.tts_calls
    # The first sentence is due when asked for; each later one no earlier than the one before,
    # and after the first one (its audio has to play first).
    assert calls[0].args["deadline"] <= calls[0].args["called_at"] + 0.01
    deadlines = [c.args["deadline"] for c in calls]
    assert deadlines == sorted(deadlines) and deadlines[-1] > deadlines[0]


async def test_a_text_reply_is_paced_for_reading(backends):
    from quillman.scheduling import READING_PACE

    h = Harness(backends, output_audio=False).start()
    await h.done()
    assert backends.llm_calls[0].args["request"].pacing == READING_PACE
