"""Word error rate and recall of the test speech helpers (quillman_bench.speech); no espeak."""

from __future__ import annotations

import pytest

from quillman_bench.speech import QUESTIONS, word_error_rate, word_recall


def test_word_error_rate_ignores_case_and_punctuation():
    assert word_error_rate("What is the capital of France?", "what is the capital of france") == 0.0
    assert word_error_rate("How many legs does a spider have?", "How many legs has a spider?") == pytest.approx(2 / 7)
    assert word_error_rate("", "") == 0.0 and word_error_rate("", "noise") == 1.0


def test_word_recall_counts_words_of_three_letters_or_more():
    assert word_recall("Where do penguins live?", "WHERE do penguins live") == 1.0
    assert word_recall("Where do penguins live?", "penguins live in the south") == pytest.approx(2 / 3)
    assert word_recall("Do it.", "nothing") == 1.0  # no word of three letters to miss
    assert len(QUESTIONS) == 10
