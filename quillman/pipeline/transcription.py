"""Live transcripts of the user's speech: ``conversation.item.input_audio_transcription.delta``.

The protocol's deltas are append-only, but a transcription of audio that is still growing
changes as more arrives (the last word is cut, an early word is re-read). So the turn's audio so
far is transcribed again every ``interval_s`` of new audio, and :class:`StableText` sends only
the words two consecutive hypotheses agree on, never the last word of the newest one. The final
transcript (the turn's own ASR, as in any session) goes in ``...completed``; whatever of it
extends the sent words goes out as one last delta first.

Partials cost ASR time a reply would need: they run in transcription sessions, in realtime
sessions when asked for (``include`` or ``session.partial_transcripts``), and where the reply's
prompt is prefilled from them while the user speaks (:mod:`~quillman.pipeline.prefill`; then
without deltas unless asked for); they carry no deadline, so the Transcriber serves every
session's turn segments before them.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import numpy as np

from quillman import protocol
from quillman.engines.asr.base import ASR_SAMPLE_RATE_HZ, Transcript
from quillman.pipeline.timeline import AudioTimeline
from quillman.pipeline.turns import MAX_ASR_SEGMENT_S, UserTurn

logger = logging.getLogger(__name__)

_WORD_CHARS = re.compile(r"[^\w']+")


def _norm(word: str) -> str:
    """How words are compared: case and punctuation do not make two readings differ."""
    return _WORD_CHARS.sub("", word.lower())


def _agreed(a: list[str], b: list[str]) -> int:
    n = 0
    for x, y in zip(a, b):
        if _norm(x) != _norm(y):
            break
        n += 1
    return n


class StableText:
    """Append-only text from repeated hypotheses of the same growing audio."""

    def __init__(self) -> None:
        self.sent: list[str] = []  # words already sent as deltas
        self._last: list[str] | None = None

    def _delta(self, words: list[str]) -> str:
        new = words[len(self.sent):]
        if not new:
            return ""
        text = " ".join(new)
        self.sent = self.sent + new
        return text if len(self.sent) == len(new) else " " + text

    def update(self, hypothesis: str) -> str:
        """The text that became stable with this hypothesis ("" if none)."""
        words = hypothesis.split()
        previous, self._last = self._last, words
        if previous is None:
            return ""
        # Agreed with the last hypothesis, and not the newest's last word (it may be cut off).
        stable = min(_agreed(previous, words), len(words) - 1)
        if stable <= len(self.sent) or _agreed(self.sent, words) < len(self.sent):
            return ""
        return self._delta(words[:stable])

    def finish(self, final: str) -> str:
        """The rest of the final transcript, if it extends what was sent ("" otherwise: the
        final text is in ``completed`` anyway)."""
        words = final.split()
        if _agreed(self.sent, words) < len(self.sent):
            return ""
        return self._delta(words)


@dataclass
class _TurnPartials:
    text: StableText = field(default_factory=StableText)
    transcribed_to: int = 0  # timeline sample up to which the last partial ran
    task: asyncio.Task | None = None


class PartialTranscripts:
    """Runs the partial transcriptions of the turn in progress and emits the stable deltas."""

    def __init__(self, transcribe: Callable[[np.ndarray], Awaitable[Transcript]],
                 emit: Callable[[protocol.ServerEvent], None],
                 spawn: Callable[[Awaitable, str], asyncio.Task], interval_s: float,
                 on_hypothesis: Callable[[str, str], None] | None = None,
                 deltas: Callable[[], bool] = lambda: True):
        self._transcribe = transcribe
        self._emit = emit
        self._on_hypothesis = on_hypothesis  # (item id, text): each hypothesis as it comes
        self._deltas = deltas  # whether the client gets the deltas now
        self._spawn = spawn
        self._interval = int(interval_s * ASR_SAMPLE_RATE_HZ)
        self._turns: dict[str, _TurnPartials] = {}

    def on_audio(self, turn: UserTurn | None, timeline: AudioTimeline) -> None:
        """After each append: start a partial of the turn so far if enough audio is new."""
        if turn is None:
            return
        state = self._turns.setdefault(turn.item_id, _TurnPartials(transcribed_to=turn.start_sample))
        too_long = timeline.end - turn.start_sample > MAX_ASR_SEGMENT_S * ASR_SAMPLE_RATE_HZ
        if (state.task is not None and not state.task.done()) or too_long:
            return  # one at a time; past Whisper's window only the final transcript counts
        if timeline.end - state.transcribed_to < self._interval:
            return
        state.transcribed_to = timeline.end
        pcm = timeline.slice(turn.start_sample, timeline.end)
        state.task = self._spawn(self._partial(turn.item_id, state, pcm), "partial-asr")

    async def _partial(self, item_id: str, state: _TurnPartials, pcm: np.ndarray) -> None:
        try:
            transcript = await self._transcribe(pcm)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a partial is best effort; the final reports failures
            logger.info("partial transcription of %s failed: %r", item_id, exc)
            return
        if self._turns.get(item_id) is not state:
            return
        if self._on_hypothesis is not None:
            self._on_hypothesis(item_id, transcript.text)
        if self._deltas() and (delta := state.text.update(transcript.text)):
            self._emit(protocol.InputAudioTranscriptionDelta(item_id=item_id, delta=delta))

    def finish(self, item_id: str, final: str) -> None:
        """The turn's final transcript is known: the last delta (if any); partials stop."""
        state = self._drop(item_id)
        if state is not None and self._deltas() and (delta := state.text.finish(final)):
            self._emit(protocol.InputAudioTranscriptionDelta(item_id=item_id, delta=delta))

    def stop(self, item_id: str) -> None:
        """The turn is committed (or abandoned): no more partials of it."""
        state = self._turns.get(item_id)
        if state is not None and state.task is not None:
            state.task.cancel()

    def _drop(self, item_id: str) -> _TurnPartials | None:
        self.stop(item_id)
        return self._turns.pop(item_id, None)

    def drop(self, item_id: str) -> None:
        self._drop(item_id)
