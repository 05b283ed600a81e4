"""LLM deployment: streams text deltas (call it with ``handle.options(stream=True)``)."""

from __future__ import annotations

import logging
from typing import AsyncIterator, Callable

from ray import serve

from quillman.config import LlmConfig
from quillman.engines.llm.base import Delta, GenerationRequest, LanguageModel as LanguageModelEngine, Usage
from quillman.deployments.common import ModelDeployment
from quillman.engines.loader import load_language_model
from quillman.engines.warmup import warm_language_model

logger = logging.getLogger(__name__)


@serve.deployment(name="LanguageModel", max_ongoing_requests=8)
class LanguageModel(ModelDeployment):
    section = "llm"

    async def __init__(self, config: LlmConfig,  # Serve allows an async constructor
                       engine_factory: Callable[[LlmConfig], LanguageModelEngine] = load_language_model):
        self.config = LlmConfig.model_validate(config)
        await self._start(engine_factory)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        # Cancellation of this request (barge-in, disconnect) closes the engine stream here.
        stream = self.engine.stream(request)
        try:
            async for delta in stream:
                yield delta
        finally:
            await stream.aclose()

    async def prefill(self, request: GenerationRequest) -> Usage | None:
        """The prompt evaluated into the session's cache, nothing generated (engines with the
        ``prefill`` capability); None where it was not done."""
        if not self.engine.capabilities.prefill:
            return None
        return await self.engine.prefill(request)

    async def scheduler_stats(self) -> dict:
        """The engine's scheduler now (vLLM: running and waiting requests, KV cache use); empty
        for engines that report none."""
        report = getattr(self.engine, "scheduler_stats", None)
        return report() if report is not None else {}

    async def _warm(self) -> float:
        # The engine streams asynchronously (blocking work already runs in its own threads).
        return await warm_language_model(self.engine)
