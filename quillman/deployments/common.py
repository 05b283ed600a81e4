"""What every model deployment does besides inference: start up, warm up, ping, health.

A model deployment is a shim over an engine: the engine comes from an ``engine_factory``
(``config -> engine``; the loaders of :mod:`quillman.engines.loader` in production, fakes in
tests). :meth:`ModelDeployment._start` builds it in a worker thread (loading blocks for seconds
to minutes and must not stall the replica's event loop), warms it up, and bounds both by the
stage's ``startup_timeout_s``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, ClassVar

from quillman.engines.loader import load_timed
from quillman.errors import StartupTimeoutError
from quillman.logs import log_to_console

logger = logging.getLogger(__name__)


class ModelDeployment:
    """Mixed into Transcriber / LanguageModel / Speaker; each sets ``config``, ``section`` and
    ``_warm``, and calls ``await self._start(engine_factory)`` from its async constructor."""

    section: ClassVar[str]  # the config section, for messages: "asr", "llm", "tts"
    engine: Any = None
    config: Any
    load_s: float
    warm_ms: float

    async def _warm(self) -> float:
        """One tiny inference through the engine (:mod:`quillman.engines.warmup`); its ms."""
        raise NotImplementedError

    def _ready_note(self) -> str:
        """Extra words for the "ready" log line."""
        return ""

    async def _start(self, engine_factory: Callable[[Any], Any]) -> None:
        """Load the engine with ``engine_factory(self.config)`` off the event loop, warm it up,
        store ``load_s`` / ``warm_ms`` and log them, all within ``config.startup_timeout_s``.

        On timeout: :class:`StartupTimeoutError` naming the deployment, what it was doing and the
        setting to raise. (A load still running in its thread cannot be stopped; Serve replaces
        the replica whose constructor failed, and the thread goes with the process.)
        """
        log_to_console()
        name = type(self).__name__
        timeout_s = self.config.startup_timeout_s
        phase = "loading the engine"

        async def load_and_warm() -> None:
            nonlocal phase
            self.engine, self.load_s = await asyncio.to_thread(load_timed, engine_factory, self.config)
            phase = "warming up the engine"
            self.warm_ms = await self._warm()

        # asyncio.wait, not wait_for: a TimeoutError of the engine's own stays that error.
        task = asyncio.ensure_future(load_and_warm())
        try:
            done, _ = await asyncio.wait({task}, timeout=timeout_s)
        finally:
            task.cancel()  # a no-op once done; stops the warm-up (a thread runs on, see above)
        if not done:
            raise StartupTimeoutError(
                f"{name} did not start within {timeout_s:g} s ({self.section}.startup_timeout_s): "
                f"still {phase} ({self.config.model}); raise {self.section}.startup_timeout_s if it "
                "needs longer, or run `quillman doctor` on the server to see why")
        task.result()  # the load's or the warm-up's own error, if any
        logger.info("%s ready: load %.2f s, warm-up %.0f ms%s", name, self.load_s, self.warm_ms,
                    self._ready_note())

    async def warmup(self) -> dict:
        self.warm_ms = await self._warm()
        return {"load_s": self.load_s, "warm_ms": self.warm_ms, "model": self.config.model}

    async def ping(self) -> str:
        return "ok"

    def check_health(self) -> None:
        if self.engine is None:
            raise RuntimeError(f"{type(self).__name__}: engine not loaded")
