"""LLM deployment: streams text deltas (call it with ``handle.options(stream=True)``)."""

from __future__ import annotations

import logging
from typing import AsyncIterator

from ray import serve

from quillman.config import LlmConfig
from quillman.engines.llm.base import GenerationParams, Message
from quillman.deployments.common import ModelDeployment
from quillman.engines.loader import load_language_model, load_timed
from quillman.engines.warmup import warm_language_model

logger = logging.getLogger(__name__)

@serve.deployment(name="LanguageModel", max_ongoing_requests=8)
class LanguageModel(ModelDeployment):
    async def __init__(self, config: LlmConfig):  # Serve allows an async constructor
        self.config = LlmConfig.model_validate(config)
        self.engine, self.load_s = load_timed(load_language_model, self.config)
        await self.warmup()
        logger.info("LanguageModel ready: load %.2f s, warm-up %.0f ms", self.load_s, self.warm_ms)

    async def generate(self, messages: list[Message], params: GenerationParams) -> AsyncIterator[str]:
        # Cancellation of this request (barge-in, disconnect) closes the engine stream here.
        stream = self.engine.stream(messages, params)
        try:
            async for delta in stream:
                yield delta
        finally:
            await stream.aclose()

    async def warmup(self) -> dict:
        self.warm_ms = await warm_language_model(self.engine)
        return {"load_s": self.load_s, "warm_ms": self.warm_ms, "model": self.config.model}
