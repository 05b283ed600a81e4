"""What every model deployment answers besides inference: warm-up, ping, health."""

from __future__ import annotations

import asyncio
from typing import Any


class ModelDeployment:
    """Mixed into Transcriber / LanguageModel / Speaker; each sets engine, config, load_s, _warm."""

    engine: Any
    config: Any
    load_s: float

    def _warm(self) -> float:
        raise NotImplementedError

    async def warmup(self) -> dict:
        warm_ms = await asyncio.to_thread(self._warm)
        return {"load_s": self.load_s, "warm_ms": warm_ms, "model": self.config.model}

    async def ping(self) -> str:
        return "ok"

    def check_health(self) -> None:
        if self.engine is None:
            raise RuntimeError(f"{type(self).__name__}: engine not loaded")
