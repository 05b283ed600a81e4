"""Synthesized test speech (espeak-ng) and word error rate, for tests and the benchmark.

A different voice from the server's Piper voice, so the ASR is not tested on its own TTS.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from quillman.audio import resample

QUESTIONS = [
    "What is the capital of France?",
    "How many legs does a spider have?",
    "Tell me a fun fact about the moon.",
    "What color is the sky on a clear day?",
    "Can you recommend a good book to read?",
    "Why do cats like to sleep so much?",
    "What is the tallest mountain in the world?",
    "How do I make a cup of tea?",
    "What is your favorite kind of music?",
    "Give me a short tip for staying healthy.",
]


def espeak(text: str, sample_rate_hz: int = 24000, words_per_minute: int = 160) -> np.ndarray:
    """Speak ``text`` with espeak-ng; int16 mono at ``sample_rate_hz``."""
    binary = shutil.which("espeak-ng")
    if binary is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "speech.wav"
        subprocess.run([binary, "-s", str(words_per_minute), "-w", str(path), text],
                       check=True, capture_output=True)
        pcm, rate = sf.read(path, dtype="int16")
    return resample(pcm, rate, sample_rate_hz)


def with_silence(pcm: np.ndarray, sample_rate_hz: int, before_s: float = 0.5,
                 after_s: float = 0.0) -> np.ndarray:
    return np.concatenate([
        np.zeros(int(before_s * sample_rate_hz), dtype=np.int16), pcm,
        np.zeros(int(after_s * sample_rate_hz), dtype=np.int16)])


def _words(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split())


def word_error_rate(reference: str, hypothesis: str) -> float:
    import jiwer

    ref, hyp = _words(reference), _words(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    return float(jiwer.wer(ref, hyp))
