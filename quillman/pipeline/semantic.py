"""Semantic end of turn: is the utterance complete at this pause? (``semantic_vad``)

At each pause (~200 ms of silence) the session asks :func:`judge` about the turn so far. Both
cues start at the pause: the audio model (Smart Turn, ``quillman.engines.smart_turn``) scores
the speech since the previous pause while that segment is transcribed; the text rule
(:func:`~quillman.pipeline.turn_text.read_text`) reads the transcript of the turn so far (Whisper's segments, joined) when
it arrives. :func:`decide` turns both into a :class:`Decision`:

* the text reads complete (a final mark, including sentences that end on "is.", "to.",
  "for it.", a stranded preposition), Whisper was sure of its last words (``UNSURE_ENDING``)
  and Smart Turn does not veto it: the turn ends once the pause has lasted ``COMPLETE_WAIT_MS``
  (350 ms: a breath between list items is not an end);
* the text reads unfinished (a dangling article, possessive or conjunction, a filler, a
  trailing comma, "Can you", "If it rains tomorrow"): keep listening up to the eagerness cap;
* anything else (a word that may end a sentence or not, "What do you think about?"; no
  punctuation; Whisper's "..." or its repetition loops; a transcript that reads complete but
  with last words Whisper made up to finish a fragment, or that Smart Turn is all but sure the
  speaker goes on, a trailing "um" Whisper dropped): the turn
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
from dataclasses import dataclass
from typing import Awaitable, Callable, Protocol

import numpy as np

from quillman.config import VadConfig
from quillman.engines.asr.base import Transcript
from quillman.pipeline.turn_text import Reading, read_text

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

SIGNALS = ("text", "text_unsure", "no_cue", "audio_veto")


class EndOfTurnModel(Protocol):
    """Probability that the 16 kHz float32 speech ending at ``pcm``'s end is a finished turn.
    Blocking (it runs in a worker thread); ``quillman.engines.smart_turn.SmartTurn``."""

    def probability(self, pcm: np.ndarray) -> float: ...


@dataclass(frozen=True)
class Decision:
    """``complete``: end the turn at this pause (once ``wait_ms`` of silence, counted from the
    end of speech, have passed, if set). Otherwise keep listening; ``wait_ms``: end it anyway
    after this much silence unless speech resumes; None: the eagerness cap ends it."""

    complete: bool
    signal: str  # what decided: "text" | "text_unsure" | "no_cue" | "audio_veto"
    audio_probability: float | None = None
    wait_ms: int | None = None


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


async def judge(model: EndOfTurnModel, pcm: np.ndarray, transcript: Callable[[], Awaitable[Transcript]],
                vad: VadConfig | None = None) -> Decision:
    """The decision on the turn so far, at a pause. Smart Turn starts at once, beside the ASR
    of the last segment; the decision is made when the transcript arrives (Smart Turn is
    waited for only when the text leaves it a say). A failed transcript leaves the audio to
    decide; a failed audio model leaves the text."""
    audio = asyncio.ensure_future(asyncio.to_thread(model.probability, pcm))
    audio.add_done_callback(_retrieve)
    try:
        try:
            heard = await transcript()
            reading = read_text(heard.text, heard.end_confidence)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the turn's own transcript reports ASR failures
            reading = read_text("")
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
