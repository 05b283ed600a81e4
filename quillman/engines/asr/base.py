"""Speech recognition protocol."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

ASR_SAMPLE_RATE_HZ = 16000


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str | None
    audio_s: float
    inference_ms: float
    # How sure the decoder was of the last words: the least probability it gave any of the last
    # two word tokens (punctuation aside); None where the backend does not say. Whisper finishes
    # a fragment cut at a pause ("What do you think about" -> "What do you think come out?")
    # with a final mark but low probability on the words it made up: the turn decision reads
    # such an ending as unsure (quillman.pipeline.semantic).
    end_confidence: float | None = None


def joined(transcripts: Sequence[Transcript]) -> Transcript:
    """Segments' transcripts as one: the texts in order, the last spoken segment's language and
    ``end_confidence`` (how sure the decoder was of the end of the whole)."""
    spoken = [t for t in transcripts if t.text.strip()]
    return Transcript(
        text=" ".join(t.text.strip() for t in spoken), language=spoken[-1].language if spoken else None,
        audio_s=sum(t.audio_s for t in transcripts), inference_ms=sum(t.inference_ms for t in transcripts),
        end_confidence=spoken[-1].end_confidence if spoken else None)


class SpeechRecognizer(Protocol):
    """``transcribe`` takes mono float32 pcm at 16 kHz; blocking, call it off the event loop."""

    def transcribe(self, pcm: np.ndarray, language: str | None = None) -> Transcript: ...
