"""Language model protocol: chat messages in, streamed text deltas out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator, Protocol


@dataclass(frozen=True)
class GenerationParams:
    max_tokens: int = 96
    temperature: float = 0.2
    top_p: float = 0.9


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
