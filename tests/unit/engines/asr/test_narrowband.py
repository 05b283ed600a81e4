"""Phone audio in the faster-whisper engine: narrowband detection, routing to the
``asr.narrowband_*`` settings, and the shipped CPU profile's WER on 8 kHz μ-law speech (real
tiny.en / base weights, espeak-ng speech through the session's decode path)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from quillman.audio import resample
from quillman.config import AppConfig
from quillman.engines.asr import faster_whisper as fw
from quillman.engines.asr.base import Transcript

ROOT = Path(__file__).resolve().parents[4]


def test_narrowband_is_8khz_audio_resampled_to_16khz():
    rng = np.random.default_rng(0)
    wide = rng.normal(scale=0.1, size=16000).astype(np.float32)
    assert not fw.is_narrowband(wide)
    phone = resample(resample(wide, 16000, 8000), 8000, 16000)
    assert fw.is_narrowband(phone)
    assert not fw.is_narrowband(np.zeros(16000, np.float32))  # silence: nothing to tell
    assert not fw.is_narrowband(phone[:100])  # too short to tell


class FakeWhisper:
    """Stands in for WhisperModel: the recognizer is built without loading weights."""


def test_narrowband_audio_goes_to_its_own_settings(monkeypatch):
    calls = []

    def fake_fit(self, pcm, language):
        calls.append((self.beam_size, self.encoder_window))
        return Transcript("text", language, len(pcm) / 16000, 1.0)

    monkeypatch.setattr(fw.FasterWhisperRecognizer, "_transcribe_fit", fake_fit)
    plain = fw.FasterWhisperRecognizer("tiny.en", encoder_window="fit", _whisper=FakeWhisper())
    assert plain.narrowband is None  # nothing set: one setting for all audio
    same = fw.FasterWhisperRecognizer("tiny.en", encoder_window="fit", beam_size=5, narrowband_beam_size=5,
                                      _whisper=FakeWhisper())
    assert same.narrowband is None  # the same as the wideband setting
    engine = fw.FasterWhisperRecognizer("tiny.en", encoder_window="fit", beam_size=1, narrowband_beam_size=5,
                                        _whisper=FakeWhisper())
    assert engine.narrowband is not None and engine.narrowband._model is engine._model  # one model
    rng = np.random.default_rng(1)
    wide = rng.normal(scale=0.1, size=32000).astype(np.float32)
    engine.transcribe(wide, "en")
    engine.transcribe(resample(resample(wide, 16000, 8000), 8000, 16000), "en")
    assert calls == [(1, "fit"), (5, "fit")]


@pytest.fixture(scope="module")
def cpu_profile_engine():
    from quillman.engines.loader import load_recognizer

    with open(ROOT / "serve_config.yaml") as f:
        app = yaml.safe_load(f)["applications"][0]["args"]
    config = AppConfig.model_validate(app).asr
    return config, load_recognizer(config.model_copy(update={"cpu_threads": 2}))


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")
def test_phone_audio_is_heard_with_the_cpu_profile(cpu_profile_engine):
    """μ-law 8 kHz speech, sent as a phone call sends it and decoded by the session's path
    (G.711 decode, resampling, Silero VAD segments), then the shipped ASR settings: WER bound.
    Before the narrowband settings and pause, tiny.en greedy heard these at WER ~0.2-0.3."""
    from quillman_bench import asr_bench as ab

    config, engine = cpu_profile_engine
    assert config.narrowband_model or config.narrowband_beam_size  # the profile has phone settings
    assert engine.narrowband is not None
    corpus = ab.build_corpus(["espeak:en-us@130"], ab.SHORT[:4], ab.LONG[1:2])
    errors = words = 0
    for utterance in corpus:
        pcm = ab.prepare(utterance, ab.Condition("pcmu"))
        segments = asyncio.run(ab.session_segments(pcm, ab.Condition("pcmu")))
        assert segments and all(fw.is_narrowband(s) for s in segments)
        text, _ = ab.transcribe_segments(engine, segments)
        e, w = ab.word_errors(utterance.text, text)
        errors, words = errors + e, words + w
    assert errors / words <= 0.2, f"{errors} errors in {words} words"
