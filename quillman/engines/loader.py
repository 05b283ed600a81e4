"""Build the engine named in config; backends are imported lazily (GPU packages are optional)."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

from quillman.config import AsrConfig, LlmConfig, TtsConfig
from quillman.engines.asr.base import SpeechRecognizer
from quillman.engines.llm.base import Capabilities, LanguageModel
from quillman.engines.tts.base import SpeechSynthesizer


C = TypeVar("C")
E = TypeVar("E")


def load_timed(load: Callable[[C], E], config: C) -> tuple[E, float]:
    """``load(config)`` and how long it took in seconds (reported by /prewarm)."""
    start = time.perf_counter()
    engine = load(config)
    return engine, round(time.perf_counter() - start, 3)


def load_recognizer(config: AsrConfig) -> SpeechRecognizer:
    if config.backend == "faster_whisper":
        from quillman.engines.asr.faster_whisper import FasterWhisperRecognizer

        return FasterWhisperRecognizer(
            model=config.model, device=config.device, compute_type=config.compute_type,
            cpu_threads=config.cpu_threads, beam_size=config.beam_size, language=config.language,
            encoder_window=config.encoder_window, min_window_s=config.min_window_s,
            narrowband_model=config.narrowband_model, narrowband_beam_size=config.narrowband_beam_size,
            narrowband_encoder_window=config.narrowband_encoder_window,
        )
    from quillman.engines.asr.transformers_whisper import TransformersWhisperRecognizer

    return TransformersWhisperRecognizer.from_config(config)


def language_model_class(config: LlmConfig) -> type:
    """The engine class ``config`` names, without loading it (its module imports no weights
    and no optional GPU package)."""
    if config.backend == "llama_cpp":
        if config.scheduler == "serial":
            from quillman.engines.llm.llama_cpp import LlamaCppModel

            return LlamaCppModel
        from quillman.engines.llm.llama_batch import BatchedLlamaCpp

        return BatchedLlamaCpp
    if config.backend == "vllm":
        from quillman.engines.llm.vllm import VllmModel

        return VllmModel
    from quillman.engines.llm.openai_compat import OpenAICompatibleModel

    return OpenAICompatibleModel


def language_model_capabilities(config: LlmConfig) -> Capabilities:
    """What the configured engine honours of a request: the ingress asks this once, so a
    session refuses what the engine cannot do before any request reaches it."""
    return language_model_class(config).capabilities


def load_language_model(config: LlmConfig) -> LanguageModel:
    if config.backend == "llama_cpp":
        from quillman.engines.llm.llama_cpp import load_llama_cpp

        return load_llama_cpp(config)
    if config.backend == "vllm":
        from quillman.engines.llm.vllm import VllmModel

        return VllmModel.from_config(config)
    from quillman.engines.llm.openai_compat import OpenAICompatibleModel

    return OpenAICompatibleModel.from_config(config)


def load_synthesizer(config: TtsConfig) -> SpeechSynthesizer:
    if config.backend == "piper":
        from quillman.engines.tts.piper import PiperSynthesizer

        return PiperSynthesizer(
            model=config.model, threads=config.threads, length_scale=config.length_scale
        )
    from quillman.engines.tts.xtts import XttsSynthesizer

    return XttsSynthesizer.from_config(config)
