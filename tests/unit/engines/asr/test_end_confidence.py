"""Transcript.end_confidence from the real tiny.en (the CPU profile's model, shipped on PyPI) on
espeak speech: the decoder's probability of the last words, whatever the beam size."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from quillman.engines.asr.faster_whisper import FasterWhisperRecognizer
from quillman_bench.speech import espeak, word_error_rate

QUESTION = "Where do penguins live?"


@functools.lru_cache(maxsize=None)
def recognizer(beam_size: int) -> FasterWhisperRecognizer:
    return FasterWhisperRecognizer("tiny.en", encoder_window="fit", beam_size=beam_size)


@pytest.fixture(scope="module")
def question() -> np.ndarray:
    return espeak(QUESTION, 16000).astype(np.float32) / 32768


@pytest.mark.parametrize("beam_size", [1, 5])
def test_a_clear_question_is_heard_with_its_confidence(question, beam_size):
    heard = recognizer(beam_size).transcribe(question)
    assert word_error_rate(QUESTION, heard.text) <= 0.25
    assert heard.end_confidence is not None and 0.0 < heard.end_confidence <= 1.0


def test_greedy_and_beam_score_the_same_words_alike():
    pcm = espeak("What is the capital of France?", 16000).astype(np.float32) / 32768
    greedy, beam = recognizer(1).transcribe(pcm), recognizer(5).transcribe(pcm)
    if greedy.text != beam.text:
        pytest.skip("the beam found other words: nothing to compare")
    assert greedy.end_confidence == pytest.approx(beam.end_confidence, abs=1e-3)


@pytest.mark.parametrize("fragment, rest", [("What do you think about", "electric cars?"),
                                            ("How long does it take to", "boil an egg?")])
def test_a_question_cut_at_a_pause_ends_less_surely_than_the_whole(fragment, rest):
    """Whisper finishes the fragment with words of its own ("What do you think come out?")."""
    def heard(text: str):
        return recognizer(5).transcribe(espeak(text, 16000).astype(np.float32) / 32768)

    cut, whole = heard(fragment), heard(f"{fragment} {rest}")
    assert cut.end_confidence is not None and whole.end_confidence is not None
    assert cut.end_confidence < whole.end_confidence - 0.1
