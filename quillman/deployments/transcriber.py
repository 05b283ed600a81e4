"""ASR deployment: a thin shim that runs the recognizer off the event loop."""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
from ray import serve

from quillman.config import AsrConfig
from quillman.engines.asr.base import ASR_SAMPLE_RATE_HZ, Transcript
from quillman.engines.loader import load_recognizer

logger = logging.getLogger(__name__)


@serve.deployment(name="Transcriber", max_ongoing_requests=4)
class Transcriber:
    def __init__(self, config: AsrConfig):
        self.config = AsrConfig.model_validate(config)
        start = time.perf_counter()
        self.engine = load_recognizer(self.config)
        self.load_s = round(time.perf_counter() - start, 3)
        self.warm_ms = self._warm()
        logger.info("Transcriber ready: load %.2f s, warm-up %.0f ms", self.load_s, self.warm_ms)

    def _warm(self) -> float:
        start = time.perf_counter()
        self.engine.transcribe(np.zeros(ASR_SAMPLE_RATE_HZ // 2, dtype=np.float32), self.config.language)
        return round((time.perf_counter() - start) * 1000, 1)

    async def transcribe(self, pcm: np.ndarray, language: str | None = None) -> Transcript:
        return await asyncio.to_thread(self.engine.transcribe, pcm, language or self.config.language)

    async def warmup(self) -> dict:
        warm_ms = await asyncio.to_thread(self._warm)
        return {"load_s": self.load_s, "warm_ms": warm_ms, "model": self.config.model}

    async def ping(self) -> str:
        return "ok"

    def check_health(self) -> None:
        if self.engine is None:
            raise RuntimeError("ASR engine not loaded")
