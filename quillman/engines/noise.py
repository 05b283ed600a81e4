"""Input noise suppression: RNNoise (the ``pyrnnoise`` wheel ships the library and its weights).

RNNoise is a small recurrent network that runs on 10 ms frames of 48 kHz audio, on the CPU, in
about a tenth of real time. The session's audio (pcm16 at the client's rate) is resampled to
48 kHz, denoised frame by frame and resampled back, so the VAD and Whisper see the clean signal.
RNNoise has one model; ``near_field`` (headset) and ``far_field`` (laptop, conference room)
both use it.
"""

from __future__ import annotations

import numpy as np

from quillman.audio import StreamResampler, float_to_int16, int16_to_float

RNNOISE_RATE_HZ = 48000


class NoiseSuppressor:
    """Denoise a live pcm16 stream chunk by chunk; holds back at most one 10 ms frame."""

    def __init__(self, rate_hz: int):
        from pyrnnoise import rnnoise  # its own import loads the shared library

        self._rnnoise = rnnoise
        self._state = rnnoise.create()
        self._frame = rnnoise.FRAME_SIZE
        self._up = StreamResampler(rate_hz, RNNOISE_RATE_HZ)
        self._down = StreamResampler(RNNOISE_RATE_HZ, rate_hz)
        self._pending = np.zeros(0, dtype=np.float32)  # 48 kHz samples short of a whole frame
        self.rate_hz = rate_hz

    def process(self, pcm16: np.ndarray) -> np.ndarray:
        """int16 at ``rate_hz`` in, the denoised int16 out (the same length over the stream)."""
        upsampled = self._up.process(int16_to_float(pcm16))
        pending = np.concatenate([self._pending, upsampled])
        whole = len(pending) // self._frame * self._frame
        self._pending = pending[whole:]
        frames = pending[:whole].reshape(-1, self._frame)
        # RNNoise works on int16-scaled floats; the binding takes int16 frames.
        cleaned = [self._rnnoise.process_mono_frame(self._state, float_to_int16(frame))[0] for frame in frames]
        out = np.concatenate(cleaned) if cleaned else np.zeros(0, dtype=np.int16)
        return float_to_int16(self._down.process(int16_to_float(out)))

    def close(self) -> None:
        if self._state is not None:
            self._rnnoise.destroy(self._state)
            self._state = None

    def __del__(self) -> None:
        self.close()
