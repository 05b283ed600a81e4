"""TTS deployment: streams int16 pcm chunks at the rate the session asks for."""

from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator, Callable

import numpy as np
from ray import serve

from quillman.aio import iterate_in_thread
from quillman.audio import resample
from quillman.config import TtsConfig
from quillman.deployments.common import ModelDeployment
from quillman.engines.loader import load_synthesizer
from quillman.engines.tts.base import SpeechSynthesizer
from quillman.engines.warmup import warm_synthesizer

logger = logging.getLogger(__name__)


@serve.deployment(name="Speaker", max_ongoing_requests=4)
class Speaker(ModelDeployment):
    section = "tts"

    async def __init__(self, config: TtsConfig,  # Serve allows an async constructor
                       engine_factory: Callable[[TtsConfig], SpeechSynthesizer] = load_synthesizer):
        self.config = TtsConfig.model_validate(config)
        await self._start(engine_factory)

    async def _warm(self) -> float:
        return await asyncio.to_thread(warm_synthesizer, self.engine)

    async def synthesize(self, text: str, voice: str, sample_rate_hz: int) -> AsyncIterator[np.ndarray]:
        def chunks():
            for chunk in self.engine.synthesize(text, voice):
                yield resample(chunk.pcm, chunk.sample_rate_hz, sample_rate_hz)

        stream = iterate_in_thread(chunks)
        try:
            async for pcm in stream:
                yield pcm
        finally:
            await stream.aclose()

    async def voices(self) -> list[str]:
        return list(self.engine.voices)
