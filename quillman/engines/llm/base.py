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


class LanguageModel(Protocol):
    """``stream`` is an async generator; closing it (cancellation) must stop generation."""

    def stream(self, messages: list[Message], params: GenerationParams) -> AsyncIterator[str]: ...
