"""Append-only transcription deltas from repeated partial transcriptions (StableText) and their
scheduling over a turn's audio (PartialTranscripts), with a fake ASR."""

import asyncio

import numpy as np

from quillman.engines.asr.base import Transcript
from quillman.pipeline.transcription import PartialTranscripts, StableText
from quillman.pipeline.timeline import AudioTimeline
from quillman.pipeline.turns import UserTurn


def feed(text: StableText, *hypotheses: str) -> list[str]:
    return [text.update(h) for h in hypotheses]


def test_a_word_is_sent_once_two_hypotheses_agree_and_never_the_newest_last_word():
    text = StableText()
    assert feed(text, "what is", "what is the cap", "what is the capital of",
                "what is the capital of France") == ["", "what is", " the", " capital of"]
    assert text.finish("What is the capital of France?") == " France?"


def test_deltas_are_append_only_when_a_hypothesis_changes_its_mind():
    text = StableText()
    deltas = feed(text, "I scream", "I scream for", "ice cream for you", "ice cream for you today")
    # "I scream" was sent before the model changed it: nothing contradicting it is sent after.
    assert "".join(deltas) == "I scream"
    assert text.finish("ice cream for you today") == ""  # the final text goes in completed


def test_case_and_punctuation_do_not_break_agreement():
    text = StableText()
    assert feed(text, "Hello, there friend", "hello there friend how") == ["", "hello there friend"]


def test_finish_without_partials_sends_the_whole_text():
    assert StableText().finish("hello world") == "hello world"
    assert StableText().finish("") == ""


class FakeAsr:
    def __init__(self, hypotheses):
        self.hypotheses = list(hypotheses)
        self.calls = []

    async def __call__(self, pcm):
        self.calls.append(len(pcm))
        await asyncio.sleep(0)
        return Transcript(text=self.hypotheses.pop(0), language="en", audio_s=len(pcm) / 16000, inference_ms=1)


async def test_partials_run_every_interval_of_new_audio_one_at_a_time():
    asr = FakeAsr(["what", "what is the", "what is the capital"])
    emitted = []
    tasks = []

    def spawn(coro, name):
        task = asyncio.ensure_future(coro)
        tasks.append(task)
        return task

    partials = PartialTranscripts(asr, emitted.append, spawn, interval_s=0.5)
    timeline = AudioTimeline()
    turn = UserTurn("item_1", 0, 0)
    for _ in range(15):  # 1.5 s in 100 ms appends
        timeline.append(np.zeros(1600, np.float32), 0.0)
        partials.on_audio(turn, timeline)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert asr.calls == [8000, 16000, 24000]  # the whole turn so far, each 0.5 s
    assert [e.delta for e in emitted] == ["what", " is the"]
    partials.stop("item_1")
    partials.finish("item_1", "what is the capital of France")
    assert [e.delta for e in emitted] == ["what", " is the", " capital of France"]
    assert all(e.item_id == "item_1" for e in emitted)


async def test_no_partials_without_a_turn_and_none_after_drop():
    asr = FakeAsr([])
    emitted = []
    partials = PartialTranscripts(asr, emitted.append, lambda c, n: asyncio.ensure_future(c), interval_s=0.2)
    timeline = AudioTimeline()
    timeline.append(np.zeros(16000, np.float32), 0.0)
    partials.on_audio(None, timeline)
    partials.drop("item_x")
    partials.finish("item_x", "late")  # a dropped turn: nothing to finish
    assert asr.calls == [] and emitted == []
