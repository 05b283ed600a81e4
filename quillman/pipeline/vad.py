"""Turn detection on speech probabilities: speech start, pauses, resumptions, end of turn.

Pure logic over per-window probabilities (from Silero, see ``quillman.engines.vad``), in the
samples of the 16 kHz analysis stream. A *pause* (``pause_ms`` of silence) closes a segment that
can be transcribed at once, while the user may still go on; ``silence_duration_ms`` of silence
ends the turn. Hysteresis as in Silero's own ``get_speech_timestamps``: speech starts above
``threshold`` and only ends below ``threshold - 0.15``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from quillman.config import VadConfig

VAD_SAMPLE_RATE_HZ = 16000


@dataclass(frozen=True)
class SpeechStarted:
    start_sample: int  # first speech sample (no padding)


@dataclass(frozen=True)
class SegmentEnded:
    """A segment of the turn is complete: at a pause (``pause=True``) or a forced split."""

    end_sample: int  # where to cut the audio
    speech_end_sample: int  # end of the last speech window before the cut
    pause: bool


@dataclass(frozen=True)
class SilenceBegan:
    """Speech has been quiet for ``early_ms``: likely a pause. The segment so far (to
    ``end_sample``) can be transcribed now, before the pause is confirmed."""

    end_sample: int
    speech_end_sample: int


@dataclass(frozen=True)
class SilenceBroken:
    """Speech came back before the silence after :class:`SilenceBegan` became a pause."""

    sample: int


@dataclass(frozen=True)
class SpeechResumed:
    sample: int


@dataclass(frozen=True)
class SpeechStopped:
    speech_end_sample: int


VadEvent = SpeechStarted | SegmentEnded | SilenceBegan | SilenceBroken | SpeechResumed | SpeechStopped


def ms_to_samples(ms: float) -> int:
    return int(ms * VAD_SAMPLE_RATE_HZ / 1000)


def samples_to_ms(samples: int) -> int:
    return int(samples * 1000 / VAD_SAMPLE_RATE_HZ)


class TurnDetector:
    SILENCE, SPEECH, PAUSED = "silence", "speech", "paused"

    def __init__(self, options: VadConfig, window_samples: int, early_ms: int = 0):
        self.options = options
        # 0: no SilenceBegan events. Below pause_ms: the silence is announced this early.
        self.early_ms = early_ms
        self._early_sent = False
        self.window_samples = window_samples  # the VAD engine's (Silero: 512 at 16 kHz)
        self.state = self.SILENCE
        self._neg_threshold = max(options.threshold - 0.15, 0.01)
        self._min_speech_windows = max(1, round(ms_to_samples(options.min_speech_ms) / window_samples))
        self._candidate_start = 0  # where the speech being confirmed started (set by its first window)
        self._candidate_windows = 0
        self._last_speech_end = 0
        self._silence_samples = 0
        self._segment_start = 0
        # Recent (probability, window_end) to pick a quiet place for a forced split.
        self._recent: deque[tuple[float, int]] = deque(maxlen=32)

    def process(self, probability: float, window_end: int) -> list[VadEvent]:
        """Feed one window's speech probability; ``window_end`` is its end sample."""
        window_start = window_end - self.window_samples
        self._recent.append((probability, window_end))
        events: list[VadEvent] = []
        if self.state == self.SILENCE:
            if self._confirm_speech(probability, window_start):
                events.append(SpeechStarted(self._speech_from_candidate(window_end)))
        elif self.state == self.SPEECH:
            if probability >= self._neg_threshold:
                self._last_speech_end = window_end
                self._silence_samples = 0
                if self._early_sent:
                    self._early_sent = False
                    events.append(SilenceBroken(window_start))
                if window_end - self._segment_start >= self.options.max_segment_s * VAD_SAMPLE_RATE_HZ:
                    cut = self._quietest_recent()
                    events.append(SegmentEnded(cut, min(cut, self._last_speech_end), pause=False))
                    self._segment_start = cut
            else:
                self._silence_samples += self.window_samples
                if self._silence_samples >= ms_to_samples(self.options.pause_ms):
                    self.state = self.PAUSED
                    self._candidate_windows = 0
                    self._early_sent = False
                    events.append(SegmentEnded(window_end, self._last_speech_end, pause=True))
                elif (self.early_ms and not self._early_sent
                      and self._silence_samples >= ms_to_samples(self.early_ms)):
                    self._early_sent = True
                    events.append(SilenceBegan(window_end, self._last_speech_end))
        else:  # PAUSED
            if self._confirm_speech(probability, window_start):
                events.append(SpeechResumed(self._speech_from_candidate(window_end)))
            else:
                # Unconfirmed speech still counts toward the end of turn: a click is not a word.
                self._silence_samples += self.window_samples
                if self._silence_samples >= ms_to_samples(self.options.silence_duration_ms):
                    self.state = self.SILENCE
                    self._candidate_windows = 0
                    events.append(SpeechStopped(self._last_speech_end))
        return events

    @property
    def last_speech_end(self) -> int:
        return self._last_speech_end

    @property
    def quiet(self) -> bool:
        """Paused, and the last window was not the start of speech (unconfirmed yet)."""
        return self.state == self.PAUSED and self._candidate_windows == 0

    def reset(self) -> None:
        self.state = self.SILENCE
        self._early_sent = False
        self._candidate_windows = 0
        self._silence_samples = 0

    def _confirm_speech(self, probability: float, window_start: int) -> bool:
        if probability < self.options.threshold:
            self._candidate_windows = 0
            return False
        if self._candidate_windows == 0:
            self._candidate_start = window_start
        self._candidate_windows += 1
        return self._candidate_windows >= self._min_speech_windows

    def _speech_from_candidate(self, window_end: int) -> int:
        """Speech is confirmed (it started, or resumed after a pause): a segment starts where
        the candidate did, which is returned."""
        self.state = self.SPEECH
        self._segment_start = self._candidate_start
        self._last_speech_end = window_end
        self._silence_samples = 0
        return self._candidate_start

    def _quietest_recent(self) -> int:
        # Only inside the current segment; among equals the latest, so the next segment
        # starts short and the split does not fire again on the next window.
        inside = [pw for pw in self._recent if pw[1] > self._segment_start]
        return min(inside, key=lambda pw: (pw[0], -pw[1]))[1]
