"""The transformers Whisper backend with real loading and generate code on a tiny random Whisper.

Nothing is downloaded: the model is ``WhisperForConditionalGeneration(WhisperConfig(tiny dims))``
saved to a temp folder, with a processor built from a byte-level vocab written there too. Its
transcripts are garbage; what is checked is the plumbing (load, features, batch, decode, order).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from quillman.config import AsrConfig  # noqa: E402
from quillman.engines.asr import transformers_whisper  # noqa: E402
from quillman.engines.asr.base import Transcript  # noqa: E402
from quillman.engines.asr.transformers_whisper import (  # noqa: E402
    TransformersWhisperRecognizer,
    choose_attn_implementation,
)
from quillman.engines.loader import load_recognizer  # noqa: E402
from quillman.errors import ConfigError  # noqa: E402
from tiny_whisper import build_tiny_whisper  # noqa: E402

@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory) -> dict[str, str]:
    """Two tiny models: single-language (like *.en) and multilingual (like large-v3)."""
    single = tmp_path_factory.mktemp("tiny-whisper")
    ids = build_tiny_whisper(single)
    multi = tmp_path_factory.mktemp("tiny-whisper-multi")
    shutil.copytree(single, multi, dirs_exist_ok=True)
    generation = transformers.GenerationConfig.from_pretrained(multi)
    generation.lang_to_id = {"<|en|>": ids["<|en|>"], "<|de|>": ids["<|de|>"]}
    generation.task_to_id = {"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]}
    generation.is_multilingual = True
    generation.no_timestamps_token_id = ids["<|notimestamps|>"]
    generation.prev_sot_token_id = ids["<|startofprev|>"]
    generation.max_length = 64
    generation._from_model_config = False  # else loading rebuilds it from config.json
    generation.save_pretrained(multi)
    return {"single": str(single), "multi": str(multi)}


def _config(model: str, **overrides) -> AsrConfig:
    values = {"backend": "transformers", "model": model, "device": "cpu", "compute_type": "float32",
              "max_new_tokens": 6}
    values.update(overrides)
    return AsrConfig(**values)


@pytest.fixture(scope="module")
def recognizer(tiny_whisper) -> TransformersWhisperRecognizer:
    return load_recognizer(_config(tiny_whisper["single"]))


def _noise(seconds: float, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32)


def test_loader_builds_transformers_recognizer_with_sdpa_on_cpu(recognizer):
    assert isinstance(recognizer, TransformersWhisperRecognizer)
    assert recognizer.attn_implementation == "sdpa"
    assert recognizer.dtype == torch.float32
    assert not recognizer.multilingual


def test_transcribe_returns_a_transcript(recognizer):
    transcript = recognizer.transcribe(_noise(1.0), "en")
    assert isinstance(transcript, Transcript)
    assert isinstance(transcript.text, str)
    assert transcript.language == "en"
    assert transcript.audio_s == pytest.approx(1.0)
    assert transcript.inference_ms > 0


def test_transcribe_batch_keeps_order_and_handles_empty_segments(recognizer):
    clips = [_noise(0.5, 1), np.zeros(0, np.float32), _noise(1.5, 2)]
    batch = recognizer.transcribe_batch(clips, "en")
    assert [t.audio_s for t in batch] == pytest.approx([0.5, 0.0, 1.5])
    assert batch[1].text == ""
    # Same input alone or in a batch: same (garbage) text, so results are not shuffled.
    assert batch[2].text == recognizer.transcribe(clips[2], "en").text


def test_multilingual_model_detects_or_forces_the_language(tiny_whisper):
    multi = load_recognizer(_config(tiny_whisper["multi"], language=None))
    assert multi.multilingual
    detected = multi.transcribe(_noise(1.0), None)
    assert detected.language in ("en", "de")
    forced = multi.transcribe_batch([_noise(0.5), _noise(0.7, 3)], "de")
    assert [t.language for t in forced] == ["de", "de"]


def test_faster_whisper_compute_type_is_a_clear_error(tiny_whisper):
    with pytest.raises(ConfigError, match="asr.compute_type 'int8'"):
        load_recognizer(_config(tiny_whisper["single"], compute_type="int8"))


def test_missing_model_names_the_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="asr.model"):
        load_recognizer(_config(str(tmp_path / "nowhere")))
    with pytest.raises(ConfigError, match="asr.model 'openai/whisper-nonexistent-test-model'"):
        load_recognizer(_config("openai/whisper-nonexistent-test-model"))


def test_cuda_device_without_gpu_names_the_setting(tiny_whisper, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="asr.device needs a CUDA GPU.*num_gpus"):
        load_recognizer(_config(tiny_whisper["single"], device="cuda", compute_type="float16"))


def test_attention_choice(monkeypatch):
    monkeypatch.setattr(transformers_whisper.importlib.util, "find_spec",
                        lambda name: object() if name == "flash_attn" else None)
    assert choose_attn_implementation("auto", "cuda", half_precision=True) == "flash_attention_2"
    assert choose_attn_implementation("auto", "cuda", half_precision=False) == "sdpa"
    assert choose_attn_implementation("auto", "cpu", half_precision=True) == "sdpa"
    assert choose_attn_implementation("eager", "cuda", half_precision=True) == "eager"
    monkeypatch.setattr(transformers_whisper.importlib.util, "find_spec", lambda name: None)
    assert choose_attn_implementation("auto", "cuda", half_precision=True) == "sdpa"
    with pytest.raises(ConfigError, match="asr.attn_implementation"):
        choose_attn_implementation("flash_attention_2", "cuda", half_precision=True)
