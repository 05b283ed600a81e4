"""The LLM engine contract: a typed request in, typed deltas out.

Every backend (llama.cpp, vLLM, an OpenAI-compatible server) implements :class:`LanguageModel`.
A request carries, besides the chat and its sampling, what a shared engine needs to serve many
conversations well: a ``session_id`` (the engine keeps that conversation's evaluated prompt, so
the next turn only evaluates what is new) and a ``deadline`` (when its first token is due;
engines that queue work serve the earliest deadline first).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, AsyncIterator, ClassVar, Literal, Protocol


@dataclass(frozen=True)
class Capabilities:
    """What an engine does with a request's optional parts. The session asks the engine
    (``LanguageModel.capabilities``), never the backend's name: what an engine cannot do is
    refused with ``unsupported_feature``, never dropped."""

    tools: bool = False  # function calls: ``tools`` / ``tool_choice`` are honoured
    session_cache: bool = False  # keeps a conversation's evaluated prompt under ``session_id``
    deadlines: bool = False  # queued work is served earliest ``deadline`` first
    pacing: bool = False  # a spoken reply's tokens are produced at its ``pacing``, not flat out
    prefill: bool = False  # ``prefill(request)``: the prompt evaluated into the session's cache, nothing generated


@dataclass(frozen=True)
class GenerationParams:
    """Sampling of one generation; the server's values come from ``LlmConfig`` (no defaults
    here, so that there is one place they live)."""

    max_tokens: int
    temperature: float
    top_p: float
    # Penalties against repetition loops (small models fall into them); the neutral values
    # here mean "off", the server's come from LlmConfig.
    repeat_penalty: float = 1.0
    frequency_penalty: float = 0.0


# {"role": "system"|"user"|"assistant"|"tool", "content": str, ...}; assistant turns that called
# tools carry "tool_calls", tool turns a "tool_call_id" (the OpenAI chat shapes).
Message = dict[str, Any]


@dataclass(frozen=True)
class Tool:
    """A function the model may call: its JSON Schema ``parameters`` constrain the arguments."""

    name: str
    description: str
    parameters: dict[str, Any]


# "auto": the model decides; "none": text only; "required": some tool; a name: that tool.
ToolChoice = Literal["auto", "none", "required"] | str


@dataclass(frozen=True)
class Pacing:
    """How fast a spoken reply's tokens are needed: the first ``burst_tokens`` at once (the first
    clause, which the listener waits for), the rest at ``tokens_per_s`` (a little faster than
    speech). A batching engine may hold back a sequence that is more than ``lead_s`` ahead of
    that pace while other sequences are due, instead of running every sequence flat out."""

    burst_tokens: int
    tokens_per_s: float
    lead_s: float


@dataclass(frozen=True)
class GenerationRequest:
    messages: list[Message]
    params: GenerationParams
    # The conversation this turn belongs to: engines with a prefix cache keep its evaluated
    # prompt between turns under this key. None: no reuse.
    session_id: str | None = None
    # Unix time (time.time(), comparable across processes) by which the first token is due;
    # None: as soon as possible, behind requests that have a deadline.
    deadline: float | None = None
    # None: every token as soon as possible (a text reply is read, not played).
    pacing: Pacing | None = None
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = "auto"


@dataclass(frozen=True)
class ToolCallDelta:
    """Part of a tool call. The first delta of call ``index`` carries its ``call_id`` and
    ``name``; later ones append to its JSON ``arguments``."""

    index: int
    arguments: str = ""
    call_id: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class Usage:
    """Token counts of one generation, as the engine counted them (the stream's last delta).
    ``cached_tokens``: prompt tokens reused from the session's cache instead of evaluated;
    ``queued_ms``: how long the request waited before the engine started on it."""

    input_tokens: int
    output_tokens: int
    cached_tokens: int = 0
    queued_ms: float = 0.0


# A stream's deltas: text and tool-call parts as they are generated, then (where the backend
# tells) one Usage.
Delta = str | ToolCallDelta | Usage


class LanguageModel(Protocol):
    """``stream`` is an async generator of :data:`Delta`; closing it (cancellation) must stop
    generation and free what the request held. ``capabilities`` (a class attribute) says what
    it honours of a request."""

    capabilities: ClassVar[Capabilities]

    def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]: ...
