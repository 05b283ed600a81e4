"""Semantic end of turn: is the utterance complete at this pause? (``semantic_vad``)

At each pause (~200 ms of silence) the session asks :func:`judge` about the turn so far. Both
cues start at the pause: the audio model (Smart Turn, ``quillman.engines.smart_turn``) scores
the speech since the previous pause while that segment is transcribed; the text rule
(:func:`read_text`) reads the transcript of the turn so far (Whisper's segments, joined) when
it arrives. :func:`decide` turns both into a :class:`Decision`:

* the text reads complete (a final mark, including sentences that end on "is.", "to.",
  "for it.", a stranded preposition) and Smart Turn does not veto it: the turn ends once the
  pause has lasted ``COMPLETE_WAIT_MS`` (350 ms: a breath between list items is not an end);
* the text reads unfinished (a dangling article, possessive or conjunction, a filler, a
  trailing comma, "Can you", "If it rains tomorrow"): keep listening up to the eagerness cap;
* anything else (a word that may end a sentence or not, "What do you think about?"; no
  punctuation; Whisper's "..." or its repetition loops; a transcript that reads complete but
  Smart Turn is all but sure the speaker goes on, a trailing "um" Whisper dropped): the turn
  ends after the short wait (850 ms for ``auto``) unless speech resumes, so a mid-sentence
  pause survives and a finished utterance is still answered within 1 s.

The decision waits for the transcript, and for Smart Turn only where the text reads complete
(the veto); Smart Turn has run beside the ASR, so that wait is the longer of the two, not their
sum. Why Smart Turn does not break ties any more: on the labeled set's tuning half (synthetic
voices, ``quillman bench turns``) every threshold tried added false endpoints or latency over
the short wait. The labeled set, the tuning and the figures: docs/benchmarks.md#turn-taking.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Awaitable, Callable, Literal, Protocol

import numpy as np

from quillman.config import VadConfig

# How long an utterance judged incomplete may pause before the turn ends anyway (OpenAI's caps).
MAX_WAIT_MS = {"low": 8000, "medium": 4000, "high": 2000, "auto": 4000}
# How long an utterance the cues are unsure about may pause: long enough for a mid-sentence
# pause of ~700 ms, short enough that a finished one is answered within 1 s.
SHORT_WAIT_MS = {"low": 1500, "medium": 850, "high": 600, "auto": 850}
COMPLETE_SILENCE_MS = 200  # a complete utterance ends at the first pause (pause_ms ~ this)
# ... but not before this much silence (from the end of speech): a judgment that is ready
# sooner waits for it, so a short breath (between list items) is not taken for the end.
COMPLETE_WAIT_MS = 350
# Below this Smart Turn vetoes a transcript that reads complete (a trailing "um" Whisper
# dropped: "What should I cook for dinner, um" heard as "What should I cook for dinner?"):
# the short wait instead of the end at once.
AUDIO_VETO = 0.02

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
SIGNALS = ("text", "text_unsure", "no_cue", "audio_veto")


class EndOfTurnModel(Protocol):
    """Probability that the 16 kHz float32 speech ending at ``pcm``'s end is a finished turn.
    Blocking (it runs in a worker thread); ``quillman.engines.smart_turn.SmartTurn``."""

    def probability(self, pcm: np.ndarray) -> float: ...


@dataclass(frozen=True)
class Reading:
    """What the transcript says: ``cue`` (None: nothing) and why (for tests and the bench)."""

    cue: Cue | None
    why: str


@dataclass(frozen=True)
class Decision:
    """``complete``: end the turn at this pause (once ``wait_ms`` of silence, counted from the
    end of speech, have passed, if set). Otherwise keep listening; ``wait_ms``: end it anyway
    after this much silence unless speech resumes; None: the eagerness cap ends it."""

    complete: bool
    signal: str  # what decided: "text" | "text_unsure" | "no_cue" | "audio_veto"
    audio_probability: float | None = None
    wait_ms: int | None = None


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def _last_sentence(text: str) -> str:
    """The last sentence of ``text`` (its final mark kept). Segments are transcribed apart, so
    a period between them may be Whisper's, not the speaker's: a sentence that starts in lower
    case goes on the previous one."""
    parts = re.split(r"(?<=[.?!])\s+(?=[A-Z0-9\"'])", text.strip())
    return parts[-1] if parts else ""


def read_text(transcript: str) -> Reading:
    """The text rule: does the transcript of the turn so far read finished?"""
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


def needs_audio(reading: Reading) -> bool:
    """Whether the decision waits for Smart Turn's score: only a transcript that reads
    complete does (the veto); every other reading decides alone."""
    return reading.cue == "complete"


def decide(reading: Reading, audio_probability: float | None, vad: VadConfig | None = None) -> Decision:
    """The turn decision from the text's reading and Smart Turn's score (None: not run, or failed)."""
    p = audio_probability
    short = short_wait_ms(vad or VadConfig(type="semantic_vad"))
    if reading.cue == "incomplete":
        return Decision(False, "text", p)
    if reading.cue == "complete":
        if p is not None and p < AUDIO_VETO:
            return Decision(False, "audio_veto", p, wait_ms=short)
        return Decision(True, "text", p, wait_ms=COMPLETE_WAIT_MS or None)
    return Decision(False, "text_unsure" if reading.cue == "unsure" else "no_cue", p, wait_ms=short)


def max_wait_ms(vad: VadConfig) -> int:
    return MAX_WAIT_MS[vad.eagerness]


def short_wait_ms(vad: VadConfig) -> int:
    return SHORT_WAIT_MS[vad.eagerness]


def detector_options(vad: VadConfig) -> VadConfig:
    """What the silence detector runs with: under ``semantic_vad`` its end of turn is the cap
    (beyond server_vad's own range, so not re-validated), the judgment ends turns sooner."""
    if vad.type != "semantic_vad":
        return vad
    return vad.model_copy(update={"silence_duration_ms": max_wait_ms(vad),
                                  "pause_ms": min(vad.pause_ms, COMPLETE_SILENCE_MS)})


async def judge(model: EndOfTurnModel, pcm: np.ndarray, transcript: Callable[[], Awaitable[str]],
                vad: VadConfig | None = None) -> Decision:
    """The decision on the turn so far, at a pause. Smart Turn starts at once, beside the ASR
    of the last segment; the decision is made when the transcript arrives (Smart Turn is
    waited for only when the text leaves it a say). A failed transcript leaves the audio to
    decide; a failed audio model leaves the text."""
    audio = asyncio.ensure_future(asyncio.to_thread(model.probability, pcm))
    audio.add_done_callback(_retrieve)
    try:
        try:
            text = await transcript()
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the turn's own transcript reports ASR failures
            text = ""
        reading = read_text(text)
        p = None
        if needs_audio(reading):
            try:
                p = await audio
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the text decides alone
                p = None
        return decide(reading, p, vad)
    finally:
        audio.cancel()  # its thread runs on; its result is not needed


def _retrieve(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: a failure is not logged as "never retrieved"


# --- reporting: which signal ended the turn, and when ---------------------------------------------

def end_signal(vad: VadConfig | None, reason: str, decision: Decision | None, waited: bool = False) -> str:
    """What ended a committed turn, for ``metadata["turn_decision"]``: the judgment's signal
    (``text`` / ``audio``), ``short_wait`` (an unsure judgment's wait), ``max_wait``
    (semantic_vad's cap), ``silence`` (server_vad), ``commit`` or ``max_turn``."""
    if reason != "vad":
        return reason
    if vad is None or vad.type != "semantic_vad":
        return "silence"
    if decision is not None and decision.complete:
        return decision.signal
    return "short_wait" if waited else "max_wait"
