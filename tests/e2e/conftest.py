from __future__ import annotations

import numpy as np
import pytest

from quillman.audio import int16_to_float, resample


@pytest.fixture(scope="session")
def recognizer():
    """An ASR engine in the test process, to check that reply audio is real speech."""
    from quillman.engines.asr.faster_whisper import FasterWhisperRecognizer

    return FasterWhisperRecognizer("tiny.en", cpu_threads=1)


@pytest.fixture(scope="session")
def transcribe_reply(recognizer):
    def transcribe(pcm: np.ndarray, sample_rate_hz: int) -> str:
        audio = int16_to_float(resample(pcm, sample_rate_hz, 16000))
        return recognizer.transcribe(audio).text

    return transcribe
