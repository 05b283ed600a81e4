"""The user's turns: VAD on/off, segments, commit, clear."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from quillman import errors
from quillman.config import VadConfig
from quillman.pipeline.turns import (
    DraftDropped,
    SegmentCut,
    SegmentDraft,
    SpeechEnded,
    TurnCommitted,
    TurnStarted,
    TurnTracker,
)

RATE = 16000


class LoudnessVad:
    """A fake streaming VAD: a window is speech when it is loud."""

    window_samples = 512

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, pcm: np.ndarray) -> np.ndarray:
        self.calls += 1
        windows = np.asarray(pcm, dtype=np.float32).reshape(-1, self.window_samples)  # as Silero's
        return (np.abs(windows).mean(axis=1) > 0.05).astype(np.float32)

    def reset(self) -> None:
        pass


def tone(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (np.sin(2 * np.pi * 220 * t) * 12000).astype(np.int16)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), dtype=np.int16)


async def feed(tracker: TurnTracker, pcm: np.ndarray, frame_s: float = 0.02) -> list:
    events = []
    step = int(frame_s * RATE)
    for start in range(0, len(pcm), step):
        events += await tracker.append(pcm[start:start + step], arrived=start / RATE)
    return events


def make_tracker(vad: VadConfig | None = VadConfig(), max_turn_s: float = 60.0) -> TurnTracker:
    return TurnTracker(LoudnessVad, vad, RATE, max_turn_s)


# --- turns ------------------------------------------------------------------------------------


async def test_a_spoken_turn_starts_cuts_at_the_pause_and_commits():
    tracker = make_tracker()
    events = await feed(tracker, np.concatenate([silence(0.3), tone(0.8), silence(0.9)]))
    kinds = [type(e) for e in events]
    assert kinds == [TurnStarted, SegmentDraft, SegmentCut, SpeechEnded, TurnCommitted]
    draft, cut = events[1], events[2]
    assert cut.pause and cut.drafted and sum(len(p) for p in cut.pcm) > 0.8 * RATE
    # The draft is the same speech, cut at the first silence instead of at the pause.
    drafted, whole = np.concatenate(draft.pcm), np.concatenate(cut.pcm)
    assert 0.8 * RATE < len(drafted) < len(whole)
    np.testing.assert_array_equal(drafted, whole[:len(drafted)])
    committed = events[-1]
    assert committed.reason == "vad" and committed.tail == []  # nothing spoken after the cut
    assert tracker.turn is None


async def test_turn_detection_off_then_on_again_analyses_only_new_audio():
    """Regression: the VAD cursor stayed behind while detection was off; re-enabling it sliced
    audio that was already trimmed and the VAD's reshape raised (the socket closed)."""
    tracker = make_tracker()
    assert tracker.set_detection(None) is None
    await feed(tracker, silence(2.0))
    tracker.commit()
    await feed(tracker, silence(1.0))
    tracker.set_detection(VadConfig())
    events = await feed(tracker, np.concatenate([silence(0.1), tone(0.8), silence(0.9)]))
    assert [type(e) for e in events] == [TurnStarted, SegmentDraft, SegmentCut, SpeechEnded, TurnCommitted]


async def test_a_short_silence_inside_speech_drafts_and_drops_the_draft():
    """Silence longer than early_asr_ms but shorter than pause_ms: the draft started at it is
    dropped when speech comes back, and the pause after the next words is drafted anew."""
    tracker = make_tracker(VadConfig(early_asr_ms=64, pause_ms=192))
    events = await feed(tracker, np.concatenate([silence(0.3), tone(0.5), silence(0.12), tone(0.5), silence(0.9)]))
    kinds = [type(e) for e in events]
    assert kinds == [TurnStarted, SegmentDraft, DraftDropped, SegmentDraft, SegmentCut, SpeechEnded, TurnCommitted]
    assert events[4].drafted
    # The kept draft holds all the turn's speech so far (the segment starts with the turn).
    assert len(np.concatenate(events[3].pcm)) > 1.1 * RATE


async def test_no_draft_when_early_asr_is_off_or_not_before_the_pause():
    for options in (VadConfig(early_asr_ms=0), VadConfig(early_asr_ms=192, pause_ms=192)):
        tracker = make_tracker(options)
        events = await feed(tracker, np.concatenate([silence(0.3), tone(0.8), silence(0.9)]))
        assert [type(e) for e in events] == [TurnStarted, SegmentCut, SpeechEnded, TurnCommitted]
        assert not events[1].drafted


async def test_commit_without_vad_and_the_empty_commit():
    tracker = make_tracker(vad=None)
    with pytest.raises(errors.CommitEmpty):
        tracker.commit()
    await feed(tracker, tone(0.5))
    committed = tracker.commit()
    assert committed.reason == "commit" and abs(committed.duration_s - 0.5) < 0.03
    assert sum(len(p) for p in committed.tail) == pytest.approx(0.5 * RATE, abs=400)
    with pytest.raises(errors.CommitEmpty):
        tracker.commit()


async def test_uncommitted_audio_without_vad_is_capped():
    tracker = make_tracker(vad=None, max_turn_s=2.0)
    await feed(tracker, silence(2.0), frame_s=0.5)
    with pytest.raises(errors.AudioBufferFull):
        await feed(tracker, silence(0.6), frame_s=0.5)


async def test_a_turn_over_max_turn_s_is_committed():
    tracker = make_tracker(max_turn_s=2.0)
    events = await feed(tracker, np.concatenate([silence(0.1), tone(3.0)]))
    committed = [e for e in events if isinstance(e, TurnCommitted)]
    assert committed and committed[0].reason == "max_turn"


async def test_clear_forgets_the_turn_and_its_audio():
    tracker = make_tracker()
    await feed(tracker, np.concatenate([silence(0.2), tone(0.5)]))
    assert tracker.turn is not None
    dropped = tracker.clear()
    assert dropped is not None and tracker.turn is None
    with pytest.raises(errors.CommitEmpty):
        tracker.commit()


async def test_turning_detection_off_mid_turn_abandons_it():
    tracker = make_tracker()
    await feed(tracker, np.concatenate([silence(0.2), tone(0.5)]))
    turn = tracker.turn
    assert tracker.set_detection(None) is turn and tracker.turn is None


async def test_the_vad_runs_off_the_event_loop():
    tracker = make_tracker()
    loop_thread = []

    class ThreadCheckingVad(LoudnessVad):
        def __call__(self, pcm):
            import threading

            loop_thread.append(threading.current_thread() is threading.main_thread())
            return super().__call__(pcm)

    tracker = TurnTracker(ThreadCheckingVad, VadConfig(), RATE, 60.0)
    await feed(tracker, silence(0.2))
    assert loop_thread and not any(loop_thread)
    await asyncio.sleep(0)


# --- semantic_vad's short wait: end the turn once the pause has lasted long enough -------------

SEMANTIC = VadConfig(type="semantic_vad")  # the detector's own end is the 4 s cap


async def paused_turn(tracker: TurnTracker) -> list:
    """A second of speech, then silence up to its first pause (the segment is cut)."""
    events = await feed(tracker, np.concatenate([silence(0.3), tone(1.0), silence(0.3)]))
    assert [type(e) for e in events] == [TurnStarted, SegmentDraft, SegmentCut]
    return events


async def test_the_short_wait_ends_the_turn_when_the_pause_reaches_it():
    tracker = make_tracker(SEMANTIC)
    await paused_turn(tracker)
    turn = tracker.turn
    speech_end = tracker._detector.last_speech_end  # noqa: SLF001
    assert tracker.end_turn_after(turn, 600) == []  # ~300 ms of silence so far
    events = await feed(tracker, silence(0.2))
    assert events == [] and tracker.turn is turn
    events = await feed(tracker, silence(0.2))
    assert [type(e) for e in events] == [SpeechEnded, TurnCommitted]
    assert turn.waited and tracker.turn is None
    # Ended in the VAD window that took the pause past 600 ms, not later.
    committed_end = turn.start_sample + round(events[1].duration_s * RATE)
    assert 0 <= committed_end - (speech_end + 600 * RATE // 1000) < 512


async def test_a_wait_that_has_passed_already_ends_the_turn_at_once():
    tracker = make_tracker(SEMANTIC)
    await paused_turn(tracker)
    await feed(tracker, silence(0.5))
    events = tracker.end_turn_after(tracker.turn, 600)
    assert [type(e) for e in events] == [SpeechEnded, TurnCommitted]


async def test_speech_that_resumes_cancels_the_short_wait():
    tracker = make_tracker(SEMANTIC)
    await paused_turn(tracker)
    turn = tracker.turn
    tracker.end_turn_after(turn, 600)
    events = await feed(tracker, np.concatenate([tone(0.5), silence(1.0)]))
    assert not [e for e in events if isinstance(e, TurnCommitted)]  # only the 4 s cap is left
    assert turn.end_at is None and tracker.turn is turn


async def test_the_short_wait_does_not_cut_a_word_that_is_starting():
    """Speech that has begun but is not confirmed yet (min_speech_ms) holds the wait."""
    tracker = make_tracker(SEMANTIC)
    await paused_turn(tracker)
    turn = tracker.turn
    await feed(tracker, silence(0.24))  # ~540 ms of silence
    tracker.end_turn_after(turn, 600)
    events = await feed(tracker, np.concatenate([tone(0.3), silence(0.3)]))
    assert not [e for e in events if isinstance(e, TurnCommitted)]
    assert [type(e) for e in events][0].__name__ == "TurnResumed"


async def _cuts_at_a_gap(rate: int, gap_s: float, vad: VadConfig = VadConfig()) -> int:
    """SegmentCuts of two bursts of tone with a ``gap_s`` gap, sent at ``rate``."""
    def burst(seconds: float) -> np.ndarray:
        t = np.arange(int(seconds * rate)) / rate
        return (np.sin(2 * np.pi * 220 * t) * 12000).astype(np.int16)

    tracker = TurnTracker(LoudnessVad, vad, rate, 60.0)
    pcm = np.concatenate([np.zeros(int(0.2 * rate), np.int16), burst(0.8), np.zeros(int(gap_s * rate), np.int16),
                          burst(0.8), np.zeros(int(0.9 * rate), np.int16)])
    events = []
    step = int(0.02 * rate)
    for start in range(0, len(pcm), step):
        events += await tracker.append(pcm[start:start + step], arrived=start / rate)
    assert sum(isinstance(e, TurnCommitted) for e in events) == 1
    return sum(isinstance(e, SegmentCut) for e in events)


async def test_8khz_input_pauses_longer_before_cutting_a_segment():
    # A 260 ms gap: a pause at 24 kHz (192 ms), not at 8 kHz (narrowband_pause_ms 320), where
    # the VAD's gaps inside words are that long; a real 400 ms pause still cuts.
    assert await _cuts_at_a_gap(24000, 0.26) == 2
    assert await _cuts_at_a_gap(8000, 0.26) == 1
    assert await _cuts_at_a_gap(8000, 0.40) == 2
    assert await _cuts_at_a_gap(8000, 0.26, VadConfig(narrowband_pause_ms=192)) == 2
    # Never beyond the end of turn.
    tracker = TurnTracker(LoudnessVad, VadConfig(silence_duration_ms=250, pause_ms=192), 8000, 60.0)
    assert tracker._detector.options.pause_ms == 250


def test_the_pause_follows_the_input_rate():
    tracker = TurnTracker(LoudnessVad, VadConfig(), 24000, 60.0)
    assert tracker._detector.options.pause_ms == 192
    tracker.set_input_rate(8000)
    assert tracker._detector.options.pause_ms == 320
    tracker.set_input_rate(16000)
    assert tracker._detector.options.pause_ms == 192
