"""The user's side of the audio: timeline, VAD cursor, turns, commit, clear, trim.

:class:`TurnTracker` takes the session's input audio (pcm16 at the client's rate), keeps it at
16 kHz on an :class:`~quillman.pipeline.timeline.AudioTimeline`, runs the streaming VAD and the :class:`TurnDetector` over it,
and answers each append or commit with typed turn events (:data:`TurnEvent`). It knows nothing
of models or the wire: the session decides what a segment or a committed turn starts.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from quillman import errors, protocol
from quillman.audio import StreamResampler, int16_to_float
from quillman.config import VadConfig
from quillman.engines.asr.base import ASR_SAMPLE_RATE_HZ
from quillman.pipeline.semantic import detector_options
from quillman.pipeline.timeline import AudioTimeline
from quillman.pipeline.vad import (
    SegmentEnded,
    SilenceBegan,
    SilenceBroken,
    SpeechResumed,
    SpeechStarted,
    SpeechStopped,
    TurnDetector,
    ms_to_samples,
    samples_to_ms,
)

MAX_ASR_SEGMENT_S = 28.0  # Whisper's window is 30 s
MIN_COMMIT_MS = 100
NARROWBAND_MAX_HZ = 8000  # input at this rate or below has nothing above 4 kHz


class StreamingVad(Protocol):
    """Speech probability per window of 16 kHz float32 audio (``quillman.engines.vad.SileroVad``)."""

    window_samples: int

    def __call__(self, pcm: np.ndarray) -> np.ndarray: ...

    def reset(self) -> None: ...


@dataclass
class UserTurn:
    """One user turn's audio: its item, where it starts, what is cut for ASR, how it ends.

    The work done on it (ASR tasks, the judgment, the speculative reply) is not here: it is the
    :class:`~quillman.pipeline.voice_turn.VoiceTurn`'s, which starts and cancels it.
    """

    item_id: str
    start_sample: int
    segment_start: int  # audio from here on is not yet sent to ASR
    draft_end: int | None = None  # the open segment was drafted up to here (SegmentDraft)
    speech_end: float | None = None  # perf_counter instant of the last speech sample
    end_at: int | None = None  # semantic_vad's short wait: end the turn when silence reaches this sample
    waited: bool = False  # the short wait ended it


# --- turn events: what an append or a commit means for the conversation ---------------------------

@dataclass(frozen=True)
class TurnStarted:
    turn: UserTurn
    audio_start_ms: int


@dataclass(frozen=True)
class SegmentCut:
    """Audio of the turn ready for ASR: at a pause (``pause``: a reply may start) or a split."""

    turn: UserTurn
    pcm: list[np.ndarray]  # 16 kHz float32, each at most MAX_ASR_SEGMENT_S
    pause: bool
    drafted: bool = False  # its speech was transcribed from the first silence (turn.draft)


@dataclass(frozen=True)
class SegmentDraft:
    """The open segment, up to the first silence: transcribe it now; if the silence becomes a
    pause, its :class:`SegmentCut` comes with ``drafted`` and this transcript is the segment's."""

    turn: UserTurn
    pcm: list[np.ndarray]


@dataclass(frozen=True)
class DraftDropped:
    """Speech came back before the pause: the draft's transcript is not the segment's."""

    turn: UserTurn


@dataclass(frozen=True)
class TurnResumed:
    """Speech came back after a pause: what was started at the pause is moot."""

    turn: UserTurn


@dataclass(frozen=True)
class SpeechEnded:
    turn: UserTurn
    audio_end_ms: int


@dataclass(frozen=True)
class TurnCommitted:
    """The turn is over: ``tail`` is its audio after the last cut (for ASR), if any speech."""

    turn: UserTurn
    tail: list[np.ndarray]
    duration_s: float
    reason: str  # "vad" | "commit" | "max_turn"


TurnEvent = TurnStarted | SegmentDraft | DraftDropped | SegmentCut | TurnResumed | SpeechEnded | TurnCommitted


class TurnTracker:
    def __init__(self, make_vad: Callable[[], StreamingVad], vad: VadConfig | None, input_rate_hz: int,
                 max_turn_s: float):
        self._make_vad = make_vad
        self._vad = make_vad()
        self.options = vad  # None: turn detection off, the client commits
        self.input_rate_hz = input_rate_hz
        self._detector = self._new_detector(vad or VadConfig())
        self._resampler = StreamResampler(input_rate_hz, ASR_SAMPLE_RATE_HZ)
        self.max_turn_s = max_turn_s
        self.timeline = AudioTimeline(keep_s=max_turn_s + 10)
        self._vad_cursor = 0  # next sample to analyse
        self._analysed = 0  # end of the last window the turn detector has seen
        self._commit_cursor = 0  # start of audio not yet committed
        self.turn: UserTurn | None = None
        self.cut_at_pauses = True  # False: the sequential baseline transcribes whole turns

    # --- settings ----------------------------------------------------------------------------

    def _new_detector(self, options: VadConfig) -> TurnDetector:
        detector_options = self._detector_options(options)
        early = options.early_asr_ms if options.early_asr_ms < detector_options.pause_ms else 0
        return TurnDetector(detector_options, self._vad.window_samples, early_ms=early)

    def _detector_options(self, options: VadConfig) -> VadConfig:
        """What the detector runs with: semantic_vad's (``detector_options``), and for 8 kHz input
        the longer ``narrowband_pause_ms``: the VAD misses narrowband fricatives, and a pause
        cut inside a word splits the transcript there."""
        options = detector_options(options)
        if self.input_rate_hz <= NARROWBAND_MAX_HZ and options.narrowband_pause_ms > options.pause_ms:
            pause = min(options.narrowband_pause_ms, options.silence_duration_ms)
            options = options.model_copy(update={"pause_ms": max(pause, options.pause_ms)})
        return options

    def set_input_rate(self, rate_hz: int) -> None:
        if rate_hz != self.input_rate_hz:
            self.input_rate_hz = rate_hz
            self._resampler = StreamResampler(rate_hz, ASR_SAMPLE_RATE_HZ)
            # The pause depends on the rate; the detector's state (a turn in progress) stays.
            self._detector.options = self._detector_options(self.options or VadConfig())

    def set_detection(self, options: VadConfig | None) -> UserTurn | None:
        """Turn detection on (with ``options``) or off; returns a turn it abandoned, if any."""
        if options == self.options:
            return None
        was_on = self.options is not None
        in_speech = self._detector.state != TurnDetector.SILENCE
        self.options = options
        if options is None:
            return self.abandon()
        self._detector = self._new_detector(options)
        if not was_on:
            # Audio that came while detection was off was never analysed and may be gone
            # already: analysis starts at the present, with fresh VAD state.
            self._vad_cursor = self.timeline.end
            self._vad.reset()
            return None
        return self.abandon() if in_speech else None

    # --- audio in ----------------------------------------------------------------------------

    async def append(self, pcm16: np.ndarray, arrived: float) -> list[TurnEvent]:
        if self.options is None and (
                self.timeline.end - self._commit_cursor > self.max_turn_s * ASR_SAMPLE_RATE_HZ):
            raise errors.AudioBufferFull(
                f"more than {self.max_turn_s:g} s of uncommitted audio; commit or clear the buffer",
                param="audio")
        self.timeline.append(self._resampler.process(int16_to_float(pcm16)), arrived)
        events = await self._detect() if self.options is not None else []
        if self.turn is not None and (self.timeline.end - self.turn.start_sample
                                      > self.max_turn_s * ASR_SAMPLE_RATE_HZ):
            if self.options is not None:  # the server ends the turn: it says so, as at a silence
                events.append(SpeechEnded(self.turn, samples_to_ms(self.timeline.end)))
            events.append(self.commit("max_turn"))
        self._trim()
        return events

    async def _detect(self) -> list[TurnEvent]:
        window = self._vad.window_samples
        usable = (self.timeline.end - self._vad_cursor) // window * window
        if usable <= 0:
            return []
        start = self._vad_cursor
        self._vad_cursor += usable
        probabilities = await asyncio.to_thread(self._vad, self.timeline.slice(start, start + usable))
        events: list[TurnEvent] = []
        for i, probability in enumerate(probabilities):
            self._analysed = start + (i + 1) * window
            for vad_event in self._detector.process(float(probability), self._analysed):
                events.extend(self._on_vad_event(vad_event))
            turn = self.turn
            if turn is not None and turn.end_at is not None and self._analysed >= turn.end_at \
                    and self._detector.quiet:
                turn.waited = True
                events.extend(self.end_turn(turn))
        return events

    def _on_vad_event(self, vad_event) -> list[TurnEvent]:
        turn = self.turn
        match vad_event:
            case SpeechStarted(start_sample=start):
                assert self.options is not None  # the VAD runs only with turn detection on
                audio_start = max(start - ms_to_samples(self.options.prefix_padding_ms), self._commit_cursor, 0)
                self.turn = UserTurn(protocol.new_id("item"), audio_start, audio_start)
                return [TurnStarted(self.turn, samples_to_ms(audio_start))]
            case SilenceBegan(end_sample=end) if turn is not None and self.cut_at_pauses:
                turn.draft_end = end
                return [SegmentDraft(turn, self._pieces(turn.segment_start, end))]
            case SilenceBroken() if turn is not None and turn.draft_end is not None:
                turn.draft_end = None
                return [DraftDropped(turn)]
            case SegmentEnded(end_sample=end, speech_end_sample=speech_end, pause=pause) if turn is not None:
                turn.speech_end = self.timeline.arrival_of(speech_end)
                if not self.cut_at_pauses:
                    return []
                drafted = pause and turn.draft_end is not None and turn.draft_end >= speech_end
                turn.draft_end = None
                return [SegmentCut(turn, self._cut(turn, end), pause, drafted=drafted)]
            case SpeechResumed() if turn is not None:
                turn.end_at = None
                return [TurnResumed(turn)]
            case SpeechStopped(speech_end_sample=speech_end) if turn is not None:
                # Audio after the last cut is silence unless speech came after it.
                return [SpeechEnded(turn, samples_to_ms(speech_end)),
                        self._commit(turn, self.timeline.end, "vad", tail=turn.segment_start < speech_end)]
        return []

    def _pieces(self, start: int, end: int) -> list[np.ndarray]:
        """The audio from ``start`` to ``end`` in pieces Whisper's window can take."""
        step = int(MAX_ASR_SEGMENT_S * ASR_SAMPLE_RATE_HZ)
        return [self.timeline.slice(at, min(end, at + step)) for at in range(start, end, step)]

    def _cut(self, turn: UserTurn, end: int) -> list[np.ndarray]:
        pieces = self._pieces(turn.segment_start, end)
        turn.segment_start = max(turn.segment_start, end)
        return pieces

    def end_turn_after(self, turn: UserTurn, wait_ms: int) -> list[TurnEvent]:
        """End ``turn`` once its pause has lasted ``wait_ms`` (from the end of speech, in audio
        time), unless speech resumes first: at once if it has already, else when the audio gets
        there (never while speech is starting: a word in progress is not silence)."""
        if turn is not self.turn or self._detector.state != TurnDetector.PAUSED:
            return []
        turn.end_at = self._detector.last_speech_end + ms_to_samples(wait_ms)
        if self._analysed >= turn.end_at and self._detector.quiet:
            turn.waited = True
            return self.end_turn(turn)
        return []

    def end_turn(self, turn: UserTurn) -> list[TurnEvent]:
        """End ``turn`` at its pause now (semantic_vad judged it complete), as the silence would:
        ``speech_stopped`` + commit. Nothing if it is no longer the paused turn in progress."""
        if turn is not self.turn or self._detector.state != TurnDetector.PAUSED:
            return []
        speech_end = self._detector.last_speech_end
        turn.end_at = None
        self._detector.reset()
        # Audio the detector has not seen yet belongs to whatever comes next.
        return [SpeechEnded(turn, samples_to_ms(speech_end)),
                self._commit(turn, max(self._analysed, turn.segment_start), "vad",
                             tail=turn.segment_start < speech_end)]

    # --- commit, clear -----------------------------------------------------------------------

    def commit(self, reason: str = "commit") -> TurnCommitted:
        """``input_audio_buffer.commit`` (or a turn over ``max_turn_s``): what is buffered
        becomes a turn, speech or not."""
        turn = self.turn
        if turn is None:
            start = self._commit_cursor
            if self.timeline.end - start < ms_to_samples(MIN_COMMIT_MS):
                raise errors.CommitEmpty(
                    f"the input audio buffer holds less than {MIN_COMMIT_MS} ms of audio; nothing to commit")
            turn = UserTurn(protocol.new_id("item"), start, start)
        turn.speech_end = time.perf_counter()
        self._detector.reset()
        return self._commit(turn, self.timeline.end, reason)

    def _commit(self, turn: UserTurn, end: int, reason: str, tail: bool = True) -> TurnCommitted:
        pieces = self._cut(turn, end) if tail else []
        self._commit_cursor = end
        self.turn = None
        return TurnCommitted(turn, pieces, max(end - turn.start_sample, 0) / ASR_SAMPLE_RATE_HZ, reason)

    def abandon(self) -> UserTurn | None:
        """Drop the turn in progress (the work on it is the caller's to cancel)."""
        turn, self.turn = self.turn, None
        return turn

    def clear(self) -> UserTurn | None:
        """``input_audio_buffer.clear``: forget the uncommitted audio and any turn in it."""
        turn = self.abandon()
        self._detector.reset()
        self._commit_cursor = self._vad_cursor = self.timeline.end
        self._vad = self._make_vad()
        return turn

    def _trim(self) -> None:
        keep_from = self._commit_cursor if self.turn is None else self.turn.start_sample
        if self.options is not None:
            keep_from = min(keep_from, self._vad_cursor - ms_to_samples(self.options.prefix_padding_ms))
        self.timeline.trim_before(keep_from)
