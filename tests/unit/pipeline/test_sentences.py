"""Sentence splitting of streamed LLM text: early first clause, sentence ends, caps, cleanup."""

from __future__ import annotations

import random

import pytest

from quillman.pipeline.sentences import SentenceSplitter, clean_for_speech, split_stream


def split(text: str, deltas: list[str] | None = None, **options) -> list[str]:
    splitter = SentenceSplitter(**options)
    out: list[str] = []
    for delta in deltas if deltas is not None else [text]:
        out.extend(splitter.feed(delta))
    out.extend(splitter.flush())
    return out


def small_deltas(text: str, seed: int) -> list[str]:
    """Cut ``text`` into deltas of 1-3 characters, like a token stream."""
    rng = random.Random(seed)
    deltas, i = [], 0
    while i < len(text):
        n = rng.randint(1, 3)
        deltas.append(text[i:i + n])
        i += n
    return deltas


def test_first_chunk_cut_at_clause_after_min_words():
    text = "Hello there my friend, how are you doing today? I am fine."
    assert split(text, small_deltas(text, 0)) == [
        "Hello there my friend,", "how are you doing today?", "I am fine."]


def test_first_chunk_ignores_clause_before_min_words():
    text = "Well, I think that is, in fact, a good question to ask. Yes."
    assert split(text, small_deltas(text, 0)) == [
        "Well, I think that is,", "in fact, a good question to ask.", "Yes."]


def test_first_chunk_clause_with_dash_and_semicolon():
    assert split("The answer is simple – it is blue. Yes.", list("The answer is simple – it is blue. Yes.")) == [
        "The answer is simple –", "it is blue.", "Yes."]
    assert split("Paris is the capital; it is lovely. Yes.", list("Paris is the capital; it is lovely. Yes.")) == [
        "Paris is the capital;", "it is lovely.", "Yes."]


@pytest.mark.parametrize("seed", range(3))
def test_first_chunk_ends_before_a_clause_word_after_min_words(seed):
    text = "The sea is salty because it contains salt. Yes."
    assert split(text, small_deltas(text, seed)) == ["The sea is salty", "because it contains salt.", "Yes."]
    # Not before min words, and not before a preposition (a noun phrase stays whole).
    text = "It is so because of salt. Paris is the capital of France."
    assert split(text, small_deltas(text, seed))[0] == "It is so because of salt."
    assert split("Paris is the capital of France. Yes.")[0] == "Paris is the capital of France."


def test_a_clause_word_must_be_whole_before_the_cut():
    splitter = SentenceSplitter()
    assert list(splitter.feed("The sea is salty whe")) == []
    assert list(splitter.feed("n")) == []  # "when" or "whenever": not known until the space
    assert list(splitter.feed("ever it rains and")) == []  # "and" may still be "android"
    assert list(splitter.feed(" then")) == ["The sea is salty whenever it rains"]


def test_short_first_sentence_is_its_own_chunk():
    assert split("Hi. How are you?") == ["Hi.", "How are you?"]


def test_first_chunk_hard_cut_at_first_max_words():
    words = [f"w{i}" for i in range(1, 21)]
    text = " ".join(words) + " end"
    chunks = split(text, small_deltas(text, 1), first_min_words=4, first_max_words=12)
    assert chunks[0] == " ".join(words[:12])
    assert " ".join(chunks) == text


@pytest.mark.parametrize("deltas", ["whole", "small"])
def test_first_chunk_never_longer_than_first_max_words(deltas):
    # A long first sentence: its end comes after the word cap, so the cap applies.
    text = ("One two three four five six seven eight nine ten eleven twelve thirteen fourteen "
            "fifteen. Next one.")
    chunks = split(text, None if deltas == "whole" else small_deltas(text, 2),
                   first_min_words=4, first_max_words=12)
    assert chunks[0] == "One two three four five six seven eight nine ten eleven twelve"
    assert chunks[1:] == ["thirteen fourteen fifteen.", "Next one."]


@pytest.mark.parametrize("deltas", ["whole", "small"])
def test_first_chunk_is_the_first_clause_even_when_the_sentence_end_is_buffered(deltas):
    # The LLM may send a whole sentence in one delta (or the server batches deltas): the first
    # chunk must still be cut at the first clause, as it is when the text trickles in.
    text = "Hello there my friend, how are you doing today? I am fine."
    chunks = split(text, None if deltas == "whole" else small_deltas(text, 3))
    assert chunks == ["Hello there my friend,", "how are you doing today?", "I am fine."]


def test_later_chunks_end_at_sentences_not_clauses():
    text = "Sure thing my friend, here it is. First, take the pan, then heat it. Finally, eat."
    assert split(text, small_deltas(text, 4)) == [
        "Sure thing my friend,", "here it is.", "First, take the pan, then heat it.", "Finally, eat."]


@pytest.mark.parametrize("deltas", ["whole", "small"])
def test_later_chunks_capped_at_max_words(deltas):
    first = "Okay here is the plan. "
    run_on = " ".join(f"x{i}" + ("," if i in (10, 45) else "") for i in range(1, 61)) + "."
    text = first + run_on + " Done."
    chunks = split(text, None if deltas == "whole" else small_deltas(text, 5),
                   first_min_words=4, first_max_words=12, max_words=40)
    assert chunks[0] == "Okay here is the plan."
    assert all(len(c.split()) <= 40 for c in chunks), [len(c.split()) for c in chunks]
    assert " ".join(chunks) == text


def test_run_on_later_chunk_without_punctuation_is_cut_at_max_words():
    text = "Okay here is the plan. " + " ".join(f"y{i}" for i in range(1, 51))
    chunks = split(text, small_deltas(text, 6), max_words=40)
    assert chunks[1] == " ".join(f"y{i}" for i in range(1, 41))
    assert chunks[2] == " ".join(f"y{i}" for i in range(41, 51))


@pytest.mark.parametrize("text, expected", [
    ("Dr. Smith is here to see you now. Bye.", ["Dr. Smith is here to see you now.", "Bye."]),
    ("Try fruit, e.g. apples or pears. Bye.", ["Try fruit, e.g. apples or pears.", "Bye."]),
    ("Some fruit, i.e. apples, are sweet. Bye.", ["Some fruit, i.e. apples, are sweet.", "Bye."]),
    ("Mr. and Mrs. Jones live on Elm St. in town. Bye.", ["Mr. and Mrs. Jones live on Elm St. in town.", "Bye."]),
    ("Meet me at 5 p.m. near the park. Bye.", ["Meet me at 5 p.m. near the park.", "Bye."]),
])
def test_abbreviations_do_not_end_sentences(text, expected):
    assert split(text, first_min_words=8) == expected
    assert split(text, small_deltas(text, 7), first_min_words=8) == expected


def test_abbreviation_inside_parentheses_does_not_end_a_sentence():
    text = "Eat fruit (e.g. apples) every day. Okay."
    assert split(text, first_min_words=8) == ["Eat fruit (e.g. apples) every day.", "Okay."]


@pytest.mark.parametrize("text, expected", [
    ("It is 3.5 degrees outside today. Nice.", ["It is 3.5 degrees outside today.", "Nice."]),
    ("Pi is about 3.14159 and e is 2.718. Yes.", ["Pi is about 3.14159 and e is 2.718.", "Yes."]),
    ("Version 1.2.3 is out now. Yes.", ["Version 1.2.3 is out now.", "Yes."]),
])
def test_decimals_do_not_end_sentences(text, expected):
    assert split(text, small_deltas(text, 8), first_min_words=8) == expected


def test_sentence_end_with_closing_quote_or_paren():
    assert split('He said "go now." Then he left.') == ['He said "go now."', "Then he left."]
    assert split("It works (mostly.) Then we rest.") == ["It works (mostly.)", "Then we rest."]
    assert split("Really?! Yes... Okay.") == ["Really?!", "Yes...", "Okay."]


def test_markdown_is_stripped():
    text = "**Paris** is the _capital_ of France. # Also `fun` to visit!"
    assert split(text, small_deltas(text, 9)) == ["Paris is the capital of France.", "Also fun to visit!"]


def test_clean_for_speech():
    assert clean_for_speech("  **bold**\n\n## Title  `x`  ") == "bold Title x"
    assert clean_for_speech("***") == ""
    assert clean_for_speech("a\tb\nc") == "a b c"


def test_flush_returns_the_remainder():
    splitter = SentenceSplitter()
    assert list(splitter.feed("This has no ending")) == []
    assert list(splitter.flush()) == ["This has no ending"]
    assert list(splitter.flush()) == []


def test_flush_of_nothing_or_only_markup():
    assert split("") == []
    assert split("   ") == []
    assert split("** __ ``") == []
    assert split("Done. **") == ["Done."]


def test_sentence_end_needs_following_whitespace():
    # While streaming, "3." may become "3.5": no cut until the next character is seen.
    splitter = SentenceSplitter()
    assert list(splitter.feed("The value is 3.")) == []
    assert list(splitter.feed("5 now. ")) == ["The value is 3.5 now."]


def test_whitespace_between_chunks_is_dropped():
    assert split("First one here.\n\n  Second one here.") == ["First one here.", "Second one here."]


STREAM_TEXTS = [
    "Hello there my friend, how are you doing today? I am fine.",
    "Sure thing my friend, here it is. First, take the pan, then heat it. Finally, eat.",
    "Dr. Smith said it costs 3.5 dollars. Then he left, e.g. to go home.",
    "**Paris** is the capital of France. It is lovely in spring!",
    "Hi. How are you?",
    "One two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen. Next.",
    "Well, I think that is, in fact, a very good question to ask. Yes.",
    "No punctuation at all in this rather long reply that just keeps going and going on",
]


@pytest.mark.parametrize("text", STREAM_TEXTS)
def test_small_deltas_give_the_same_chunks_as_one_delta(text):
    whole = split(text)
    assert split(text, list(text)) == whole
    for seed in range(3):
        assert split(text, small_deltas(text, seed)) == whole


@pytest.mark.parametrize("text", STREAM_TEXTS)
def test_no_text_lost(text):
    assert " ".join(split(text, small_deltas(text, 11))) == clean_for_speech(text)


async def test_split_stream():
    text = "Hello there my friend, how are you doing today? I am fine"

    async def deltas():
        for delta in small_deltas(text, 0):
            yield delta

    chunks = [c async for c in split_stream(deltas(), SentenceSplitter())]
    assert chunks == ["Hello there my friend,", "how are you doing today?", "I am fine"]


@pytest.mark.parametrize("deltas", ["whole", "small"])
@pytest.mark.parametrize("text, first", [
    # the cap falls inside a noun phrase: the cut goes before the phrase that holds it
    ("Penguins are found in the Southern Hemisphere, mostly.", "Penguins are found"),
    ("I'm a huge fan of classical music.", "I'm a huge fan"),
    ("The number of days in a week is seven.", "The number of days"),
    ("The sky on a clear day is blue.", "The sky on a clear day"),
    # an earlier boundary (a clause mark, a sentence end) still wins
    ("To make a cup of tea, boil water first.", "To make a cup of tea,"),
    ("The capital of France is Paris. It is lovely.", "The capital of France is Paris."),
    # no phrase to cut before: the cap itself
    ("Seven big red happy fluffy dogs barked.", "Seven big red happy fluffy dogs"),
])
def test_the_first_chunk_cap_cuts_between_phrases(text, first, deltas):
    chunks = split(text, None if deltas == "whole" else small_deltas(text, 5),
                   first_min_words=3, first_max_words=6)
    assert chunks[0] == first
    assert " ".join(chunks) == text


def test_the_phrase_cut_keeps_first_min_words():
    # "in" opens a phrase after two words only: too short a chunk, so the cap cuts instead.
    chunks = split("Cats sleep in warm sunny quiet corners all day.", first_min_words=3, first_max_words=6)
    assert chunks[0] == "Cats sleep in warm sunny quiet"
