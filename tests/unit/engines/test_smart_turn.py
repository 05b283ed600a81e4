"""Smart Turn v3.2 on CPU: the model file from the pipecat-ai wheel, Whisper features as trained."""

from __future__ import annotations

import numpy as np
import pytest

from quillman.engines import smart_turn


def test_features_match_transformers_whisper_feature_extractor():
    """Pipecat computes them with transformers' extractor (chunk_length=8); ours reuse
    faster-whisper's numpy one. Same window, same normalization, same numbers."""
    transformers = pytest.importorskip("transformers")
    rng = np.random.default_rng(0)
    pcm = (rng.standard_normal(3 * smart_turn.SAMPLE_RATE_HZ) * 0.1).astype(np.float32)
    window = np.pad(pcm, (8 * smart_turn.SAMPLE_RATE_HZ - len(pcm), 0))
    reference = transformers.WhisperFeatureExtractor(chunk_length=8)(
        window, sampling_rate=16000, return_tensors="np", padding="max_length", max_length=128000,
        truncation=True, do_normalize=True).input_features[0]
    normalized = (window - window.mean()) / np.sqrt(window.var() + 1e-7)
    ours = smart_turn._features()(normalized, padding=0)
    assert ours.shape == reference.shape == (80, 800)
    assert np.abs(ours - reference).max() < 1e-3


def test_probability_of_short_and_long_audio():
    model = smart_turn.load_smart_turn()
    assert model is not None, "pipecat-ai (the model file) is not installed"
    t = np.arange(10 * smart_turn.SAMPLE_RATE_HZ) / smart_turn.SAMPLE_RATE_HZ
    voiced = (0.3 * np.sin(2 * np.pi * 180 * t) * (np.sin(2 * np.pi * 3 * t) > 0)).astype(np.float32)
    for pcm in (voiced[:8000], voiced):  # shorter than the 8 s window (padded), longer (cut)
        p = model.probability(pcm)
        assert 0.0 <= p <= 1.0


def test_a_missing_model_file_makes_semantic_vad_unavailable(monkeypatch):
    def missing():
        raise FileNotFoundError("no pipecat-ai")

    monkeypatch.setattr(smart_turn, "model_path", missing)
    smart_turn._session.cache_clear()
    try:
        assert smart_turn.load_smart_turn(threads=3) is None
    finally:
        smart_turn._session.cache_clear()
