"""Coqui XTTS-v2 backend (GPU profile) through the maintained ``coqui-tts`` fork (``import TTS``).

Streaming: ``Xtts.inference_stream`` yields audio every ``tts.stream_chunk_size`` GPT tokens, so
the first chunk of a sentence plays long before the sentence is done. A voice is a pair of
conditioning latents (GPT latent + speaker embedding). They are computed once per voice and
cached: at startup for every cloned voice in ``tts.voices`` (name -> reference wav), on first use
for the studio speakers shipped in the model's ``speakers_xtts.pth``.

One stream at a time per model: XTTS's GPT keeps the prompt of the current generation in shared
module state (``gpt_inference.store_prefix_emb``), so two concurrent streams on one model would
corrupt each other. ``synthesize`` holds a lock while its generation runs; other requests to the
replica wait their turn (scale out with more Speaker replicas, not with concurrency).

XTTS-v2 weights are under the Coqui Public Model License (non-commercial); they are read from a
local folder or the Hugging Face cache (``coqui/XTTS-v2``), never downloaded at startup. torch and
coqui-tts are imported when a synthesizer is built, never at module import.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from quillman.audio import float_to_int16
from quillman.config import TtsConfig
from quillman.engines.gpu import import_optional, require_cuda, resolve_model_dir, staggered_start
from quillman.engines.tts.base import AudioChunk
from quillman.errors import ConfigError

logger = logging.getLogger(__name__)

_SETTING = "tts.backend 'xtts'"
_MODEL_FILES = ("config.json", "model.pth", "vocab.json")


def resolve_xtts_dir(model: str) -> str:
    """A folder with config.json, model.pth and vocab.json; coqui's own model names work too."""
    if model.startswith("tts_models/"):
        generic_utils = import_optional("TTS.utils.generic_utils", _SETTING, "coqui-tts")
        folder = Path(generic_utils.get_user_data_dir("tts")) / model.replace("/", "--")
        if not folder.is_dir():
            raise ConfigError(
                f"tts.model {model!r} is not in coqui's model folder ({folder}); download it once "
                "with the `tts` CLI, or set tts.model to a local XTTS-v2 folder or coqui/XTTS-v2"
            )
        model = str(folder)
    return resolve_model_dir(model, "tts.model", _MODEL_FILES)


class XttsSynthesizer:
    def __init__(
        self,
        model: Any,
        *,
        language: str = "en",
        clone_voices: dict[str, str] | None = None,
        stream_chunk_size: int = 20,
        speed: float = 1.0,
        sample_rate_hz: int = 24000,
    ):
        """``model``: a loaded ``TTS.tts.models.xtts.Xtts`` (or anything with its methods)."""
        self._model = model
        self.language = language
        self.stream_chunk_size = stream_chunk_size
        self.speed = speed
        self.sample_rate_hz = sample_rate_hz
        self._latents: dict[str, tuple[Any, Any]] = {}
        self._cache_lock = threading.Lock()
        self._generation_lock = threading.Lock()
        manager = getattr(model, "speaker_manager", None)
        self._studio: dict[str, Any] = dict(getattr(manager, "speakers", None) or {})
        for name, wav in (clone_voices or {}).items():
            if not Path(wav).is_file():
                raise ConfigError(f"tts.voices.{name}: reference wav {wav!r} does not exist")
            # Once per voice, at startup: cloning costs a few hundred ms of GPU time.
            self._latents[name] = tuple(model.get_conditioning_latents(audio_path=[wav]))
            logger.info("XTTS voice %r cloned from %s", name, wav)
        studio = [name for name in self._studio if name not in self._latents]
        self.voices: list[str] = list(clone_voices or {}) + studio
        if not self.voices:
            raise ConfigError(
                "tts.voices is empty and the XTTS model has no studio speakers (speakers_xtts.pth); "
                "add a voice: tts.voices: {name: /path/to/reference.wav}"
            )
        self.default_voice = self.voices[0]

    @classmethod
    def from_config(cls, config: TtsConfig) -> "XttsSynthesizer":
        if config.device.startswith("cuda"):
            require_cuda("tts.device", "Speaker")
        else:
            import_optional("torch", _SETTING)
        xtts_config_module = import_optional("TTS.tts.configs.xtts_config", _SETTING, "coqui-tts")
        xtts_module = import_optional("TTS.tts.models.xtts", _SETTING, "coqui-tts")
        model_dir = resolve_xtts_dir(config.model)
        for name, wav in config.voices.items():
            if not Path(wav).is_file():
                raise ConfigError(f"tts.voices.{name}: reference wav {wav!r} does not exist")
        staggered_start(config.startup_delay_s, "tts.startup_delay_s")
        xtts_config = xtts_config_module.XttsConfig()
        xtts_config.load_json(str(Path(model_dir) / "config.json"))
        model = xtts_module.Xtts(xtts_config)  # init_from_config is deprecated since coqui-tts 0.28
        model.load_checkpoint(xtts_config, checkpoint_dir=model_dir, eval=True)
        model.to(config.device)
        sample_rate_hz = int(getattr(getattr(xtts_config, "audio", None), "output_sample_rate", 24000))
        logger.info("XTTS loaded from %s on %s (%d Hz)", model_dir, config.device, sample_rate_hz)
        return cls(
            model, language=config.language, clone_voices=dict(config.voices),
            stream_chunk_size=config.stream_chunk_size, speed=1.0 / config.length_scale,
            sample_rate_hz=sample_rate_hz,
        )

    def latents(self, voice: str | None) -> tuple[Any, Any]:
        """Conditioning latents of ``voice`` (unknown or None: the default voice), cached."""
        name = voice if voice in self._latents or voice in self._studio else self.default_voice
        if voice is not None and name != voice:
            logger.warning("XTTS has no voice %r; using %r", voice, name)
        cached = self._latents.get(name)
        if cached is None:
            with self._cache_lock:
                cached = self._latents.get(name)
                if cached is None:
                    speaker = self._studio[name]
                    cached = (self._on_device(speaker["gpt_cond_latent"]),
                              self._on_device(speaker["speaker_embedding"]))
                    self._latents[name] = cached
        return cached

    def _on_device(self, tensor: Any) -> Any:
        device = getattr(self._model, "device", None)
        return tensor.to(device) if device is not None and hasattr(tensor, "to") else tensor

    def synthesize(self, text: str, voice: str | None = None) -> Iterator[AudioChunk]:
        gpt_cond_latent, speaker_embedding = self.latents(voice)
        # Held across the yields until the stream ends or is closed (barge-in closes it).
        with self._generation_lock:
            chunks = self._model.inference_stream(
                text, self.language, gpt_cond_latent, speaker_embedding,
                stream_chunk_size=self.stream_chunk_size, speed=self.speed,
                enable_text_splitting=False,
            )
            try:
                for chunk in chunks:
                    wav = chunk.detach().float().cpu().numpy() if hasattr(chunk, "detach") else chunk
                    pcm = float_to_int16(np.asarray(wav, dtype=np.float32).reshape(-1))
                    if pcm.size:
                        yield AudioChunk(pcm=pcm, sample_rate_hz=self.sample_rate_hz)
            finally:
                # Closed early: stop the GPT generator now rather than at garbage collection.
                close = getattr(chunks, "close", None)
                if close is not None:
                    close()
