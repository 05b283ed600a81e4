"""Turn detection: Silero VAD + TurnDetector on synthesized speech, and on hand-made probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from quillman.audio import int16_to_float
from quillman.config import VadConfig as VadOptions
from quillman.engines.vad import WINDOW_SAMPLES, SileroVad
from quillman.pipeline.vad import (SegmentEnded, SpeechResumed, SpeechStarted, SpeechStopped, TurnDetector,
                                   ms_to_samples, samples_to_ms)

W = WINDOW_SAMPLES


def run_silero(pcm_int16: np.ndarray, options: VadOptions = VadOptions()) -> list[tuple[int, object]]:
    """Feed 16 kHz audio window by window, as a live stream would; (window_end, event) pairs."""
    vad, detector = SileroVad(), TurnDetector(options, W)
    audio = int16_to_float(pcm_int16)
    out = []
    for start in range(0, len(audio) // W * W, W):
        probability = float(vad(audio[start:start + W])[0])
        for event in detector.process(probability, start + W):
            out.append((start + W, event))
    return out


def run_probabilities(probabilities: list[float], options: VadOptions) -> list[tuple[int, object]]:
    detector = TurnDetector(options, W)
    out = []
    for i, p in enumerate(probabilities):
        for event in detector.process(p, (i + 1) * W):
            out.append((i, event))
    return out


def events_of(pairs, kind):
    return [event for _, event in pairs if isinstance(event, kind)]


# --- Silero on synthesized speech ----------------------------------------------------------


@pytest.fixture(scope="module")
def events(paused_speech_16k):
    """Silero + TurnDetector over [silence, phrase A, 400 ms pause, phrase B, 1 s silence]."""
    return run_silero(paused_speech_16k.pcm)


class TestSileroSegmentation:
    TOLERANCE = ms_to_samples(100)

    def test_one_speech_started_near_the_first_word(self, events, paused_speech_16k):
        started = events_of(events, SpeechStarted)
        assert len(started) == 1
        assert abs(started[0].start_sample - paused_speech_16k.phrases[0][0]) <= self.TOLERANCE
        assert isinstance(events[0][1], SpeechStarted)

    def test_inner_pause_closes_a_segment_then_speech_resumes(self, events, paused_speech_16k):
        (a_start, a_end), (b_start, _) = paused_speech_16k.phrases
        pauses = [e for e in events_of(events, SegmentEnded) if e.pause]
        inner = [e for e in pauses if a_end <= e.end_sample <= b_start]
        assert len(inner) == 1, events
        # The cut lies in the pause, after the last speech of phrase A.
        assert abs(inner[0].speech_end_sample - a_end) <= self.TOLERANCE
        assert inner[0].speech_end_sample <= inner[0].end_sample
        resumed = events_of(events, SpeechResumed)
        assert len(resumed) == 1
        assert abs(resumed[0].sample - b_start) <= self.TOLERANCE
        assert inner[0].end_sample < resumed[0].sample + W

    def test_final_speech_stopped_at_the_true_end(self, events, paused_speech_16k):
        stopped = events_of(events, SpeechStopped)
        assert len(stopped) == 1
        assert isinstance(events[-1][1], SpeechStopped)
        true_end = paused_speech_16k.phrases[-1][1]
        assert abs(stopped[0].speech_end_sample - true_end) <= self.TOLERANCE
        # It fires once silence_duration_ms of silence has passed, not before.
        fired_at = events[-1][0]
        assert fired_at - stopped[0].speech_end_sample >= ms_to_samples(VadOptions().silence_duration_ms)

    def test_event_order(self, events):
        kinds = [type(e).__name__ for _, e in events]
        assert kinds[0] == "SpeechStarted"
        assert kinds[-1] == "SpeechStopped"
        assert kinds.index("SpeechResumed") > kinds.index("SegmentEnded")
        assert "SpeechStarted" not in kinds[1:]

    def test_streaming_matches_batched_probabilities(self, paused_speech_16k):
        audio = int16_to_float(paused_speech_16k.pcm)
        audio = audio[: len(audio) // W * W]
        whole = SileroVad()(audio)
        live = SileroVad()
        streamed = np.concatenate([live(audio[i:i + 3 * W]) for i in range(0, len(audio), 3 * W)])
        np.testing.assert_allclose(streamed, whole, atol=1e-4)

    def test_reset_forgets_state(self, paused_speech_16k):
        audio = int16_to_float(paused_speech_16k.pcm)[: 40 * W]
        vad = SileroVad()
        first = vad(audio)
        vad.reset()
        np.testing.assert_allclose(vad(audio), first, atol=1e-5)

    def test_empty_input(self):
        assert len(SileroVad()(np.zeros(0, np.float32))) == 0


@pytest.mark.parametrize("amplitude", [0.0, 0.001, 0.003, 0.01])
def test_no_events_in_silence_or_low_noise(amplitude):
    rng = np.random.default_rng(1234)
    noise = rng.standard_normal(16000 * 3) * amplitude * 32768
    assert run_silero(noise.astype(np.int16)) == []


def test_no_events_in_low_hum():
    t = np.arange(16000 * 3) / 16000
    hum = (0.01 * 32767 * np.sin(2 * np.pi * 50 * t)).astype(np.int16)
    assert run_silero(hum) == []


# --- TurnDetector on hand-made probability sequences -----------------------------------------

OPTS = VadOptions(threshold=0.5, silence_duration_ms=500, pause_ms=192, min_speech_ms=96, max_segment_s=8.0)
PAUSE_WINDOWS = -(-ms_to_samples(192) // W)  # 6
STOP_WINDOWS = -(-ms_to_samples(500) // W)  # 16
MIN_SPEECH_WINDOWS = 3


def test_window_constants():
    assert (PAUSE_WINDOWS, STOP_WINDOWS) == (6, 16)
    assert ms_to_samples(1000) == 16000 and samples_to_ms(16000) == 1000


def test_speech_start_needs_min_speech_ms():
    short = [0.0] * 5 + [0.9] * (MIN_SPEECH_WINDOWS - 1) + [0.0] * 30
    assert run_probabilities(short, OPTS) == []
    enough = [0.0] * 5 + [0.9] * MIN_SPEECH_WINDOWS + [0.0] * 30
    pairs = run_probabilities(enough, OPTS)
    assert [type(e) for _, e in pairs] == [SpeechStarted, SegmentEnded, SpeechStopped]
    started_at, started = pairs[0]
    assert started_at == 5 + MIN_SPEECH_WINDOWS - 1  # confirmed on the last window needed
    assert started.start_sample == 5 * W  # but dated from the first one


def test_longer_min_speech_ms():
    options = VadOptions(min_speech_ms=250)  # 8 windows
    assert run_probabilities([0.9] * 7 + [0.0] * 30, options) == []
    assert isinstance(run_probabilities([0.9] * 8 + [0.0] * 30, options)[0][1], SpeechStarted)


def test_a_dip_resets_the_speech_candidate():
    # Two loud windows, a dip, two loud windows: never 3 in a row.
    assert run_probabilities([0.9, 0.9, 0.2, 0.9, 0.9, 0.2] * 5, OPTS) == []


def test_hysteresis_keeps_speech_between_thresholds():
    # Above threshold - 0.15 (0.35) counts as speech once speech has started.
    probabilities = [0.9] * 4 + [0.4] * 40 + [0.0] * 30
    pairs = run_probabilities(probabilities, OPTS)
    assert [type(e) for _, e in pairs] == [SpeechStarted, SegmentEnded, SpeechStopped]
    assert pairs[-1][1].speech_end_sample == 44 * W
    # ...but 0.4 never starts speech on its own.
    assert run_probabilities([0.4] * 50, OPTS) == []


def test_below_negative_threshold_is_silence():
    pairs = run_probabilities([0.9] * 4 + [0.3] * 40, OPTS)
    assert [type(e) for _, e in pairs] == [SpeechStarted, SegmentEnded, SpeechStopped]
    assert pairs[-1][1].speech_end_sample == 4 * W


def test_pause_then_stop_timing():
    pairs = run_probabilities([0.9] * 10 + [0.0] * 40, OPTS)
    (i_start, start), (i_pause, pause), (i_stop, stop) = pairs
    assert isinstance(pause, SegmentEnded) and pause.pause
    assert i_pause == 10 + PAUSE_WINDOWS - 1
    assert pause.end_sample == (i_pause + 1) * W
    assert pause.speech_end_sample == 10 * W
    assert isinstance(stop, SpeechStopped)
    assert i_stop == 10 + STOP_WINDOWS - 1
    assert stop.speech_end_sample == 10 * W


def test_pause_then_resume_then_stop():
    probabilities = [0.0] * 3 + [0.9] * 10 + [0.0] * 8 + [0.9] * 10 + [0.0] * 20
    pairs = run_probabilities(probabilities, OPTS)
    kinds = [type(e) for _, e in pairs]
    assert kinds == [SpeechStarted, SegmentEnded, SpeechResumed, SegmentEnded, SpeechStopped]
    assert pairs[0][1].start_sample == 3 * W
    first_pause = pairs[1][1]
    assert first_pause.pause and first_pause.speech_end_sample == 13 * W
    assert pairs[2][1].sample == 21 * W  # the first window of the resumed speech
    assert pairs[3][1].speech_end_sample == 31 * W
    assert pairs[4][1].speech_end_sample == 31 * W
    # The second segment starts where the first one was cut.
    assert first_pause.end_sample <= pairs[2][1].sample


def test_short_blip_in_a_pause_is_not_a_resumption():
    # A click (2 windows) inside the pause: no resumption, and it does not delay the end.
    probabilities = [0.9] * 10 + [0.0] * 8 + [0.9] * 2 + [0.0] * 20
    pairs = run_probabilities(probabilities, OPTS)
    assert [type(e) for _, e in pairs] == [SpeechStarted, SegmentEnded, SpeechStopped]
    i_stop, stop = pairs[-1]
    assert stop.speech_end_sample == 10 * W
    assert i_stop == 10 + STOP_WINDOWS - 1


def test_new_turn_after_stop():
    probabilities = ([0.9] * 10 + [0.0] * 20) * 2
    pairs = run_probabilities(probabilities, OPTS)
    kinds = [type(e) for _, e in pairs]
    assert kinds == [SpeechStarted, SegmentEnded, SpeechStopped] * 2
    assert pairs[3][1].start_sample == 30 * W


def test_forced_split_at_max_segment_s():
    options = VadOptions(max_segment_s=2.0)  # 32000 samples = 62.5 windows
    probabilities = [0.9] * 200 + [0.0] * 20
    probabilities[55] = 0.45  # the quietest place before the limit, still speech (> 0.35)
    pairs = run_probabilities(probabilities, options)
    splits = [e for e in events_of(pairs, SegmentEnded) if not e.pause]
    assert splits, pairs
    first = splits[0]
    assert first.end_sample == 56 * W  # cut at the end of the quiet window
    assert first.speech_end_sample <= first.end_sample
    # No segment is longer than max_segment_s; cuts move forward.
    cuts = [0] + [e.end_sample for e in splits]
    assert all(b > a for a, b in zip(cuts, cuts[1:]))
    assert all(b - a <= 2.0 * 16000 + W for a, b in zip(cuts, cuts[1:]))
    # The speech still ends with one pause and one stop.
    assert isinstance(pairs[-1][1], SpeechStopped)
    assert len(events_of(pairs, SpeechStarted)) == 1


def test_forced_splits_move_forward_with_short_max_segment():
    # max_segment_s may be as low as 1 s (config allows it): every cut must still be inside the
    # current segment, never at or before its start, and each segment must be non-empty.
    options = VadOptions(max_segment_s=1.0)
    probabilities = [0.0] * 40 + [0.9] * 150 + [0.0] * 20
    pairs = run_probabilities(probabilities, options)
    starts = events_of(pairs, SpeechStarted)
    splits = [e for e in events_of(pairs, SegmentEnded) if not e.pause]
    assert splits
    cuts = [starts[0].start_sample] + [e.end_sample for e in splits]
    assert all(b > a for a, b in zip(cuts, cuts[1:])), cuts
    # About one split per second of speech, not one per window.
    assert len(splits) <= 150 * W / 16000 + 1


def test_reset_returns_to_silence():
    detector = TurnDetector(OPTS, W)
    for i in range(10):
        detector.process(0.9, (i + 1) * W)
    assert detector.state == TurnDetector.SPEECH
    detector.reset()
    assert detector.state == TurnDetector.SILENCE
    # After a reset nothing is pending: silence gives no events, speech starts a new turn.
    assert detector.process(0.0, 11 * W) == []
    events = [e for i in range(12, 15) for e in detector.process(0.9, i * W)]
    assert [type(e) for e in events] == [SpeechStarted]
