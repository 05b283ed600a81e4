"""Engine selection: the loader picks the backend module named in config, imported lazily."""

from __future__ import annotations

import subprocess
import sys

import pytest

from quillman.config import AsrConfig, LlmConfig, TtsConfig
from quillman.engines import loader
from quillman.engines.asr.transformers_whisper import TransformersWhisperRecognizer
from quillman.engines.llm.openai_compat import OpenAICompatibleModel
from quillman.engines.llm.vllm import VllmModel
from quillman.engines.tts.xtts import XttsSynthesizer


@pytest.mark.parametrize(
    ("load", "config", "cls"),
    [
        (loader.load_recognizer, AsrConfig(backend="transformers"), TransformersWhisperRecognizer),
        (loader.load_language_model, LlmConfig(backend="vllm"), VllmModel),
        (loader.load_language_model, LlmConfig(backend="openai"), OpenAICompatibleModel),
        (loader.load_synthesizer, TtsConfig(backend="xtts"), XttsSynthesizer),
    ],
)
def test_loader_picks_the_backend_class(load, config, cls, monkeypatch):
    seen = []
    monkeypatch.setattr(cls, "from_config", classmethod(lambda c, cfg: seen.append((c, cfg)) or "built"))
    assert load(config) == "built"
    assert seen == [(cls, config)]


def test_cpu_backends_do_not_touch_the_gpu_modules(monkeypatch):
    # faster_whisper / llama_cpp / piper are built directly: the GPU classes are never asked.
    for cls in (TransformersWhisperRecognizer, VllmModel, OpenAICompatibleModel, XttsSynthesizer):
        monkeypatch.setattr(cls, "from_config", classmethod(lambda c, cfg: pytest.fail(f"{c} used")))
    import quillman.engines.asr.faster_whisper as fw
    import quillman.engines.llm.llama_batch as lb
    import quillman.engines.llm.llama_cpp as lc
    import quillman.engines.tts.piper as pp

    monkeypatch.setattr(fw, "FasterWhisperRecognizer", lambda **kw: ("fw", kw["model"]))
    monkeypatch.setattr(lb, "BatchedLlamaCpp", lambda path, **kw: ("batched", path.endswith(".gguf")))
    monkeypatch.setattr(lc, "LlamaCppModel", lambda **kw: ("serial", kw["model"].endswith(".gguf")))
    monkeypatch.setattr(pp, "PiperSynthesizer", lambda **kw: ("piper", kw["model"]))
    assert loader.load_recognizer(AsrConfig()) == ("fw", "tiny.en")
    assert loader.load_language_model(LlmConfig()) == ("batched", True)
    assert loader.load_language_model(LlmConfig(scheduler="serial")) == ("serial", True)
    assert loader.load_synthesizer(TtsConfig()) == ("piper", "joe")


def test_gpu_engine_modules_import_without_gpu_packages():
    """Importing an engine module pulls in none of vllm, coqui-tts, torch or transformers."""
    code = (
        "import sys\n"
        "import quillman.engines.asr.transformers_whisper, quillman.engines.llm.vllm\n"
        "import quillman.engines.llm.openai_compat, quillman.engines.tts.xtts, quillman.engines.gpu\n"
        "heavy = [m for m in ('vllm', 'TTS', 'torch', 'transformers', 'flash_attn') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
