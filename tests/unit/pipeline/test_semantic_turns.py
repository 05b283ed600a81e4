"""semantic_vad: the session's turns under a fake end-of-turn model (the text rule and the
fusion alone: test_turn_text_rule.py).

Speech is a tone through a loudness VAD (test_turns.py's), fed faster than real time; the
decisions come from a fake end-of-turn model and the fake ASR's transcripts, so each test
says exactly which signal should end (or hold) the turn. Waits are in audio time: a test
feeds the silence that makes them pass.
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from test_turns import RATE, LoudnessVad, silence, tone

from quillman.config import VadConfig
from quillman.pipeline import semantic, turn_text

pytestmark = pytest.mark.usefixtures("hang_guard")


def test_the_detector_waits_up_to_the_eagerness_cap():
    for eagerness, cap in (("low", 8000), ("medium", 4000), ("high", 2000), ("auto", 4000)):
        options = semantic.detector_options(VadConfig(type="semantic_vad", eagerness=eagerness))
        assert options.silence_duration_ms == cap and options.pause_ms <= semantic.COMPLETE_SILENCE_MS
    assert semantic.detector_options(VadConfig()) == VadConfig()


class FakeEndOfTurn:
    """Scores every pause with ``probability``; ``fail`` raises instead. ``called`` is set at
    the first call (a thread event: the model runs in a worker thread)."""

    def __init__(self, probability: float = 0.9, fail: bool = False):
        self.probability_value, self.fail = probability, fail
        self.calls: list[int] = []  # samples scored per call
        self.called = threading.Event()
        self._lock = threading.Lock()

    def probability(self, pcm: np.ndarray) -> float:
        with self._lock:
            self.calls.append(len(pcm))
        self.called.set()
        if self.fail:
            raise RuntimeError("fake end-of-turn failure")
        return self.probability_value


@pytest.fixture
async def start_semantic(make_driver, session_config):
    """A session on the shared harness with a tone VAD and ``model``, switched to semantic_vad."""
    async def start(model, eagerness="auto"):
        d = await make_driver(session_config(), make_vad=LoudnessVad, end_of_turn=model)
        await d.send({"type": "session.update", "session": {"audio": {"input": {
            "format": {"type": "audio/pcm", "rate": RATE},
            "turn_detection": {"type": "semantic_vad", "eagerness": eagerness}}}}})
        await d.wait_for("session.updated")
        return d

    return start


async def answer_after_commit(d, backends) -> dict:
    """The response.done of the committed turn. Replies are held until the commit: a speculation
    that finishes unseen has built its response.done before the turn decision is known."""
    await d.wait_for("input_audio_buffer.committed")
    backends.llm_release.set()
    return await d.wait_for("response.done")


async def test_a_complete_utterance_ends_at_its_first_pause(start_semantic, backends):
    backends.transcripts = ["Where do penguins live?"]
    model = FakeEndOfTurn(probability=0.9)
    d = await start_semantic(model)
    backends.llm_hang_calls = {0: 1}
    await d.append(np.concatenate([silence(0.3), tone(1.0), silence(1.0)]), rate=RATE)
    done = await answer_after_commit(d, backends)
    assert len(d.of_type("input_audio_buffer.committed")) == 1
    assert done["response"]["metadata"]["turn_decision"] == "text"
    assert len(model.calls) == 1, "Smart Turn runs at the pause, beside the ASR"
    assert "turn_decision_ms" in done["response"]["timings"]
    assert d.of_type("session.updated")[0]["session"]["audio"]["input"]["turn_detection"]["type"] == "semantic_vad"


async def test_smart_turn_runs_beside_the_asr_not_after_it(start_semantic, backends):
    backends.asr_hang = True
    backends.transcripts = ["Where do penguins live?"]
    model = FakeEndOfTurn(probability=0.9)
    d = await start_semantic(model)
    backends.llm_hang_calls = {0: 1}
    await d.append(np.concatenate([silence(0.3), tone(1.0), silence(0.3)]), rate=RATE)
    assert await asyncio.to_thread(model.called.wait, 5.0), "Smart Turn was not started at the pause"
    assert backends.asr_calls and not any(call.completed for call in backends.asr_calls)
    assert not d.of_type("input_audio_buffer.committed"), "the decision waits for the transcript"
    turn = d.session.voice.current  # the turn in progress: its judgment and decision
    backends.asr_release.set()
    await turn.judgment
    assert turn.decision.complete and turn.decision.audio_probability == 0.9
    await d.append(silence(0.5), rate=RATE)
    done = await answer_after_commit(d, backends)
    assert done["response"]["metadata"]["turn_decision"] == "text"


async def test_without_a_text_cue_the_short_wait_ends_the_turn(start_semantic, backends):
    backends.transcripts = ["hello there"]
    model = FakeEndOfTurn(probability=1.0)  # sure it is finished: not enough without the text
    d = await start_semantic(model)
    backends.llm_hang_calls = {0: 1}
    await d.append(np.concatenate([silence(0.3), tone(1.0), silence(1.0)]), rate=RATE)
    done = await answer_after_commit(d, backends)
    assert done["response"]["metadata"]["turn_decision"] == "short_wait"
    # Smart Turn started at the pause beside the ASR (it may be cancelled unrun when the
    # short wait decides first: it only vetoes a "complete" reading); if it ran, it heard the
    # turn's audio so far.
    assert len(model.calls) <= 1 and all(samples >= RATE for samples in model.calls)


async def short_wait_turn(start_semantic, backends, transcript: str, probability: float):
    """A second of speech and a pause under eagerness high (short wait 600 ms), judged."""
    backends.transcripts = [transcript]
    d = await start_semantic(FakeEndOfTurn(probability=probability), eagerness="high")
    backends.llm_hang_calls = {0: 1}
    await d.append(np.concatenate([silence(0.3), tone(1.0), silence(0.3)]), rate=RATE)
    turn = d.session.voice.current  # the turn in progress: its judgment and decision
    await turn.judgment
    return d, turn


async def test_an_unsure_ending_ends_the_turn_after_the_short_wait(start_semantic, backends):
    d, turn = await short_wait_turn(start_semantic, backends, "What do you think about?", 0.9)
    assert turn.decision.wait_ms == semantic.SHORT_WAIT_MS["high"] and not turn.decision.complete
    assert not d.of_type("input_audio_buffer.committed")  # 300 ms of silence so far
    await d.append(silence(0.4), rate=RATE)  # 700 ms: past high's 600
    done = await answer_after_commit(d, backends)
    assert done["response"]["metadata"]["turn_decision"] == "short_wait"


async def test_speech_in_the_short_wait_keeps_the_turn_open(start_semantic, backends):
    d, turn = await short_wait_turn(start_semantic, backends, "What do you think about?", 0.9)
    backends.transcripts = ["electric cars?"]
    await d.append(np.concatenate([silence(0.1), tone(0.6), silence(1.0)]), rate=RATE)
    await d.wait_for("response.done")
    await d.drain()
    assert len(d.of_type("input_audio_buffer.committed")) == 1
    transcript = d.of_type("conversation.item.input_audio_transcription.completed")[0]["transcript"]
    assert transcript == "What do you think about? electric cars?"


async def test_a_complete_reading_the_asr_is_unsure_of_waits_the_short_wait(start_semantic, backends):
    # "What do you think about" cut at a pause: Whisper makes up an ending, with low confidence.
    backends.end_confidence = turn_text.UNSURE_ENDING / 2
    d, turn = await short_wait_turn(start_semantic, backends, "What do you think come out?", 0.9)
    assert turn.decision.signal == "text_unsure" and not turn.decision.complete
    assert turn.decision.wait_ms == semantic.SHORT_WAIT_MS["high"]
    assert not d.of_type("input_audio_buffer.committed")
    await d.append(silence(0.4), rate=RATE)
    done = await answer_after_commit(d, backends)
    assert done["response"]["metadata"]["turn_decision"] == "short_wait"


async def test_a_confident_complete_reading_ends_the_turn(start_semantic, backends):
    backends.end_confidence = 0.9
    d, turn = await short_wait_turn(start_semantic, backends, "Where do penguins live?", 0.9)
    assert turn.decision.complete and turn.decision.signal == "text"


async def test_smart_turn_vetoes_a_transcript_that_reads_complete(start_semantic, backends):
    # "What should I cook for dinner, um": Whisper drops the "um", Smart Turn hears it.
    d, turn = await short_wait_turn(start_semantic, backends, "What should I cook for dinner?",
                                    semantic.AUDIO_VETO / 2)
    assert turn.decision.signal == "audio_veto" and turn.decision.wait_ms is not None
    await d.append(silence(0.4), rate=RATE)
    done = await answer_after_commit(d, backends)
    assert done["response"]["metadata"]["turn_decision"] == "short_wait"


async def test_a_mid_sentence_pause_is_one_turn_with_both_halves(start_semantic, backends):
    backends.transcripts = ["I'd like to book a table for", "four people."]
    model = FakeEndOfTurn(probability=0.9)  # would be fooled; the dangling "for" decides first
    d = await start_semantic(model)
    await d.append(np.concatenate([silence(0.3), tone(1.0), silence(1.2)]), rate=RATE)
    turn = d.session.voice.current  # the turn in progress: its judgment and decision
    await turn.judgment
    await d.settle()
    assert not d.of_type("input_audio_buffer.committed")  # server_vad 500 ms would have ended it
    assert turn.decision == semantic.Decision(False, "text", None)  # the cap, not the short wait
    await d.append(np.concatenate([tone(0.6), silence(1.0)]), rate=RATE)
    done = await d.wait_for("response.done")
    await d.drain()
    assert len(d.of_type("input_audio_buffer.committed")) == 1 and len(d.of_type("response.done")) == 1
    transcript = d.of_type("conversation.item.input_audio_transcription.completed")[0]["transcript"]
    assert transcript == "I'd like to book a table for four people."
    assert done["response"]["status"] == "completed"


async def test_an_incomplete_utterance_ends_at_the_eagerness_cap(start_semantic, backends):
    backends.transcripts = ["so I was thinking about the"]
    model = FakeEndOfTurn(probability=0.9)
    d = await start_semantic(model, eagerness="high")
    backends.llm_hang_calls = {0: 1}
    await d.append(np.concatenate([silence(0.3), tone(1.0), silence(1.5)]), rate=RATE)
    turn = d.session.voice.current  # the turn in progress: its judgment and decision
    await turn.judgment
    assert not d.of_type("input_audio_buffer.committed")
    await d.append(silence(0.7), rate=RATE)  # 2.2 s of silence: past high's 2 s
    done = await answer_after_commit(d, backends)
    assert done["response"]["metadata"]["turn_decision"] == "max_wait"


async def test_a_failing_model_leaves_the_text_to_decide(start_semantic, backends):
    backends.transcripts = ["Where do penguins live?"]
    d = await start_semantic(FakeEndOfTurn(fail=True), eagerness="high")
    backends.llm_hang_calls = {0: 1}
    await d.append(np.concatenate([silence(0.3), tone(1.0), silence(1.0)]), rate=RATE)
    done = await answer_after_commit(d, backends)
    assert done["response"]["status"] == "completed"
    assert done["response"]["metadata"]["turn_decision"] == "text"
    assert d.errors() == []


async def test_a_failing_asr_leaves_the_turn_to_the_short_wait(start_semantic, backends):
    backends.asr_fail = True
    d = await start_semantic(FakeEndOfTurn(), eagerness="high")
    await d.append(np.concatenate([silence(0.3), tone(1.0), silence(1.0)]), rate=RATE)
    await d.wait_for("conversation.item.input_audio_transcription.failed")
    assert d.of_type("input_audio_buffer.committed")
    assert d.session.turns.turn is None


async def test_without_the_model_semantic_vad_is_refused(driver):
    await driver.send({"type": "session.update", "session": {
        "audio": {"input": {"turn_detection": {"type": "semantic_vad"}}}}})
    await driver.drain()
    assert [e["code"] for e in driver.errors()] == ["unsupported_feature"]


async def test_server_vad_says_the_silence_decided(start_semantic, backends):
    d = await start_semantic(FakeEndOfTurn())
    await d.send({"type": "session.update", "session": {"audio": {"input": {
        "turn_detection": {"type": "server_vad"}}}}})
    backends.llm_hang_calls = {0: 1}
    await d.append(np.concatenate([silence(0.3), tone(1.0), silence(0.8)]), rate=RATE)
    done = await answer_after_commit(d, backends)
    assert done["response"]["metadata"]["turn_decision"] == "silence"
    assert done["response"]["timings"]["turn_decision_ms"] >= 0
