"""The transformers Whisper backend on real weights: the CPU profile's CTranslate2 Whisper base
converted to a transformers folder, transcribing espeak-ng speech.

The conversion is cached between runs (QUILLMAN_CACHE_DIR or ~/.cache/quillman), like the
assembled whisper base; the round trip through ctranslate2's own converter checks the inverse
mapping exactly, int8 dequantization included, on a tiny random Whisper.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
ctranslate2 = pytest.importorskip("ctranslate2")

from quillman.audio import int16_to_float  # noqa: E402
from quillman.config import AsrConfig  # noqa: E402
from quillman.engines.asr import ct2_convert  # noqa: E402
from quillman.engines.asr.ct2_convert import cached_hf_whisper, convert_ct2_whisper  # noqa: E402
from quillman.engines.asr.transformers_whisper import TransformersWhisperRecognizer  # noqa: E402
from quillman.engines.loader import load_recognizer  # noqa: E402
from quillman.errors import ConfigError  # noqa: E402
from quillman_bench.speech import QUESTIONS, espeak, word_error_rate  # noqa: E402
from tiny_whisper import build_tiny_whisper  # noqa: E402

pytestmark = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="needs espeak-ng"
)


def _speech(text: str) -> np.ndarray:
    return int16_to_float(espeak(text, sample_rate_hz=16000))


def _config(model: str, **overrides) -> AsrConfig:
    return AsrConfig(backend="transformers", model=model, device="cpu", compute_type="float32",
                     max_new_tokens=48, **overrides)


def test_shipped_base_detects_the_language_and_transcribes_a_batch():
    """tiny.en runs through the whole graph instead: tests/e2e/test_gpu_engines_on_cpu.py."""
    recognizer = load_recognizer(_config("base", language=None))
    assert isinstance(recognizer, TransformersWhisperRecognizer)
    assert recognizer.multilingual and "<|de|>" in recognizer._lang_to_id
    questions = QUESTIONS[:2]
    transcripts = recognizer.transcribe_batch([_speech(q) for q in questions], None)
    assert [t.language for t in transcripts] == ["en", "en"]
    errors = [word_error_rate(q, t.text) for q, t in zip(questions, transcripts)]
    assert np.mean(errors) <= 0.2, [t.text for t in transcripts]


@pytest.mark.parametrize("quantization", ["int8", "float16"])
def test_round_trip_through_ctranslate2s_converter(tmp_path, quantization):
    """HF -> CTranslate2 (ctranslate2's own converter) -> HF gives back the same weights."""
    hf = tmp_path / "hf"
    hf.mkdir()
    build_tiny_whisper(hf)
    ct2 = tmp_path / "ct2"
    ctranslate2.converters.TransformersConverter(str(hf), copy_files=["tokenizer.json"]).convert(
        str(ct2), quantization=quantization)
    back = convert_ct2_whisper(ct2, tmp_path / "back")
    original = transformers.WhisperForConditionalGeneration.from_pretrained(hf).state_dict()
    restored = transformers.WhisperForConditionalGeneration.from_pretrained(back).state_dict()
    assert set(restored) == set(original)
    for name, weight in original.items():
        # int8: per-row scale 127 / max|w|, so the error is at most half a step of the row's max.
        tolerance = float(weight.abs().max()) / 127 if quantization == "int8" else 1e-3
        if "k_proj.bias" in name:
            continue  # Whisper's k projections have no bias; zeros in both
        assert torch.allclose(restored[name], weight, atol=tolerance), name


def test_conversion_is_cached_and_rejects_other_folders(tmp_path, monkeypatch):
    source = tmp_path / "ct2"
    hf = tmp_path / "hf"
    hf.mkdir()
    build_tiny_whisper(hf)
    ctranslate2.converters.TransformersConverter(str(hf), copy_files=["tokenizer.json"]).convert(str(source))
    first = cached_hf_whisper(source, tmp_path / "cache")
    monkeypatch.setattr(ct2_convert, "convert_ct2_whisper", lambda *a: pytest.fail("converted twice"))
    assert cached_hf_whisper(source, tmp_path / "cache") == first
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [first.name]  # no temp folder left
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "model.bin").write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="not a CTranslate2 Whisper"):
        convert_ct2_whisper(tmp_path / "other", tmp_path / "out")
