"""Synthesized test speech (espeak-ng) and word error rate, for tests and the benchmark.

A different voice from the server's Piper voice, so the ASR is not tested on its own TTS.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from quillman.audio import resample

# Spoken by espeak-ng (en-us, 130 wpm) these transcribe cleanly with Whisper tiny.en, so the
# benchmark's WER measures the pipeline (segmentation, resampling), not espeak's diction.
QUESTIONS = [
    "What is the capital of France?",
    "How many legs does a spider have?",
    "What color is the sky on a clear day?",
    "How many days are in a week?",
    "Why is the sea salty?",
    "Why do cats like to sleep so much?",
    "How do I make a cup of tea?",
    "What is your favorite kind of music?",
    "Where do penguins live?",
    "What should I cook for dinner tonight?",
]


def espeak(text: str, sample_rate_hz: int = 24000, words_per_minute: int = 130,
           voice: str = "en-us", pitch: int | None = None) -> np.ndarray:
    """Speak ``text`` with espeak-ng; int16 mono at ``sample_rate_hz`` (``pitch`` 0-99)."""
    binary = shutil.which("espeak-ng")
    if binary is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "speech.wav"
        pitch_args = [] if pitch is None else ["-p", str(pitch)]
        subprocess.run([binary, "-v", voice, "-s", str(words_per_minute), *pitch_args, "-w", str(path), text],
                       check=True, capture_output=True)
        pcm, rate = sf.read(path, dtype="int16")
    return resample(pcm, rate, sample_rate_hz)


def with_silence(pcm: np.ndarray, sample_rate_hz: int, before_s: float = 0.5,
                 after_s: float = 0.0) -> np.ndarray:
    return np.concatenate([
        np.zeros(int(before_s * sample_rate_hz), dtype=np.int16), pcm,
        np.zeros(int(after_s * sample_rate_hz), dtype=np.int16)])


def _words(text: str) -> str:
    # Apostrophes split words ("L'Alma" ~ "El Alma"); punctuation is not speech.
    return " ".join(re.sub(r"[^a-z0-9 ]+", " ", text.lower()).split())


def word_error_rate(reference: str, hypothesis: str) -> float:
    import jiwer

    ref, hyp = _words(reference), _words(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    return float(jiwer.wer(ref, hyp))


@functools.lru_cache(maxsize=64)
def spoken_question(text: str, sample_rate_hz: int = 24000) -> np.ndarray:
    """A question as a mic would give it: espeak-ng speech after a little silence (cached)."""
    return with_silence(espeak(text, sample_rate_hz), sample_rate_hz, before_s=0.4)


def word_recall(reference: str, hypothesis: str) -> float:
    """Share of the reference's words (3+ letters) that occur in the hypothesis."""
    ref = [w for w in _words(reference).split() if len(w) >= 3]
    if not ref:
        return 1.0
    heard = set(_words(hypothesis).split())
    return sum(w in heard for w in ref) / len(ref)


# --- several voices (quillman bench asr) ----------------------------------------------------------

def piper_speech(text: str, sample_rate_hz: int = 24000, model: str = "joe",
                 length_scale: float = 1.0) -> np.ndarray:
    """Speak ``text`` with a Piper voice (the server's own TTS engine); int16 at ``sample_rate_hz``."""
    synthesizer = _piper(model, length_scale)
    chunks = list(synthesizer.synthesize(text))
    pcm = np.concatenate([c.pcm for c in chunks]) if chunks else np.zeros(0, dtype=np.int16)
    return resample(pcm, chunks[0].sample_rate_hz if chunks else sample_rate_hz, sample_rate_hz)


@functools.lru_cache(maxsize=4)
def _piper(model: str, length_scale: float):
    from quillman.engines.tts.piper import PiperSynthesizer

    return PiperSynthesizer(model=model, threads=1, length_scale=length_scale)


def speak(text: str, voice: str, sample_rate_hz: int = 24000) -> np.ndarray:
    """``text`` in ``voice``: ``espeak:<espeak-ng voice>[@<words per minute>]`` (e.g.
    ``espeak:en-us+f3@150``) or ``piper:<model>[@<length scale>]`` (e.g. ``piper:joe``)."""
    engine, _, spec = voice.partition(":")
    name, _, speed = spec.partition("@")
    if engine == "espeak":
        return espeak(text, sample_rate_hz, words_per_minute=int(speed or 130), voice=name or "en-us")
    if engine == "piper":
        return piper_speech(text, sample_rate_hz, model=name or "joe", length_scale=float(speed or 1.0))
    raise ValueError(f"voice {voice!r}: want espeak:<voice>[@wpm] or piper:<model>[@length_scale]")
