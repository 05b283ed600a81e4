"""TurnResult.underrun_s: playback starvation measured from the audio deltas' arrival times."""

from __future__ import annotations

import base64

import numpy as np

from quillman.client import TurnResult


def delta(received: float, seconds: float, rate: int = 24000) -> dict:
    """An audio delta as RealtimeClient.collect_turn records it."""
    samples = int(seconds * rate)
    pcm = np.zeros(samples, dtype="<i2").tobytes()
    return {"type": "response.output_audio.delta", "delta": base64.b64encode(pcm).decode(),
            "_received": received, "_samples": samples}


def test_audio_that_stays_ahead_never_underruns():
    result = TurnResult(events=[delta(10.0, 1.0), delta(10.5, 1.0), delta(11.9, 1.0)])
    assert result.underrun_s == 0.0


def test_a_late_chunk_is_an_underrun_of_its_lateness():
    # 1 s of audio at t=10, the next chunk only at t=11.3: 0.3 s of silence at the client.
    result = TurnResult(events=[delta(10.0, 1.0), delta(11.3, 1.0)])
    assert abs(result.underrun_s - 0.3) < 1e-6


def test_no_audio_no_underrun():
    assert TurnResult().underrun_s == 0.0
