"""Silero VAD (v6 ONNX, shipped inside faster-whisper) run as a stream.

faster-whisper's own wrapper resets the recurrent state on every call; a live stream needs the
LSTM state and the 64-sample context carried from one window to the next, which is what this
class keeps per session. The ONNX session itself is shared by all sessions of a process.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

WINDOW_SAMPLES = 512  # 32 ms: the window Silero is trained on at 16 kHz
_CONTEXT_SAMPLES = 64


def model_path() -> Path:
    import faster_whisper

    return Path(faster_whisper.__file__).parent / "assets" / "silero_vad_v6.onnx"


@functools.lru_cache(maxsize=1)
def _session():
    import onnxruntime

    path = model_path()
    options = onnxruntime.SessionOptions()
    options.inter_op_num_threads = 1
    options.intra_op_num_threads = 1
    options.enable_cpu_mem_arena = False
    options.log_severity_level = 4
    return onnxruntime.InferenceSession(
        str(path), providers=["CPUExecutionProvider"], sess_options=options
    )


class SileroVad:
    """Speech probability per 512-sample window of 16 kHz float32 audio."""

    window_samples = WINDOW_SAMPLES

    def __init__(self) -> None:
        self._session = _session()
        self.reset()

    def reset(self) -> None:
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(_CONTEXT_SAMPLES, dtype=np.float32)

    def __call__(self, pcm: np.ndarray) -> np.ndarray:
        if len(pcm) == 0:
            return np.zeros(0, dtype=np.float32)
        windows = np.asarray(pcm, dtype=np.float32).reshape(-1, WINDOW_SAMPLES)
        contexts = np.concatenate([self._context[None, :], windows[:-1, -_CONTEXT_SAMPLES:]])
        batch = np.concatenate([contexts, windows], axis=1)
        out, self._h, self._c = self._session.run(
            None, {"input": batch, "h": self._h, "c": self._c}
        )
        self._context = windows[-1, -_CONTEXT_SAMPLES:].copy()
        return np.asarray(out, dtype=np.float32).reshape(-1)
