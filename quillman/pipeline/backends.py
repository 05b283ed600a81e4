"""What a session needs from the three models, whoever runs them.

In the server these are DeploymentHandles (``quillman.deployments.ingress.HandleBackends``);
in unit tests, small fakes. The session code is the same either way.
"""

from __future__ import annotations

from typing import AsyncIterator, Protocol

import numpy as np

from quillman.engines.asr.base import Transcript
from quillman.engines.llm.base import Delta, GenerationRequest, Usage
from quillman.scheduling import QueueWait


class Backends(Protocol):
    async def transcribe(self, pcm: np.ndarray, language: str | None,
                         deadline: float | None = None) -> Transcript:
        """16 kHz float32 mono in; ``deadline`` orders it among other sessions' segments."""

    def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        """Text (and tool-call) deltas, then a Usage if the engine counts tokens; closing the
        iterator must cancel generation."""

    async def prefill(self, request: GenerationRequest) -> Usage | None:
        """The prompt evaluated into the session's cache while the user still speaks, nothing
        generated; None where the engine does not (``Capabilities.prefill``) or did not."""

    def synthesize(self, text: str, voice: str, sample_rate_hz: int,
                   deadline: float | None = None) -> AsyncIterator[QueueWait | np.ndarray]:
        """Optionally a :class:`QueueWait` first, then int16 mono pcm chunks at
        ``sample_rate_hz``; closing the iterator cancels synthesis."""
