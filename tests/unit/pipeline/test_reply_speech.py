"""A reply's speech on its own: sentences to TTS in order, audio in chunks, each sentence's deadline."""

from __future__ import annotations

import time

import numpy as np
import pytest

from quillman.config import SessionConfig
from quillman.pipeline.sentences import FLUSH
from quillman.pipeline.settings import ResponseSettings
from quillman.pipeline.reply_speech import ReplySpeech
from quillman.pipeline.timings import Timings

pytestmark = pytest.mark.usefixtures("hang_guard")


def speech(backends, playback_start: float | None = None, sequential: bool = False,
           tts_concurrency: int = 2) -> ReplySpeech:
    knobs = SessionConfig(tts_concurrency=tts_concurrency, first_chunk_min_words=2, first_chunk_max_words=12,
                          max_chunk_words=40, output_chunk_ms=20)
    settings = ResponseSettings(instructions="", output_audio=True, voice="joe", output_rate_hz=24000,
                                max_output_tokens=50, temperature=0.3, top_p=0.8, pipeline=knobs,
                                sequential=sequential)
    return ReplySpeech(backends, settings, Timings(origin=0.0), lambda: playback_start)


async def deltas(*texts: str):
    for text in texts:
        yield text


async def test_sentences_are_spoken_in_order_in_output_chunks(backends):
    backends.tts_delays = {0: 0.05}  # the first sentence is the slowest: its audio still comes first
    reply = speech(backends)
    chunks = [pcm async for pcm in reply.chunks(deltas("One two three.", " Four five", FLUSH, " Six seven."))]
    assert [call.args["text"] for call in backends.tts_calls] == ["One two three.", "Four five", "Six seven."]
    assert all(len(chunk) <= 480 for chunk in chunks)  # 20 ms at 24 kHz
    audio = np.concatenate(chunks)
    assert len(audio) == (3 + 2 + 2) * backends.samples_per_word
    assert list(dict.fromkeys(audio.tolist())) == [1, 2, 3]  # sentence k is TTS call k
    assert reply.timings.first_sentence is not None


async def test_the_sequential_baseline_synthesizes_the_whole_reply_once(backends):
    chunks = [pcm async for pcm in speech(backends, sequential=True).chunks(deltas("One two three.", " Four five."))]
    assert [call.args["text"] for call in backends.tts_calls] == ["One two three. Four five."]
    assert sum(len(chunk) for chunk in chunks) == 5 * backends.samples_per_word


async def test_a_later_sentence_is_due_when_the_audio_before_it_has_played(backends):
    playing_from = time.time() + 100.0  # far ahead: the deadlines are the playback's, not now
    reply = speech(backends, playback_start=playing_from, tts_concurrency=1)
    [pcm async for pcm in reply.chunks(deltas("One two three.", " Four five.", " Six seven eight."))]
    first, second, third = (call.args["deadline"] for call in backends.tts_calls)
    assert first <= time.time()  # the first is due now
    word_s = backends.samples_per_word / 24000  # each sentence was synthesized before the next began
    assert second == pytest.approx(playing_from + 3 * word_s)
    assert third == pytest.approx(playing_from + 5 * word_s)
