"""Language model protocol: chat messages in, streamed text deltas out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator, Protocol


@dataclass(frozen=True)
class GenerationParams:
    """Sampling of one generation; the server's values come from ``LlmConfig`` (no defaults
    here, so that there is one place they live)."""

    max_tokens: int
    temperature: float
    top_p: float


Message = dict[str, str]  # {"role": "system"|"user"|"assistant", "content": str}


@dataclass(frozen=True)
class Usage:
    """Token counts of one generation, as the engine counted them (the stream's last delta)."""

    input_tokens: int
    output_tokens: int


# A stream's deltas: text as it is generated, then (where the backend tells) one Usage.
Delta = str | Usage


class LanguageModel(Protocol):
    """``stream`` is an async generator of :data:`Delta`; closing it (cancellation) must stop
    generation."""

    def stream(self, messages: list[Message], params: GenerationParams) -> AsyncIterator[Delta]: ...
