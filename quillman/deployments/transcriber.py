"""ASR deployment: a thin shim that runs the recognizer off the event loop.

Engines with ``transcribe_batch`` (the transformers Whisper backend) are fed through
``@serve.batch``: segments that arrive within ``asr.batch_wait_timeout_s`` of each other, from
any session, are decoded in one call of up to ``asr.max_batch_size``. Others (faster-whisper)
transcribe each segment on its own, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Callable

import numpy as np
from ray import serve

from quillman.config import AsrConfig
from quillman.engines.asr.base import SpeechRecognizer, Transcript
from quillman.deployments.common import ModelDeployment
from quillman.engines.loader import load_recognizer
from quillman.engines.warmup import warm_recognizer
from quillman.priority import is_due, node_priority
from quillman.scheduling import DeadlineGate

# Partial transcripts (no deadline) give way to critical work on the machine for at most this long.
PARTIAL_YIELD_S = 0.5

logger = logging.getLogger(__name__)


@serve.deployment(name="Transcriber", max_ongoing_requests=4)
class Transcriber(ModelDeployment):
    section = "asr"

    async def __init__(self, config: AsrConfig,  # Serve allows an async constructor
                       engine_factory: Callable[[AsrConfig], SpeechRecognizer] = load_recognizer):
        self.config = AsrConfig.model_validate(config)
        # Segments wait here in deadline order (the last segment of a finished turn first).
        self._gate = DeadlineGate(self.config.max_concurrent)
        self._priority = node_priority() if self.config.node_priority else None
        await self._start(engine_factory)
        if self.batched:
            self._transcribe_batched.set_max_batch_size(self.config.max_batch_size)
            self._transcribe_batched.set_batch_wait_timeout_s(self.config.batch_wait_timeout_s)

    @property
    def batched(self) -> bool:
        return callable(getattr(self.engine, "transcribe_batch", None))

    async def _warm(self) -> float:
        return await asyncio.to_thread(warm_recognizer, self.engine, self.config.language)

    def _ready_note(self) -> str:
        return f", batches of up to {self.config.max_batch_size}" if self.batched else ""

    async def transcribe(self, pcm: np.ndarray, language: str | None = None,
                         deadline: float | None = None) -> Transcript:
        language = language or self.config.language
        if self.batched:  # a GPU batch serves its requests together; no order to choose
            return await self._transcribe_batched(pcm, language)
        critical = is_due(deadline)
        if not critical and self._priority is not None:  # a partial transcript can wait a little
            await self._priority.yield_while_busy(until=time.time() + PARTIAL_YIELD_S)
        async with self._gate.slot(deadline):
            with self._priority.critical() if critical and self._priority else contextlib.nullcontext():
                return await asyncio.to_thread(self.engine.transcribe, pcm, language)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)  # reset from config in __init__
    async def _transcribe_batched(
        self, pcms: list[np.ndarray], languages: list[str | None]
    ) -> list[Transcript]:
        # One engine call per language in the batch (Whisper takes one forced language per call
        # here); results go back in request order.
        results: list[Transcript | None] = [None] * len(pcms)
        for language in dict.fromkeys(languages):
            indices = [i for i, lang in enumerate(languages) if lang == language]
            transcripts = await asyncio.to_thread(
                self.engine.transcribe_batch, [pcms[i] for i in indices], language
            )
            for i, transcript in zip(indices, transcripts):
                results[i] = transcript
        return results  # type: ignore[return-value]
