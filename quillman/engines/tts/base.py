"""Text-to-speech protocol."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol

import numpy as np


@dataclass(frozen=True)
class AudioChunk:
    pcm: np.ndarray  # int16 mono
    sample_rate_hz: int


class SpeechSynthesizer(Protocol):
    """``synthesize`` is a blocking generator of chunks; iterate it off the event loop."""

    voices: list[str]

    def synthesize(self, text: str, voice: str | None = None) -> Iterator[AudioChunk]: ...
