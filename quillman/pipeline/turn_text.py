"""semantic_vad's text rule: does the transcript of the turn so far read finished?

:func:`read_text` gives a :class:`Reading`: *complete* (a final mark, including sentences that
end on "is.", "to.", "for it.", a stranded preposition), *incomplete* (a dangling article,
possessive or conjunction, a filler, a trailing comma, "Can you", "If it rains tomorrow") or
*unsure* (a word that may end a sentence or not, Whisper's "..." or its repetition loops, a
complete reading whose last words Whisper itself was unsure of). Pure functions of the text;
:mod:`quillman.pipeline.semantic` fuses the reading with Smart Turn into the turn decision.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

# Below this the ASR's own confidence in the last words (``Transcript.end_confidence``) turns a
# transcript that reads complete into an unsure one (the short wait): Whisper finishes a fragment
# cut at a pause with words it made up and a final mark ("What do you think about" -> "What do
# you think come out?"), and gives those words a low probability. Chosen on the tuning half.
UNSURE_ENDING = 0.35

Cue = Literal["complete", "incomplete", "unsure"]

# Never the last word of a finished sentence: articles, possessives, conjunctions, fillers.
DANGLING_WORDS = frozenset("""
a an the my your his her our their
and or but nor so because although though unless whether
um uh er erm hmm mm uhm
""".split())
# Prepositions: dangling after a noun ("a table for"), finished when stranded ("Who are you
# talking to?", "What is it made of?", "Where are you from?").
PREPOSITIONS = frozenset("of to for with from at by into about on in than like through over".split())
COPULAS = frozenset("is are was were am be".split())
WH_WORDS = frozenset("what where when why how who whom whose which whatever wherever whoever".split())
SUBJECT_PRONOUNS = frozenset("i you he she it we they this that these those there".split())
AUXILIARIES = frozenset("do does did can could will would should shall may might must".split())
DETERMINERS = frozenset("the a an my your his her our their its this that these those some".split())
# "to" after these is a finished verb phrase ("I would love to.", "Do I have to?").
TO_ENDS_AFTER = frozenset("""
love like want wants wanted need needs needed have has had going got try trying tried
mean meant plan planned hope hoped ought used supposed able allowed afraid glad happy
""".split())
# Phrases of someone who is thinking, not done: "let me see", "you know", "I mean".
THINKING = ("let me see", "let me think", "you know", "i mean", "hold on", "wait a second")
# The start of a subordinate clause whose main clause has not come yet ("If it rains tomorrow").
SUBORDINATORS = frozenset("if unless although though whereas because since while once".split())
_INTERJECTIONS = frozenset("yes no yeah yep nope okay ok well please thanks thank hello hi hey sure sorry "
                           "oh right alright great".split())


@dataclass(frozen=True)
class Reading:
    """What the transcript says: ``cue`` (None: nothing) and why (for tests and the bench)."""

    cue: Cue | None
    why: str



def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def _last_sentence(text: str) -> str:
    """The last sentence of ``text`` (its final mark kept). Segments are transcribed apart, so
    a period between them may be Whisper's, not the speaker's: a sentence that starts in lower
    case goes on the previous one."""
    parts = re.split(r"(?<=[.?!])\s+(?=[A-Z0-9\"'])", text.strip())
    return parts[-1] if parts else ""


def read_text(transcript: str, end_confidence: float | None = None) -> Reading:
    """The text rule: does the transcript of the turn so far read finished? ``end_confidence``:
    the ASR's confidence in its last words (None: not known); a complete reading it does not
    back is unsure."""
    reading = _read_text(transcript)
    if reading.cue == "complete" and end_confidence is not None and end_confidence < UNSURE_ENDING:
        return Reading("unsure", f"{reading.why}, but the ASR is unsure of the last words ({end_confidence:.2f})")
    return reading


def _read_text(transcript: str) -> Reading:
    text = transcript.strip()
    if not text:
        return Reading(None, "no transcript")
    if _repeats(_words(text)):
        return Reading(None, "ASR repetition loop")  # "milk milk milk milk": the words say nothing
    if text.endswith((",", "-", "—", ":", ";")):
        return Reading("incomplete", "continuation mark")
    trailing_off = text.endswith(("...", "…"))
    reading = _read_words(text.rstrip(".… "), text)
    if trailing_off and reading.cue != "incomplete":
        # Whisper's "..." after words that may end a sentence ("A spider has..."): unsure.
        return Reading("unsure", f"'...' ({reading.why})")
    return reading


def _read_words(text: str, transcript: str) -> Reading:
    if not text:
        return Reading(None, "no words")
    sentence = _last_sentence(text)
    words = _words(sentence)
    if not words:
        return Reading(None, "no words")
    last, before = words[-1], words[:-1]
    joined = " ".join(words)
    if last in DANGLING_WORDS:
        return Reading("incomplete", f"dangling {last!r}")
    if any(joined.endswith(phrase) for phrase in THINKING):
        return Reading("incomplete", "thinking aloud")
    if last in ("like", "well", "then") and (not before or before[-1] == "and"
                                             or re.search(r",\s*\S+[.?!]?$", sentence)):
        return Reading("incomplete", f"{last!r} after a comma")  # "It was, like" / "the onions, then"
    if len(words) >= 2 and words[-2] in AUXILIARIES and last in SUBJECT_PRONOUNS - {"this", "that", "there"}:
        # "Can you", "What should I": a question that has not got its verb yet.
        return Reading("incomplete", "auxiliary and subject, no verb")
    if re.fullmatch(r"(what|where|when|why|how|who|which) (do|does|did|can|could|will|would|should) \S+", joined):
        return Reading("incomplete", "wh-question, no verb")  # "Where do penguins"
    if words[0] in SUBORDINATORS and "," not in sentence and not transcript.endswith("?"):
        return Reading("incomplete", f"{words[0]!r}-clause, no main clause")
    if last in COPULAS:
        return _copula_at_end(before)
    if last == "to" and before and before[-1] in TO_ENDS_AFTER:
        return Reading("complete", "'to' ends a verb phrase")  # "I would love to."
    if last in PREPOSITIONS:
        return _preposition_at_end(words)
    if last == "that" and before and before[-1] in PREPOSITIONS:
        # "Tell me more about that.": finished, or Whisper's reading of a dangling "the"
        # ("tell me more about the ...", "I want to go to the ...").
        return Reading("unsure", "preposition + 'that' at the end")
    if _open_list(sentence):
        return Reading("unsure", "a list without its last item")
    if _embedded_wh_without_verb(words):
        return Reading("unsure", "embedded wh-clause without its verb")  # "tell me how many legs"
    if _noun_phrase_only(_words(transcript)):
        return Reading("unsure", "a noun phrase, no verb")  # "My brother and I."
    if transcript[-1] in ".?!":
        return Reading("complete", "final mark")
    return Reading(None, "no cue")


def _copula_at_end(before: list[str]) -> Reading:
    """"... how far away the sun is" (finished: the copula closes a wh-clause, its subject just
    before it) vs "my favorite kind of music is" / "what I want is" (unfinished)."""
    if not before:
        return Reading("incomplete", "copula alone")
    wh = [i for i, w in enumerate(before) if w in WH_WORDS or w in ("if", "whether")]
    previous = before[-1]
    if previous in SUBJECT_PRONOUNS and len(before) >= 2 and previous != "there":
        return Reading("complete", "pronoun + copula closes the clause")
    if previous in ("here", "there") and len(before) == 1:
        return Reading("complete", "'here is' / 'there is'")  # "There you are" is 3 words
    if wh:
        between = before[wh[-1] + 1:]
        if between and any(w in DETERMINERS for w in between) and "to" not in between:
            return Reading("complete", "wh-clause closed by its copula")
    return Reading("incomplete", "copula at the end")


def _preposition_at_end(words: list[str]) -> Reading:
    """"Who are you talking to?" / "What is it made of?" / "What is this button for?" (stranded
    in a wh-question: finished, or may be) vs "a table for" / "the capital of" (dangling)."""
    before = words[:-1]
    previous = before[-1] if before else ""
    after_noun_phrase = len(before) >= 2 and before[-2] in DETERMINERS
    if previous in DETERMINERS:
        return Reading("incomplete", "preposition after a determiner")
    if before and (before[0] in WH_WORDS or {"what", "where", "who", "which"} & set(before)):
        if words[-1] == "of" and after_noun_phrase:
            return Reading("incomplete", "'of' after a noun phrase")  # "what is the capital of"
        if previous.endswith(("ing", "ed")) or previous in SUBJECT_PRONOUNS or previous in ("made", "from"):
            return Reading("complete", "stranded preposition in a wh-question")
        return Reading("unsure", "preposition at the end of a wh-question")
    if after_noun_phrase:
        return Reading("incomplete", "preposition after a noun phrase")  # "book a table for"
    return Reading("unsure", "preposition at the end")


_VERBISH = COPULAS | AUXILIARIES | frozenset("have has had am 's 're 'm 've 'd 'll".split())


def _noun_phrase_only(words: list[str]) -> bool:
    """The whole turn is a short phrase that starts with a determiner and has no verb in
    sight ("My brother and I", "The red one"): a subject waiting for its verb,
    or an answer; which, the pause will tell."""
    return (1 < len(words) <= 5 and words[0] in DETERMINERS - {"this", "that", "these", "those"}
            and not any(w in _VERBISH or w.endswith(("ed", "ing", "'s", "'re", "'m")) for w in words))


_EMBEDDING_VERBS = frozenset("tell know wonder ask show explain remember guess sure idea see find".split())


def _embedded_wh_without_verb(words: list[str]) -> bool:
    """"Can you tell me how many legs": a wh-clause after "tell me" / "know" that has not got
    its verb yet (one or two words, no pronoun, auxiliary or past participle among them)."""
    wh = [i for i, w in enumerate(words) if w in WH_WORDS and i > 0]
    if not wh or not _EMBEDDING_VERBS & set(words[:wh[-1]]):
        return False
    rest = words[wh[-1] + 1:]
    return 1 <= len(rest) <= 2 and not any(
        w in COPULAS or w in AUXILIARIES or w in SUBJECT_PRONOUNS or w.endswith("ed") or "'" in w for w in rest)


def _repeats(words: list[str]) -> bool:
    """Whisper's loop on a short clip: a phrase of up to three words said three times in a row,
    or a longer one twice ("tell me a joke about cats tell me a joke about cats")."""
    for n in range(1, len(words) // 2 + 1):
        times = 3 if n <= 3 else 2
        for i in range(len(words) - times * n + 1):
            if all(words[i:i + n] == words[i + k * n:i + (k + 1) * n] for k in range(1, times)):
                return True
    return False


def _open_list(sentence: str) -> bool:
    """"Add apples, bananas." : short comma-separated items, and no "and" / "or" before the last."""
    pieces = [_words(p) for p in re.sub(r"[.?!]+$", "", sentence).split(",")]
    if len(pieces) < 2 or not pieces[0] or pieces[0][0] in _INTERJECTIONS:
        return False
    items = pieces[1:]
    if any(not item or len(item) > 3 or item[0] in WH_WORDS or item[0] in SUBJECT_PRONOUNS
           or item[0] in _INTERJECTIONS for item in items):
        return False
    return not {"and", "or", "n", "then", "etc"} & set(items[-1])
