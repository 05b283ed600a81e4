"""Semantic end of turn: is the utterance complete at this pause? (``semantic_vad``)

At each pause the session asks :func:`judge` about the turn so far: the transcript the session
already has (Whisper's segments, joined) gives text cues, and where they say nothing the audio
model (Smart Turn, ``quillman.engines.smart_turn``) scores how finished the speech since the
previous pause sounds. :func:`fuse` turns both into a
:class:`Decision`: *complete* ends the turn at once (the pause is ~200 ms of silence already);
*incomplete* keeps listening up to the eagerness cap (``max_wait_ms``), which ends it anyway.

Why text decides first: on the labeled set (``quillman.loadtest.turns``) Smart Turn alone calls
47 % of finished synthetic utterances unfinished, while the text cues misjudge none of them and
catch two thirds of mid-sentence pauses. The audio model breaks the tie when the text has no
cue. The numbers are in docs/benchmarks.md#turn-taking.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Awaitable, Callable, Protocol

import numpy as np

from quillman.config import VadConfig

# How long an utterance judged incomplete may pause before the turn ends anyway (OpenAI's caps).
MAX_WAIT_MS = {"low": 8000, "medium": 4000, "high": 2000, "auto": 4000}
COMPLETE_SILENCE_MS = 200  # a complete utterance ends at the first pause (pause_ms ~ this)
AUDIO_COMPLETE = 0.5  # Smart Turn's own threshold

# Below this Smart Turn would override the text (a trailing "um" Whisper dropped). Measured:
# it also vetoes most utterances that had a pause inside, so it is only in the ablation.
AUDIO_SURELY_INCOMPLETE = 0.02
# An utterance that ends on one of these is unfinished whatever mark Whisper put after it
# ("What is the capital of?", "I'd like a table for."): articles, possessives, prepositions
# that seldom end a sentence, conjunctions, copulas, fillers.
DANGLING_WORDS = frozenset("""
a an the my your his her our their its
of to for with from at by into than
and or but so because if when while then
is are was were
um uh er erm hmm mm
""".split())
# "Where do penguins?": a wh-word, an auxiliary, a subject and no main verb yet.
_VERBLESS_QUESTION = re.compile(
    r"^(what|where|when|why|how|who|which)\s+(do|does|did|can|could|will|would|should)\s+\S+$")
SIGNALS = ("audio", "punctuation", "fused", "fused_veto")


class EndOfTurnModel(Protocol):
    """Probability that the 16 kHz float32 speech ending at ``pcm``'s end is a finished turn.
    Blocking (it runs in a worker thread); ``quillman.engines.smart_turn.SmartTurn``."""

    def probability(self, pcm: np.ndarray) -> float: ...


@dataclass(frozen=True)
class Decision:
    complete: bool
    signal: str  # what decided: "text_punctuation" | "text_dangling" | "audio" | "audio_veto" (ablation)
    audio_probability: float | None = None


def text_cue(transcript: str) -> bool | None:
    """True: the text reads finished; False: it does not; None: no cue."""
    text = transcript.strip()
    if not text:
        return None
    if text.endswith(("...", "…", ",", "-", "—", ":", ";")):
        return False
    words = re.findall(r"[a-z']+", text.lower())
    if words and (words[-1] in DANGLING_WORDS or _VERBLESS_QUESTION.match(" ".join(words))):
        return False
    if text[-1] in ".?!":
        return True
    return None


def fuse(transcript: str, audio_probability: float | None, signals: str = "fused") -> Decision:
    """The turn decision; ``signals`` (the bench's ablation, :data:`SIGNALS`) picks what counts:
    ``audio`` (Smart Turn alone), ``punctuation`` (Whisper's final mark alone), ``fused`` (the
    text cues, Smart Turn where they say nothing: what the server uses), ``fused_veto``
    (``fused`` plus Smart Turn's veto when it is all but sure the speaker is not done)."""
    p = audio_probability
    audio = p is not None and p >= AUDIO_COMPLETE
    if signals == "audio":
        return Decision(audio, "audio", p)
    if signals == "punctuation":
        text = transcript.strip()
        return Decision(bool(text) and text[-1] in ".?!", "text_punctuation", p)
    cue = text_cue(transcript)
    if cue is False:
        return Decision(False, "text_dangling", p)
    if signals == "fused_veto" and p is not None and p < AUDIO_SURELY_INCOMPLETE:
        return Decision(False, "audio_veto", p)
    if cue is True:
        return Decision(True, "text_punctuation", p)
    return Decision(audio, "audio", p)


def max_wait_ms(vad: VadConfig) -> int:
    return MAX_WAIT_MS[vad.eagerness]


def detector_options(vad: VadConfig) -> VadConfig:
    """What the silence detector runs with: under ``semantic_vad`` its end of turn is the cap
    (beyond server_vad's own range, so not re-validated), the judgment ends turns sooner."""
    if vad.type != "semantic_vad":
        return vad
    return vad.model_copy(update={"silence_duration_ms": max_wait_ms(vad),
                                  "pause_ms": min(vad.pause_ms, COMPLETE_SILENCE_MS)})


async def judge(model: EndOfTurnModel, pcm: np.ndarray,
                transcript: Callable[[], Awaitable[str]]) -> Decision:
    """The decision on the turn so far. The transcript first: when
    its cues decide, the audio model is not run at all (on 2 cores it would compete with the
    ASR and the speculative reply for the critical ~100 ms). A failed transcript leaves the
    audio to decide."""
    try:
        text = await transcript()
    except asyncio.CancelledError:
        raise
    except Exception:  # noqa: BLE001 - the turn's own transcript reports ASR failures
        text = ""
    if text_cue(text) is None:
        return fuse(text, await asyncio.to_thread(model.probability, pcm))
    return fuse(text, None)


# --- reporting: which signal ended the turn, and when ---------------------------------------------

def end_signal(vad: VadConfig | None, reason: str, decision: Decision | None) -> str:
    """What ended a committed turn, for ``metadata["turn_decision"]``: the judgment's signal,
    ``max_wait`` (semantic_vad's cap), ``silence`` (server_vad), ``commit`` or ``max_turn``."""
    if reason != "vad":
        return reason
    if vad is None or vad.type != "semantic_vad":
        return "silence"
    return decision.signal if decision is not None and decision.complete else "max_wait"
