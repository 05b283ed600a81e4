"""semantic_vad: the fusion of text and audio cues, and the session's turns under a fake model.

Speech is a tone through a loudness VAD (test_turns.py's), fed faster than real time; the
decisions come from a fake end-of-turn model and the fake ASR's transcripts, so each test
says exactly which signal should end (or hold) the turn.
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from test_turns import RATE, LoudnessVad, silence, tone

from quillman.config import VadConfig
from quillman.pipeline import semantic
from quillman.pipeline.semantic import Decision, fuse, text_cue

pytestmark = pytest.mark.usefixtures("hang_guard")


@pytest.mark.parametrize("text, cue", [
    ("What is the capital of France?", True),
    ("Thank you very much.", True),
    ("What is the capital of?", False),
    ("Where do penguins?", False),
    ("Where do penguins live?", True),
    ("How are you?", True),
    ("I'd like to book a table for", False),
    ("I'd like to book a table for.", False),
    ("I went to the store and...", False),
    ("Um, I think I want to, um.", False),
    ("so I was thinking,", False),
    ("hello there", None),
    ("", None),
])
def test_text_cues(text, cue):
    assert text_cue(text) is cue


def test_fusion_lets_text_decide_and_audio_break_ties():
    assert fuse("Book a table for", 0.99) == Decision(False, "text_dangling", 0.99)
    assert fuse("Where do penguins live?", 0.1) == Decision(True, "text_punctuation", 0.1)
    # The ablation's veto: Smart Turn all but sure the speaker goes on (a dropped "um").
    assert fuse("What should I cook for dinner?", 0.005, signals="fused_veto") == Decision(
        False, "audio_veto", 0.005)
    assert fuse("What should I cook for dinner?", 0.005).complete is True
    assert fuse("hello there", 0.9) == Decision(True, "audio", 0.9)
    assert fuse("hello there", 0.1).complete is False
    # The bench's ablation: one signal alone.
    assert fuse("Book a table for.", 0.1, signals="punctuation").complete is True
    assert fuse("Where do penguins live?", 0.1, signals="audio").complete is False


def test_the_detector_waits_up_to_the_eagerness_cap():
    for eagerness, cap in (("low", 8000), ("medium", 4000), ("high", 2000), ("auto", 4000)):
        options = semantic.detector_options(VadConfig(type="semantic_vad", eagerness=eagerness))
        assert options.silence_duration_ms == cap and options.pause_ms <= semantic.COMPLETE_SILENCE_MS
    assert semantic.detector_options(VadConfig()) == VadConfig()


class FakeEndOfTurn:
    """Scores every pause with ``probability``; ``fail`` raises instead."""

    def __init__(self, probability: float = 0.5, fail: bool = False):
        self.probability_value, self.fail = probability, fail
        self.calls: list[int] = []  # samples scored per call
        self._lock = threading.Lock()

    def probability(self, pcm: np.ndarray) -> float:
        with self._lock:
            self.calls.append(len(pcm))
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


async def until(predicate, timeout_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


async def test_a_complete_utterance_ends_at_its_first_pause(start_semantic, backends):
    backends.transcripts = ["Where do penguins live?"]
    model = FakeEndOfTurn(probability=0.1)  # would disagree, but the text's "?" decides alone
    d = await start_semantic(model)
    backends.llm_hang_calls = {0: 1}
    await d.append(np.concatenate([silence(0.3), tone(1.0), silence(1.0)]), rate=RATE)
    done = await answer_after_commit(d, backends)
    assert len(d.of_type("input_audio_buffer.committed")) == 1
    assert done["response"]["metadata"]["turn_decision"] == "text_punctuation"
    assert not model.calls, "the text decided: the audio model was not needed"
    assert "turn_decision_ms" in done["response"]["timings"]
    assert d.of_type("session.updated")[0]["session"]["audio"]["input"]["turn_detection"]["type"] == "semantic_vad"


async def test_without_a_text_cue_the_audio_model_decides(start_semantic, backends):
    backends.transcripts = ["hello there"]
    model = FakeEndOfTurn(probability=0.9)
    d = await start_semantic(model)
    backends.llm_hang_calls = {0: 1}
    await d.append(np.concatenate([silence(0.3), tone(1.0), silence(1.0)]), rate=RATE)
    done = await answer_after_commit(d, backends)
    assert done["response"]["metadata"]["turn_decision"] == "audio"
    assert len(model.calls) == 1 and model.calls[0] >= RATE  # the turn's audio so far


async def test_a_mid_sentence_pause_is_one_turn_with_both_halves(start_semantic, backends):
    backends.transcripts = ["I'd like to book a table for", "four people."]
    model = FakeEndOfTurn(probability=0.9)  # would be fooled; the dangling "for" decides first
    d = await start_semantic(model)
    await d.append(np.concatenate([silence(0.3), tone(1.0), silence(0.6)]), rate=RATE)
    turn = d.session.turns.turn
    await until(lambda: turn.judgment is not None and turn.judgment.done())
    await d.settle()
    assert not d.of_type("input_audio_buffer.committed")  # server_vad 500 ms would have ended it
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
    turn = d.session.turns.turn
    await until(lambda: turn.judgment is not None and turn.judgment.done())
    assert not d.of_type("input_audio_buffer.committed")
    await d.append(silence(0.7), rate=RATE)  # 2.2 s of silence: past high's 2 s
    done = await answer_after_commit(d, backends)
    assert done["response"]["metadata"]["turn_decision"] == "max_wait"


async def test_a_failing_model_leaves_the_turn_to_the_cap(start_semantic, backends):
    backends.transcripts = ["hello there"]
    d = await start_semantic(FakeEndOfTurn(fail=True), eagerness="high")
    backends.llm_hang_calls = {0: 1}
    await d.append(np.concatenate([silence(0.3), tone(1.0), silence(2.3)]), rate=RATE)
    done = await answer_after_commit(d, backends)
    assert done["response"]["status"] == "completed"
    assert done["response"]["metadata"]["turn_decision"] == "max_wait"
    assert d.errors() == []


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
