"""semantic_vad's text rule (quillman.pipeline.turn_text.read_text) and its fusion with Smart
Turn (decide): pure functions, no models. Cases: finished sentences that end on a word which
often dangles ("is.", "to.", "for it."), mid-sentence pauses, fillers, lists that have not got
their last item, and Whisper's habits (its "?" after a fragment, its repetition loops)."""

from __future__ import annotations

import pytest

from quillman.config import VadConfig
from quillman.pipeline import semantic, turn_text
from quillman.pipeline.semantic import Decision, decide, needs_audio
from quillman.pipeline.turn_text import Reading, read_text

COMPLETE = [
    "What is the capital of France?",
    "Thank you very much.",
    "How are you?",
    "Where do penguins live?",
    # a copula that closes a wh-clause, or follows its pronoun subject
    "Tell me how far away the sun is.",
    "The thing I want to know is how far away the sun is.",
    "Do you know what time it is?",
    "I don't know where my keys are.",
    "Yes, I think it is.",
    # "to" that ends a verb phrase
    "I would love to.",
    "Yes, I really want to.",
    "Do I have to?",
    # "for it" and stranded prepositions
    "I will pay for it.",
    "Can you look for it?",
    "Go for it.",
    "Who are you talking to?",
    "What is it made of?",
    "Where are you from?",
    "What are you looking at?",
    # lists that got their last item, and commas that are no list
    "I need eggs, milk, and bread.",
    "Yes, please.",
    "No, thank you.",
    "Tell me what happened.",
]

INCOMPLETE = [
    # mid-sentence pauses
    "I'd like to book a table for",
    "I'd like to book a table for.",
    "What is the capital of?",
    "My favorite kind of music is.",
    "The thing I want to know is.",
    "The reason I am calling is",
    "Where do penguins?",
    "I want to go to the",
    "If it rains tomorrow",
    "My name is",
    # fillers
    "Um, I think I want to, um.",
    "So...",
    "Okay so",
    "Can you, um",
    "Can you?",
    "What should I",
    "It was, like",
    "Hmm, let me think.",
    "so I was thinking,",
    # lists: the conjunction came, the item did not
    "I need eggs, milk, and",
    "We visited Paris, Rome, and...",
    "Should I wear the red one or",
    "First chop the onions, then",
    "Do you want pizza? Pasta, or...",
]

UNSURE = [  # may end there or not: the short wait decides
    "Can you tell me how many legs?",
    "What do you think about?",
    "How long does it take to",
    "Could you remind me to",
    "I need eggs, milk.",
    "What is this button for?",
    "A spider has...",  # Whisper's "..." after words that may end a sentence
    "My brother and I.",  # the whole turn a noun phrase: a subject, or an answer
    "Tell me more about that.",  # or Whisper's reading of a dangling "the"
]

NO_CUE = ["hello there", "", "milk milk milk milk milk",  # Whisper's loops on a short clip say nothing
          "Tell me a joke about cats Tell me a joke about cats Tell me a",
          "electric cars, electric cars, electric cars, electric cars,"]


@pytest.mark.parametrize("text", COMPLETE)
def test_finished_sentences_read_complete(text):
    assert read_text(text).cue == "complete", read_text(text)


@pytest.mark.parametrize("text", INCOMPLETE)
def test_mid_sentence_pauses_fillers_and_open_lists_read_incomplete(text):
    assert read_text(text).cue == "incomplete", read_text(text)


@pytest.mark.parametrize("text", UNSURE)
def test_ambiguous_endings_read_unsure(text):
    assert read_text(text).cue == "unsure", read_text(text)


@pytest.mark.parametrize("text", NO_CUE)
def test_no_cue(text):
    assert read_text(text).cue is None, read_text(text)


def test_a_segment_joined_in_lower_case_continues_the_sentence():
    # Segments are transcribed apart: "The thing I want to know is." + "how far away the sun is."
    assert read_text("The thing I want to know is. how far away the sun is.").cue == "complete"
    assert read_text("The thing I want to know is. How far away the sun is.").cue == "complete"
    assert read_text("Where are you from? My brother and").cue == "incomplete"


AUTO = VadConfig(type="semantic_vad", eagerness="auto")
SHORT = semantic.SHORT_WAIT_MS["auto"]


def test_decide_the_text_leads_and_smart_turn_only_vetoes():
    complete, incomplete = Reading("complete", ""), Reading("incomplete", "")
    unsure, none = Reading("unsure", ""), Reading(None, "")
    floor = semantic.COMPLETE_WAIT_MS or None
    assert decide(complete, 0.9, AUTO) == Decision(True, "text", 0.9, wait_ms=floor)
    assert decide(complete, None, AUTO).complete  # Smart Turn failed: the text alone
    # all but sure the speaker goes on (a trailing "um" Whisper dropped): the short wait
    low = semantic.AUDIO_VETO / 2
    assert decide(complete, low, AUTO) == Decision(False, "audio_veto", low, wait_ms=SHORT)
    assert decide(incomplete, 0.99, AUTO) == Decision(False, "text", 0.99)  # the cap
    # unsure or no cue: the short wait, whatever Smart Turn says
    assert decide(unsure, 0.99, AUTO) == Decision(False, "text_unsure", 0.99, wait_ms=SHORT)
    assert decide(none, 0.99, AUTO) == Decision(False, "no_cue", 0.99, wait_ms=SHORT)
    assert decide(none, None, AUTO).wait_ms == SHORT


def test_the_complete_floor_is_a_breath_not_a_pause():
    assert 0 < semantic.COMPLETE_WAIT_MS < 500 < semantic.SHORT_WAIT_MS["auto"] < 1000


def test_the_short_wait_follows_eagerness_and_stays_under_the_cap():
    for eagerness in ("low", "medium", "high", "auto"):
        vad = VadConfig(type="semantic_vad", eagerness=eagerness)
        assert semantic.short_wait_ms(vad) < semantic.max_wait_ms(vad)
        assert decide(Reading("unsure", ""), 0.5, vad).wait_ms == semantic.short_wait_ms(vad)
    assert semantic.COMPLETE_WAIT_MS < semantic.short_wait_ms(vad)
    assert semantic.SHORT_WAIT_MS["high"] <= semantic.SHORT_WAIT_MS["auto"] <= semantic.SHORT_WAIT_MS["low"]


def test_smart_turn_is_waited_for_only_where_it_may_veto():
    assert needs_audio(Reading("complete", ""))
    assert not any(needs_audio(Reading(cue, "")) for cue in ("incomplete", "unsure", None))


def test_end_signal_names_what_ended_the_turn():
    done = Decision(True, "text", 0.9)
    waiting = Decision(False, "text_unsure", 0.9, wait_ms=SHORT)
    assert semantic.end_signal(AUTO, "vad", done) == "text"
    assert semantic.end_signal(AUTO, "vad", waiting, waited=True) == "short_wait"
    assert semantic.end_signal(AUTO, "vad", Decision(False, "text", None)) == "max_wait"
    assert semantic.end_signal(VadConfig(), "vad", done) == "silence"
    assert semantic.end_signal(AUTO, "commit", done) == "commit"


@pytest.mark.parametrize("confidence, cue", [(None, "complete"), (0.9, "complete"),
                                              (turn_text.UNSURE_ENDING, "complete"),
                                              (turn_text.UNSURE_ENDING - 0.01, "unsure"), (0.05, "unsure")])
def test_the_asr_confidence_in_the_last_words_backs_a_complete_reading(confidence, cue):
    assert read_text("What do you think come out?", confidence).cue == cue


@pytest.mark.parametrize("text, cue", [("I would like a table for the", "incomplete"), ("hello there", None)])
def test_a_low_confidence_changes_only_a_complete_reading(text, cue):
    assert read_text(text, 0.05).cue == cue
