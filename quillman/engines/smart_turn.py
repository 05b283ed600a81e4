"""Smart Turn v3.2 (Pipecat's end-of-turn model, ONNX) on the audio of a turn so far.

Given the last 8 s of a user's speech at 16 kHz, it says how likely the speaker has finished
(intonation, rhythm, a trailing "um" ...). The weights ship inside the ``pipecat-ai`` wheel
(BSD-2-Clause), which is installed without its dependencies: this module never imports
pipecat, it only reads the file. Features are Whisper's 80-bin log-mel over an 8 s window,
as ``transformers.WhisperFeatureExtractor(chunk_length=8)`` computes them; faster-whisper's
numpy extractor computes the same thing, so it is reused here.

Each call takes ~50-70 ms on one core: run it off the event loop (``asyncio.to_thread``).
The ONNX session is per process and single-threaded (``threads``), like Silero's.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import threading
from pathlib import Path

import numpy as np

SAMPLE_RATE_HZ = 16000
WINDOW_S = 8
_WINDOW_SAMPLES = WINDOW_S * SAMPLE_RATE_HZ
logger = logging.getLogger(__name__)
_MODEL_FILE = "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"


def model_path() -> Path:
    """The .onnx inside the installed ``pipecat-ai`` distribution (not imported)."""
    try:
        distribution = importlib.metadata.distribution("pipecat-ai")
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            "the Smart Turn model comes with the pipecat-ai wheel: "
            "pip install --no-deps 'pipecat-ai>=1.14'") from None
    path = Path(str(distribution.locate_file(_MODEL_FILE)))
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed pipecat-ai")
    return path


@functools.lru_cache(maxsize=None)
def _session(threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    options.intra_op_num_threads = threads
    options.enable_cpu_mem_arena = False
    options.log_severity_level = 4
    return onnxruntime.InferenceSession(str(model_path()), providers=["CPUExecutionProvider"],
                                        sess_options=options)


@functools.lru_cache(maxsize=1)
def _features():
    from faster_whisper.feature_extractor import FeatureExtractor

    return FeatureExtractor(feature_size=80, sampling_rate=SAMPLE_RATE_HZ, chunk_length=WINDOW_S)


class SmartTurn:
    """``probability(pcm)``: chance that the utterance ending at ``pcm``'s end is complete."""

    def __init__(self, threads: int = 1):
        self._session = _session(threads)
        self._lock = threading.Lock()  # one ONNX run at a time: the thread budget is ``threads``

    def probability(self, pcm: np.ndarray) -> float:
        """``pcm``: 16 kHz float32 speech of the turn (the last 8 s count, older is ignored)."""
        window = np.asarray(pcm[-_WINDOW_SAMPLES:], dtype=np.float32)
        # Left-padded with silence to 8 s, normalized to zero mean and unit variance (as trained).
        window = np.pad(window, (_WINDOW_SAMPLES - len(window), 0))
        window = (window - window.mean()) / np.sqrt(window.var() + 1e-7)
        features = _features()(window, padding=0)  # (80, 800): the last STFT frame dropped, as transformers does
        with self._lock:
            out = self._session.run(None, {"input_features": features[None].astype(np.float32)})
        return float(np.asarray(out[0]).reshape(-1)[0])


def load_smart_turn(threads: int = 1) -> SmartTurn | None:
    """The model, warmed up (the first ONNX run is slower), or None where pipecat-ai is not
    installed: then ``semantic_vad`` is refused and server VAD stays available."""
    try:
        model = SmartTurn(threads)
    except FileNotFoundError as exc:
        logger.warning("semantic_vad is unavailable: %s", exc)
        return None
    model.probability(np.zeros(SAMPLE_RATE_HZ, dtype=np.float32))
    return model
