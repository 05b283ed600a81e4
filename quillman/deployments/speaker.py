"""TTS deployment: streams int16 pcm chunks at the rate the session asks for."""

from __future__ import annotations

import asyncio
import contextlib
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
from quillman.priority import is_due, node_priority
from quillman.scheduling import DeadlineGate, QueueWait

logger = logging.getLogger(__name__)


@serve.deployment(name="Speaker", max_ongoing_requests=8)
class Speaker(ModelDeployment):
    section = "tts"

    async def __init__(self, config: TtsConfig,  # Serve allows an async constructor
                       engine_factory: Callable[[TtsConfig], SpeechSynthesizer] = load_synthesizer):
        self.config = TtsConfig.model_validate(config)
        # Sentences queue here (max_ongoing_requests is above the gate's capacity) so that the
        # replica, not arrival order, decides which runs next: earliest deadline first.
        self._gate = DeadlineGate(self.config.max_concurrent, lead_s=self.config.lead_s)
        self._priority = node_priority() if self.config.node_priority else None
        await self._start(engine_factory)

    async def _warm(self) -> float:
        return await asyncio.to_thread(warm_synthesizer, self.engine)

    async def synthesize(self, text: str, voice: str, sample_rate_hz: int,
                         deadline: float | None = None) -> AsyncIterator[QueueWait | np.ndarray]:
        """A :class:`QueueWait` (time spent behind more urgent sentences), then int16 chunks."""
        def chunks():
            for chunk in self.engine.synthesize(text, voice):
                yield resample(chunk.pcm, chunk.sample_rate_hz, sample_rate_hz)

        critical = deadline is None or is_due(deadline)
        held_s = 0.0
        if not critical and self._priority is not None:
            # A later sentence: another turn's first audio goes first, until this one is due
            # soon enough that its playback would otherwise starve.
            held_s = await self._priority.yield_while_busy(until=deadline - self.config.lead_s / 2)
        async with self._gate.slot(deadline) as waited_s:
            yield QueueWait(ms=round((waited_s + held_s) * 1000, 1))
            stream = iterate_in_thread(chunks)
            with self._priority.critical() if critical and self._priority else contextlib.nullcontext():
                try:
                    async for pcm in stream:
                        yield pcm
                finally:
                    await stream.aclose()

    async def voices(self) -> list[str]:
        return list(self.engine.voices)
