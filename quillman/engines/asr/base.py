"""Speech recognition protocol."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

ASR_SAMPLE_RATE_HZ = 16000


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str | None
    audio_s: float
    inference_ms: float


class SpeechRecognizer(Protocol):
    """``transcribe`` takes mono float32 pcm at 16 kHz; blocking, call it off the event loop."""

    def transcribe(self, pcm: np.ndarray, language: str | None = None) -> Transcript: ...
