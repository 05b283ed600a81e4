"""transformers Whisper backend (GPU profile): Whisper large-v3 in fp16, batched.

The model comes from a local folder or the Hugging Face cache, never from the network; a
CTranslate2 Whisper (the CPU profile's shipped ``tiny.en`` / ``base``, or any CTranslate2 folder)
is converted once into a transformers folder in the cache (ct2_convert.py). Attention
is flash-attn 2 when the package is installed and the model runs in half precision on a GPU,
PyTorch SDPA otherwise. ``transcribe_batch`` decodes many segments in one ``generate`` call; the
Transcriber deployment feeds it through ``@serve.batch`` so segments of concurrent sessions share
one encoder pass (Whisper always encodes a padded 30 s window, however short the segment).

torch and transformers are imported when a recognizer is built, never at module import: the CPU
install has neither.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from quillman.config import AsrConfig
from quillman.engines.asr.base import ASR_SAMPLE_RATE_HZ, Transcript
from quillman.engines.asr.ct2_convert import cached_hf_whisper, is_ct2_whisper_dir
from quillman.engines.asr.faster_whisper import SHIPPED_MODELS, resolve_model_path
from quillman.engines.cache import model_cache_dir
from quillman.engines.gpu import (
    import_optional,
    require_cuda,
    resolve_model_dir,
    staggered_start,
    torch_dtype,
)
from quillman.errors import ConfigError

logger = logging.getLogger(__name__)

_SETTING = "asr.backend 'transformers'"


def resolve_whisper_dir(model: str) -> str:
    """A transformers Whisper folder for ``asr.model``; CTranslate2 ones are converted (cached)."""
    if model in SHIPPED_MODELS or (Path(model).is_dir() and is_ct2_whisper_dir(model)):
        return str(cached_hf_whisper(resolve_model_path(model), model_cache_dir()))
    return resolve_model_dir(model, "asr.model", ("config.json",))


def choose_attn_implementation(requested: str, device: str, half_precision: bool) -> str:
    """``auto``: flash-attn 2 where it can run (installed, CUDA, fp16/bf16), else SDPA."""
    has_flash = importlib.util.find_spec("flash_attn") is not None
    if requested == "flash_attention_2" and not has_flash:
        raise ConfigError(
            "asr.attn_implementation 'flash_attention_2' needs the flash-attn package "
            "(pip install flash-attn --no-build-isolation); set it to 'auto' or 'sdpa'"
        )
    if requested != "auto":
        return requested
    if has_flash and device.startswith("cuda") and half_precision:
        return "flash_attention_2"
    return "sdpa"


class TransformersWhisperRecognizer:
    def __init__(
        self,
        model_dir: str,
        *,
        device: str = "cuda",
        dtype=None,
        attn_implementation: str = "auto",
        language: str | None = "en",
        beam_size: int = 1,
        max_new_tokens: int = 128,
    ):
        torch = import_optional("torch", _SETTING)
        transformers = import_optional("transformers", _SETTING)
        dtype = dtype if dtype is not None else torch_dtype(torch, "auto", device, "asr.compute_type")
        self._torch = torch
        self.device = device
        self.dtype = dtype
        self.attn_implementation = choose_attn_implementation(
            attn_implementation, device, dtype in (torch.float16, torch.bfloat16)
        )
        self._processor = transformers.WhisperProcessor.from_pretrained(model_dir, local_files_only=True)
        self._model = transformers.WhisperForConditionalGeneration.from_pretrained(
            model_dir, dtype=dtype, attn_implementation=self.attn_implementation,
            local_files_only=True,
        ).to(device)
        self._model.eval()
        generation = self._model.generation_config
        self._lang_to_id: dict[str, int] = dict(getattr(generation, "lang_to_id", None) or {})
        self.multilingual = bool(self._lang_to_id) and bool(getattr(generation, "is_multilingual", True))
        self.language = language if self.multilingual else (language or "en")
        self.beam_size = beam_size
        self.max_new_tokens = max_new_tokens
        logger.info(
            "transformers Whisper loaded from %s on %s (%s, attention %s, %s)", model_dir, device,
            str(dtype).removeprefix("torch."), self.attn_implementation,
            "multilingual" if self.multilingual else "single-language",
        )

    @classmethod
    def from_config(cls, config: AsrConfig) -> "TransformersWhisperRecognizer":
        if config.device.startswith("cuda"):
            torch = require_cuda("asr.device", "Transcriber")
        else:
            torch = import_optional("torch", _SETTING)
        import_optional("transformers", _SETTING)
        dtype = torch_dtype(torch, config.compute_type, config.device, "asr.compute_type")
        model_dir = resolve_whisper_dir(config.model)
        staggered_start(config.startup_delay_s, "asr.startup_delay_s")
        return cls(
            model_dir, device=config.device, dtype=dtype,
            attn_implementation=config.attn_implementation, language=config.language,
            beam_size=config.beam_size, max_new_tokens=config.max_new_tokens,
        )

    def transcribe(self, pcm: np.ndarray, language: str | None = None) -> Transcript:
        return self.transcribe_batch([pcm], language)[0]

    def transcribe_batch(self, pcms: Sequence[np.ndarray], language: str | None = None) -> list[Transcript]:
        """One ``generate`` call for all segments (mono float32, 16 kHz); results in input order."""
        start = time.perf_counter()
        clips = [np.asarray(pcm, dtype=np.float32).reshape(-1) for pcm in pcms]
        live = [i for i, clip in enumerate(clips) if clip.size]
        texts = [""] * len(clips)
        languages: list[str | None] = [language or self.language] * len(clips)
        if live:
            decoded, detected = self._decode([clips[i] for i in live], language or self.language)
            for i, text, lang in zip(live, decoded, detected):
                texts[i] = text.strip()
                languages[i] = lang
        elapsed_ms = (time.perf_counter() - start) * 1000
        return [
            Transcript(text=text, language=lang, audio_s=len(clip) / ASR_SAMPLE_RATE_HZ,
                       inference_ms=elapsed_ms)
            for text, lang, clip in zip(texts, languages, clips)
        ]

    def _decode(self, clips: list[np.ndarray], language: str | None) -> tuple[list[str], list[str | None]]:
        torch = self._torch
        features = self._processor.feature_extractor(
            clips, sampling_rate=ASR_SAMPLE_RATE_HZ, return_tensors="pt", return_attention_mask=True,
        )
        input_features = features.input_features.to(self.device, dtype=self.dtype)
        kwargs: dict = {"max_new_tokens": self.max_new_tokens, "num_beams": self.beam_size}
        languages: list[str | None] = [language] * len(clips)
        with torch.inference_mode():
            if self.multilingual:
                if language is None:
                    languages = self._detect_languages(input_features)
                kwargs["task"] = "transcribe"
                if all(lang is not None for lang in languages):
                    kwargs["language"] = languages if len(set(languages)) > 1 else languages[0]
            ids = self._model.generate(
                input_features, attention_mask=features.attention_mask.to(self.device), **kwargs
            )
        texts = self._processor.batch_decode(ids, skip_special_tokens=True)
        return texts, languages

    def _detect_languages(self, input_features) -> list[str | None]:
        detect = getattr(self._model, "detect_language", None)
        if detect is None:
            return [None] * input_features.shape[0]
        id_to_lang = {token_id: token.strip("<|>") for token, token_id in self._lang_to_id.items()}
        lang_ids = detect(input_features).reshape(-1).tolist()
        return [id_to_lang.get(int(token_id)) for token_id in lang_ids]
