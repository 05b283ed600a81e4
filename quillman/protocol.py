"""The OpenAI Realtime (GA) wire protocol: the only home of event shapes.

Client events are pydantic models parsed by :func:`parse_client_event`, which turns every kind
of bad input into a typed :class:`~quillman.errors.QuillmanError` with a stable code. Server
events and the objects in them (session, item, response) are pydantic models too, built by the
pipeline and serialized once (:func:`serialize`). Our own additions (per-stage ``timings`` on the
response) are extra keys, which the official SDK keeps (its models allow extra fields).
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Annotated, Any, Literal, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, TypeAdapter, ValidationError, model_serializer

from quillman import errors
from quillman.config import PrefixPaddingMs, SilenceDurationMs, VadThreshold

SUPPORTED_RATES_HZ = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


class _Lenient(BaseModel):
    # Clients send fields we don't use (tools, tracing, ...): accept and ignore them.
    model_config = ConfigDict(extra="ignore")


# --- session -----------------------------------------------------------------------------


class AudioFormat(_Lenient):
    type: Literal["audio/pcm", "audio/pcmu", "audio/pcma"] = "audio/pcm"
    rate: int = 24000  # audio/pcm only; G.711 is always 8 kHz


class TurnDetection(_Lenient):
    type: Literal["server_vad", "semantic_vad"] = "server_vad"
    # The operator's bounds (quillman.config): a client cannot set what the config forbids.
    threshold: VadThreshold | None = None
    prefix_padding_ms: PrefixPaddingMs | None = None
    silence_duration_ms: SilenceDurationMs | None = None
    create_response: bool = True
    interrupt_response: bool = True
    idle_timeout_ms: int | None = None
    eagerness: Literal["low", "medium", "high", "auto"] | None = None


class Transcription(_Lenient):
    model: str | None = None
    language: str | None = None
    prompt: str | None = None


class NoiseReduction(_Lenient):
    type: Literal["near_field", "far_field"] = "near_field"


class AudioInput(_Lenient):
    format: AudioFormat | None = None
    turn_detection: TurnDetection | None = Field(default=None)
    transcription: Transcription | None = None
    noise_reduction: NoiseReduction | None = None


class AudioOutput(_Lenient):
    format: AudioFormat | None = None
    voice: str | dict | None = None
    speed: float | None = Field(None, gt=0.2, le=4)


class SessionAudio(_Lenient):
    input: AudioInput | None = None
    output: AudioOutput | None = None


class QuillmanExtension(_Lenient):
    """Our own session settings, under the ``quillman`` key of the session object."""

    # "sequential" is the naive baseline (whole utterance -> whole reply -> whole audio), kept
    # so the gain of streaming can be measured against it on the same server.
    pipeline: Literal["streaming", "sequential"] | None = None


# The Realtime API's range is 1..4096 or "inf"; zero or negative would mean "no limit" to llama.cpp.
OutputTokens = Annotated[int, Field(ge=1)]


ToolChoice = Union[Literal["auto", "none", "required"], dict]


# ``include`` values: OpenAI's logprobs (accepted, not produced) and our opt-in partial
# transcripts of the user's speech in a realtime session (transcription sessions always have them).
INCLUDE_PARTIAL_TRANSCRIPTS = "item.input_audio_transcription.delta"
IncludeOption = Literal["item.input_audio_transcription.logprobs", "item.input_audio_transcription.delta"]


class SessionUpdate(_Lenient):
    type: Literal["realtime", "transcription"] | None = None
    include: list[IncludeOption] | None = None
    quillman: QuillmanExtension | None = None
    model: str | None = None
    instructions: str | None = None
    output_modalities: list[Literal["audio", "text"]] | None = None
    max_output_tokens: OutputTokens | Literal["inf"] | None = None
    audio: SessionAudio | None = None
    tools: list[dict] | None = None
    tool_choice: ToolChoice | None = None


# --- client events -------------------------------------------------------------------------


class _ClientEvent(_Lenient):
    event_id: str | None = None


class SessionUpdateEvent(_ClientEvent):
    type: Literal["session.update"]
    session: SessionUpdate


class InputAudioBufferAppend(_ClientEvent):
    type: Literal["input_audio_buffer.append"]
    audio: str


class InputAudioBufferCommit(_ClientEvent):
    type: Literal["input_audio_buffer.commit"]


class InputAudioBufferClear(_ClientEvent):
    type: Literal["input_audio_buffer.clear"]


class ContentPart(_Lenient):
    type: Literal["input_text", "text", "output_text", "input_audio", "output_audio"]
    text: str | None = None
    transcript: str | None = None
    audio: str | None = None

    def as_text(self) -> str:
        return self.text or self.transcript or ""


class ConversationItem(_Lenient):
    id: str | None = None
    type: Literal["message"]
    role: Literal["user", "assistant", "system"]
    content: list[ContentPart] = Field(min_length=1)

    def text(self) -> str:
        return " ".join(part.as_text() for part in self.content).strip()


class FunctionCallOutputInput(_Lenient):
    """The client's result of a function call the model made (it ran the tool)."""

    id: str | None = None
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1, max_length=256)
    output: str


class McpApprovalResponseInput(_Lenient):
    """The client's answer to an ``mcp_approval_request`` item: run the call, or not."""

    id: str | None = None
    type: Literal["mcp_approval_response"]
    approval_request_id: str = Field(min_length=1, max_length=256)
    approve: bool
    reason: str | None = Field(None, max_length=1000)


_ITEM_TAGS = {"message", "function_call_output", "mcp_approval_response"}
ClientItem = Annotated[Union[ConversationItem, FunctionCallOutputInput, McpApprovalResponseInput],
                       Field(discriminator="type")]


class ConversationItemCreate(_ClientEvent):
    type: Literal["conversation.item.create"]
    # Where the item goes: after this item; "root": at the start; absent, null or "": at the end.
    previous_item_id: str | None = None
    item: ClientItem


class ResponseOptions(_Lenient):
    instructions: str | None = None
    output_modalities: list[Literal["audio", "text"]] | None = None
    max_output_tokens: OutputTokens | Literal["inf"] | None = None
    metadata: dict[str, str] | None = None
    conversation: Literal["auto", "none"] | str | None = None
    audio: SessionAudio | None = None
    tools: list[dict] | None = None
    tool_choice: ToolChoice | None = None


class ResponseCreate(_ClientEvent):
    type: Literal["response.create"]
    response: ResponseOptions | None = None


class ConversationItemTruncate(_ClientEvent):
    """After a barge-in: the client heard only ``audio_end_ms`` of an assistant item."""

    type: Literal["conversation.item.truncate"]
    item_id: str
    content_index: int = 0
    audio_end_ms: int = Field(ge=0)


class ConversationItemDelete(_ClientEvent):
    type: Literal["conversation.item.delete"]
    item_id: str


class ConversationItemRetrieve(_ClientEvent):
    type: Literal["conversation.item.retrieve"]
    item_id: str


class ResponseCancel(_ClientEvent):
    type: Literal["response.cancel"]
    response_id: str | None = None


class OutputAudioBufferClear(_ClientEvent):
    """WebRTC only: drop the reply audio not yet played on the track (GA: sent after
    ``response.cancel``); answered with ``output_audio_buffer.cleared``."""

    type: Literal["output_audio_buffer.clear"]


ClientEvent = Union[
    SessionUpdateEvent,
    InputAudioBufferAppend,
    InputAudioBufferCommit,
    InputAudioBufferClear,
    ConversationItemCreate,
    ConversationItemTruncate,
    ConversationItemDelete,
    ConversationItemRetrieve,
    ResponseCreate,
    ResponseCancel,
    OutputAudioBufferClear,
]

_CLIENT_EVENT = TypeAdapter(Annotated[ClientEvent, Field(discriminator="type")])
_KNOWN_TYPES = {
    "session.update", "input_audio_buffer.append", "input_audio_buffer.commit",
    "input_audio_buffer.clear", "conversation.item.create", "conversation.item.truncate",
    "conversation.item.delete", "conversation.item.retrieve", "response.create", "response.cancel",
    "output_audio_buffer.clear",
}
# Real Realtime client events we don't implement: a clear error, not "unknown".
_UNSUPPORTED_TYPES = {"transcription_session.update"}
# Client events a WebRTC call's data channel does not carry: the audio track replaces them.
TRACK_REPLACED_CLIENT_TYPES = frozenset({"input_audio_buffer.append"})


MAX_JSON_DEPTH = 32  # the deepest real event (session.update) nests 6 levels
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)


def json_depth(frame: str | bytes) -> int:
    """How deep a JSON text nests objects and arrays, without parsing it (and so without the
    recursion a hostile frame could exhaust). Vectorized: brackets outside strings, +1/-1."""
    data = frame.encode("utf-8", "replace") if isinstance(frame, str) else frame
    if data.count(b"{") + data.count(b"[") <= MAX_JSON_DEPTH:
        return 0  # cannot be deeper than the limit; the common case costs two scans in C
    codes = np.frombuffer(_JSON_STRING.sub(b'""', data), dtype=np.uint8)
    steps = np.zeros(len(codes), dtype=np.int32)
    steps[(codes == ord("{")) | (codes == ord("["))] = 1
    steps[(codes == ord("}")) | (codes == ord("]"))] = -1
    return int(np.cumsum(steps).max(initial=0))


def parse_client_event(frame: str | bytes) -> ClientEvent:
    """Parse one websocket text frame; raise a typed error naming what is wrong."""
    if json_depth(frame) > MAX_JSON_DEPTH:
        raise errors.InvalidJson(f"frame nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        data = json.loads(frame)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise errors.InvalidJson(f"frame is not valid JSON: {exc}"[:300]) from None
    if not isinstance(data, dict):
        raise errors.InvalidJson("frame must be a JSON object")
    event_id = data.get("event_id") if isinstance(data.get("event_id"), str) else None
    event_type = data.get("type")
    if not isinstance(event_type, str):
        raise errors.InvalidEvent("event has no string 'type'", param="type", event_id=event_id)
    if event_type in _UNSUPPORTED_TYPES:
        raise errors.UnsupportedEvent(
            f"'{event_type}' is not supported by this server", param="type", event_id=event_id
        )
    if event_type not in _KNOWN_TYPES:
        raise errors.UnknownEventType(
            f"unknown event type '{event_type[:80]}'", param="type", event_id=event_id
        )
    try:
        return _CLIENT_EVENT.validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        # A tagged union (the item types) puts its tag in the location: not a field.
        loc = [str(p) for p in first["loc"][1:] if p not in _ITEM_TAGS]
        if first["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc.append("type")
        where = ".".join(loc) or event_type
        raise errors.InvalidEvent(
            f"invalid '{event_type}': {where}: {first['msg']}", param=where, event_id=event_id
        ) from None


# --- server objects ------------------------------------------------------------------------
# The shapes of the GA Realtime API (the openai SDK's ``types/realtime`` models are the
# reference). Built by the pipeline, serialized once by :func:`serialize`.


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Compact(_Wire):
    """An object whose unset optional fields are left out of the wire, not sent as null."""

    @model_serializer(mode="wrap")
    def _without_nulls(self, handler) -> dict[str, Any]:
        return {key: value for key, value in handler(self).items() if value is not None}


class InputAudioContent(_Wire):
    type: Literal["input_audio"] = "input_audio"
    transcript: str | None = None


class InputTextContent(_Wire):
    type: Literal["input_text"] = "input_text"
    text: str


class OutputAudioContent(_Wire):
    type: Literal["output_audio"] = "output_audio"
    transcript: str


class OutputTextContent(_Wire):
    type: Literal["output_text"] = "output_text"
    text: str


ItemContent = Union[InputAudioContent, InputTextContent, OutputAudioContent, OutputTextContent]
ItemStatus = Literal["completed", "incomplete", "in_progress"]


class MessageItem(_Wire):
    id: str
    object: Literal["realtime.item"] = "realtime.item"
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system"]
    status: ItemStatus = "completed"
    content: list[ItemContent]


class FunctionCallItem(_Wire):
    """A call the model made: the client runs the tool and answers with its ``call_id``."""

    id: str
    object: Literal["realtime.item"] = "realtime.item"
    type: Literal["function_call"] = "function_call"
    status: ItemStatus = "completed"
    call_id: str
    name: str
    arguments: str


class FunctionCallOutputItem(_Wire):
    id: str
    object: Literal["realtime.item"] = "realtime.item"
    type: Literal["function_call_output"] = "function_call_output"
    status: ItemStatus = "completed"
    call_id: str
    output: str


# MCP items (openai SDK: realtime_mcp_list_tools.py, realtime_mcp_tool_call.py,
# realtime_mcp_approval_request.py / _response.py): no ``object`` and no ``status`` field there.


class McpListedTool(_Compact):
    name: str
    input_schema: dict[str, Any]
    description: str | None = None
    annotations: dict[str, Any] | None = None


class McpListToolsItem(_Wire):
    """The tools an MCP server offers this session (after ``allowed_tools``)."""

    id: str
    type: Literal["mcp_list_tools"] = "mcp_list_tools"
    server_label: str
    tools: list[McpListedTool] = Field(default_factory=list)


class McpProtocolError(_Wire):
    type: Literal["protocol_error"] = "protocol_error"
    code: int
    message: str


class McpToolExecutionError(_Wire):
    type: Literal["tool_execution_error"] = "tool_execution_error"
    message: str


class McpHttpError(_Wire):
    type: Literal["http_error"] = "http_error"
    code: int
    message: str


McpCallError = Union[McpProtocolError, McpToolExecutionError, McpHttpError]


class McpCallItem(_Compact):
    """A call the server ran on an MCP server: ``output`` or ``error`` once it ended."""

    id: str
    type: Literal["mcp_call"] = "mcp_call"
    server_label: str
    name: str
    arguments: str
    approval_request_id: str | None = None
    output: str | None = None
    error: McpCallError | None = None


class McpApprovalRequestItem(_Wire):
    id: str
    type: Literal["mcp_approval_request"] = "mcp_approval_request"
    server_label: str
    name: str
    arguments: str


class McpApprovalResponseItem(_Compact):
    id: str
    type: Literal["mcp_approval_response"] = "mcp_approval_response"
    approval_request_id: str
    approve: bool
    reason: str | None = None


McpItem = Union[McpListToolsItem, McpCallItem, McpApprovalRequestItem, McpApprovalResponseItem]
Item = Union[MessageItem, FunctionCallItem, FunctionCallOutputItem, McpListToolsItem, McpCallItem,
             McpApprovalRequestItem, McpApprovalResponseItem]
OutputItem = Union[MessageItem, FunctionCallItem, McpCallItem, McpApprovalRequestItem]


class FunctionTool(_Wire):
    type: Literal["function"] = "function"
    name: str
    description: str
    parameters: dict[str, Any]


class McpToolNames(_Compact):
    tool_names: list[str] | None = None
    read_only: bool | None = None


class McpApprovalFilter(_Compact):
    always: McpToolNames | None = None
    never: McpToolNames | None = None


class McpTool(_Compact):
    """An MCP tool as the session shows it: never its ``headers`` or ``authorization``."""

    type: Literal["mcp"] = "mcp"
    server_label: str
    server_url: str
    server_description: str | None = None
    allowed_tools: list[str] | McpToolNames | None = None
    require_approval: Literal["always", "never"] | McpApprovalFilter = "always"


def user_audio_item(item_id: str, transcript: str | None, status: ItemStatus = "completed") -> MessageItem:
    return MessageItem(id=item_id, role="user", status=status, content=[InputAudioContent(transcript=transcript)])


def text_item(item_id: str, role: Literal["user", "assistant", "system"], text: str) -> MessageItem:
    """A text message the client created (user and system text is input, assistant text output)."""
    part = OutputTextContent(text=text) if role == "assistant" else InputTextContent(text=text)
    return MessageItem(id=item_id, role=role, content=[part])


def assistant_item(item_id: str, transcript: str, status: ItemStatus, audio: bool) -> MessageItem:
    part = OutputAudioContent(transcript=transcript) if audio else OutputTextContent(text=transcript)
    return MessageItem(id=item_id, role="assistant", status=status, content=[part])


class AudioPart(_Wire):
    """A part of ``response.content_part.added/done`` (named ``audio``/``text`` there)."""

    type: Literal["audio"] = "audio"
    transcript: str


class TextPart(_Wire):
    type: Literal["text"] = "text"
    text: str


def content_part(transcript: str, audio: bool) -> AudioPart | TextPart:
    return AudioPart(transcript=transcript) if audio else TextPart(text=transcript)


class ErrorBody(_Compact):
    type: str
    code: str
    message: str
    param: str | None = None
    event_id: str | None = None


def error_body(exc: errors.QuillmanError) -> ErrorBody:
    return ErrorBody(type=exc.type, code=exc.code, message=exc.message, param=exc.param, event_id=exc.event_id)


def http_error_body(exc: errors.QuillmanError) -> dict[str, Any]:
    """The JSON body of an HTTP error (a refused handshake, a refused route): the same
    ``error`` object an ``error`` event carries, as the hosted API answers."""
    return {"error": error_body(exc).model_dump()}


# One definition of the per-stage latency breakdown: ``response.done`` -> ``response.timings``,
# the stage histograms of the metrics and the bench's tables all use these names.
STAGES = ("turn_detected_ms", "transcript_ms", "first_token_ms", "first_sentence_ms",
          "first_audio_ms", "total_ms", "asr_last_segment_ms", "llm_ttft_ms", "tts_first_chunk_ms",
          "llm_queue_ms", "tts_queue_ms", "turn_decision_ms")


class ResponseTimings(_Compact):
    """ms from the end of the user's speech (or from ``response.create`` for a text turn); a
    stage that did not happen (no audio in a text reply) is absent."""

    turn_detected_ms: float | None = None
    transcript_ms: float | None = None
    first_token_ms: float | None = None
    first_sentence_ms: float | None = None
    first_audio_ms: float | None = None
    total_ms: float | None = None
    asr_last_segment_ms: float | None = None
    llm_ttft_ms: float | None = None
    tts_first_chunk_ms: float | None = None
    # Of llm_ttft_ms / tts_first_chunk_ms: time waited behind other work (other sessions) in
    # the LLM's batch queue / the Speaker replica's deadline queue.
    llm_queue_ms: float | None = None
    tts_queue_ms: float | None = None
    # When the end of turn was decided (the silence, or semantic_vad's judgment at a pause);
    # ``metadata["turn_decision"]`` says which signal decided.
    turn_decision_ms: float | None = None
    # MCP tool calls the server ran: their round trips through the MCP SDK, summed.
    mcp_call_ms: float | None = None
    speculative: float = 0.0  # 1 when the reply was started before the end of turn

    def measured(self) -> dict[str, float]:
        return self.model_dump()


class InputTokenDetails(_Wire):
    # Prompt tokens the LLM reused from this session's cache (not evaluated again).
    cached_tokens: int = 0
    text_tokens: int = 0


class Usage(_Wire):
    total_tokens: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    input_token_details: InputTokenDetails | None = None


class StatusDetails(_Compact):
    type: Literal["completed", "cancelled", "failed", "incomplete"]
    reason: str | None = None
    error: ErrorBody | None = None


class ResponseObject(_Wire):
    id: str
    object: Literal["realtime.response"] = "realtime.response"
    status: Literal["in_progress", "completed", "cancelled", "failed", "incomplete"]
    status_details: StatusDetails | None = None
    output: list[OutputItem] = Field(default_factory=list)
    output_modalities: list[Literal["audio", "text"]]
    usage: Usage | None = None
    metadata: dict[str, str] | None = None
    # Our additions (extra keys, which the openai SDK keeps):
    timings: ResponseTimings | None = None
    audio_s: float | None = None


class PcmFormat(_Wire):
    type: Literal["audio/pcm"] = "audio/pcm"
    rate: int


class G711Format(_Wire):
    type: Literal["audio/pcmu", "audio/pcma"]


def audio_format(fmt: str, rate: int) -> PcmFormat | G711Format:
    return PcmFormat(rate=rate) if fmt == "audio/pcm" else G711Format(type=fmt)


class ServerNoiseReduction(_Wire):
    type: Literal["near_field", "far_field"]


class ServerTurnDetection(_Wire):
    type: Literal["server_vad"] = "server_vad"
    threshold: float
    prefix_padding_ms: int
    silence_duration_ms: int
    create_response: bool
    interrupt_response: bool


class SemanticTurnDetection(_Wire):
    type: Literal["semantic_vad"] = "semantic_vad"
    eagerness: Literal["low", "medium", "high", "auto"]
    create_response: bool
    interrupt_response: bool


class SessionTranscription(_Wire):
    model: str = "whisper"
    language: str | None = None


class SessionAudioInput(_Wire):
    format: PcmFormat | G711Format
    transcription: SessionTranscription
    turn_detection: ServerTurnDetection | SemanticTurnDetection | None
    noise_reduction: ServerNoiseReduction | None = None


class SessionAudioOutput(_Wire):
    format: PcmFormat | G711Format
    voice: str
    speed: float = 1.0


class SessionAudioObject(_Wire):
    input: SessionAudioInput
    output: SessionAudioOutput


class QuillmanSessionInfo(_Wire):
    pipeline: Literal["streaming", "sequential"]


class SessionObject(_Wire):
    type: Literal["realtime"] = "realtime"
    id: str
    object: Literal["realtime.session"] = "realtime.session"
    model: str = "quillman"
    instructions: str
    output_modalities: list[Literal["audio", "text"]]
    max_output_tokens: int | Literal["inf"]
    audio: SessionAudioObject
    tools: list[FunctionTool | McpTool] = Field(default_factory=list)
    tool_choice: ToolChoice = "auto"
    voices: list[str]
    quillman: QuillmanSessionInfo
    include: list[str] = Field(default_factory=list)


class TranscriptionAudioObject(_Wire):
    input: SessionAudioInput


class TranscriptionSessionObject(_Wire):
    """``session.type: "transcription"``: the user's speech is transcribed, nothing replies."""

    type: Literal["transcription"] = "transcription"
    id: str
    object: Literal["realtime.transcription_session"] = "realtime.transcription_session"
    audio: TranscriptionAudioObject
    include: list[str] = Field(default_factory=list)


# --- server events -------------------------------------------------------------------------


class ServerEvent(_Wire):
    event_id: str = Field(default_factory=lambda: new_id("event"))
    type: str


def serialize(event: ServerEvent) -> str:
    """The one place a server event becomes wire text."""
    return event.model_dump_json()


class ErrorEvent(ServerEvent):
    type: Literal["error"] = "error"
    error: ErrorBody


def error_event(exc: errors.QuillmanError) -> ErrorEvent:
    return ErrorEvent(error=error_body(exc))


class _SessionEvent(ServerEvent):
    session: SessionObject | TranscriptionSessionObject


class SessionCreated(_SessionEvent):
    type: Literal["session.created"] = "session.created"


class SessionUpdated(_SessionEvent):
    type: Literal["session.updated"] = "session.updated"


class SpeechStartedEvent(ServerEvent):
    type: Literal["input_audio_buffer.speech_started"] = "input_audio_buffer.speech_started"
    audio_start_ms: int
    item_id: str


class SpeechStoppedEvent(ServerEvent):
    type: Literal["input_audio_buffer.speech_stopped"] = "input_audio_buffer.speech_stopped"
    audio_end_ms: int
    item_id: str


class InputAudioBufferCommitted(ServerEvent):
    type: Literal["input_audio_buffer.committed"] = "input_audio_buffer.committed"
    item_id: str
    previous_item_id: str | None = None


class InputAudioBufferCleared(ServerEvent):
    type: Literal["input_audio_buffer.cleared"] = "input_audio_buffer.cleared"


class _ItemEvent(ServerEvent):
    item: Item
    previous_item_id: str | None = None


class ConversationItemAdded(_ItemEvent):
    type: Literal["conversation.item.added"] = "conversation.item.added"


class ConversationItemDone(_ItemEvent):
    type: Literal["conversation.item.done"] = "conversation.item.done"


class ConversationItemTruncated(ServerEvent):
    type: Literal["conversation.item.truncated"] = "conversation.item.truncated"
    item_id: str
    content_index: int
    audio_end_ms: int


class ConversationItemDeleted(ServerEvent):
    type: Literal["conversation.item.deleted"] = "conversation.item.deleted"
    item_id: str


class ConversationItemRetrieved(ServerEvent):
    """The item as the server holds it now (a user audio item with its transcript; no audio)."""

    type: Literal["conversation.item.retrieved"] = "conversation.item.retrieved"
    item: Item


class TranscriptionUsage(_Wire):
    type: Literal["duration"] = "duration"
    seconds: float


class InputAudioTranscriptionDelta(ServerEvent):
    """Append-only: text of the user's speech that will not change (the final is in completed)."""

    type: Literal["conversation.item.input_audio_transcription.delta"] = (
        "conversation.item.input_audio_transcription.delta")
    item_id: str
    content_index: int = 0
    delta: str


class InputAudioTranscriptionCompleted(ServerEvent):
    type: Literal["conversation.item.input_audio_transcription.completed"] = (
        "conversation.item.input_audio_transcription.completed")
    item_id: str
    content_index: int = 0
    transcript: str
    usage: TranscriptionUsage | None = None


class InputAudioTranscriptionFailed(ServerEvent):
    type: Literal["conversation.item.input_audio_transcription.failed"] = (
        "conversation.item.input_audio_transcription.failed")
    item_id: str
    content_index: int = 0
    error: ErrorBody


class _ResponseEvent(ServerEvent):
    response: ResponseObject


class ResponseCreated(_ResponseEvent):
    type: Literal["response.created"] = "response.created"


class ResponseDone(_ResponseEvent):
    type: Literal["response.done"] = "response.done"


class _OutputItemEvent(ServerEvent):
    response_id: str
    output_index: int
    item: OutputItem


class OutputItemAdded(_OutputItemEvent):
    type: Literal["response.output_item.added"] = "response.output_item.added"


class OutputItemDone(_OutputItemEvent):
    type: Literal["response.output_item.done"] = "response.output_item.done"


class _PartEvent(ServerEvent):
    response_id: str
    item_id: str
    output_index: int = 0
    content_index: int = 0


class _ContentPartEvent(_PartEvent):
    part: AudioPart | TextPart


class ContentPartAdded(_ContentPartEvent):
    type: Literal["response.content_part.added"] = "response.content_part.added"


class ContentPartDone(_ContentPartEvent):
    type: Literal["response.content_part.done"] = "response.content_part.done"


class OutputAudioDelta(_PartEvent):
    type: Literal["response.output_audio.delta"] = "response.output_audio.delta"
    delta: str  # base64 pcm16
    # The same audio as int16 samples at ``_rate_hz``, for a transport that plays it on a media
    # track (WebRTC) instead of sending it: never on the wire.
    _pcm: Any = PrivateAttr(default=None)
    _rate_hz: int = PrivateAttr(default=0)

    @classmethod
    def of(cls, pcm: np.ndarray, fmt: str, rate_hz: int, **part: Any) -> "OutputAudioDelta":
        from quillman.audio import encode_audio_base64  # audio imports errors only; no cycle

        event = cls(delta=encode_audio_base64(pcm, fmt), **part)
        event._pcm, event._rate_hz = pcm, rate_hz
        return event

    @property
    def pcm(self) -> np.ndarray | None:
        return self._pcm

    @property
    def rate_hz(self) -> int:
        return self._rate_hz


class OutputAudioDone(_PartEvent):
    type: Literal["response.output_audio.done"] = "response.output_audio.done"


class OutputAudioTranscriptDelta(_PartEvent):
    type: Literal["response.output_audio_transcript.delta"] = "response.output_audio_transcript.delta"
    delta: str


class OutputAudioTranscriptDone(_PartEvent):
    type: Literal["response.output_audio_transcript.done"] = "response.output_audio_transcript.done"
    transcript: str


class OutputTextDelta(_PartEvent):
    type: Literal["response.output_text.delta"] = "response.output_text.delta"
    delta: str


class OutputTextDone(_PartEvent):
    type: Literal["response.output_text.done"] = "response.output_text.done"
    text: str


class _OutputAudioBufferEvent(ServerEvent):
    """WebRTC only: what the media track plays (the GA API's ``output_audio_buffer.*``)."""

    response_id: str


class OutputAudioBufferStarted(_OutputAudioBufferEvent):
    """The first audio of a response went onto the track."""

    type: Literal["output_audio_buffer.started"] = "output_audio_buffer.started"


class OutputAudioBufferStopped(_OutputAudioBufferEvent):
    """The track played all of a finished response's audio (after its ``response.done``)."""

    type: Literal["output_audio_buffer.stopped"] = "output_audio_buffer.stopped"


class OutputAudioBufferCleared(_OutputAudioBufferEvent):
    """Unplayed audio was dropped: a barge-in, or the client's ``output_audio_buffer.clear``."""

    type: Literal["output_audio_buffer.cleared"] = "output_audio_buffer.cleared"


class _FunctionCallArgumentsEvent(ServerEvent):
    response_id: str
    item_id: str
    output_index: int
    call_id: str


class FunctionCallArgumentsDelta(_FunctionCallArgumentsEvent):
    type: Literal["response.function_call_arguments.delta"] = "response.function_call_arguments.delta"
    delta: str


class FunctionCallArgumentsDone(_FunctionCallArgumentsEvent):
    type: Literal["response.function_call_arguments.done"] = "response.function_call_arguments.done"
    name: str
    arguments: str


# --- MCP events (openai SDK: mcp_list_tools_*.py, response_mcp_call_*.py) -------------------


class _McpListToolsEvent(ServerEvent):
    item_id: str


class McpListToolsInProgress(_McpListToolsEvent):
    type: Literal["mcp_list_tools.in_progress"] = "mcp_list_tools.in_progress"


class McpListToolsCompleted(_McpListToolsEvent):
    type: Literal["mcp_list_tools.completed"] = "mcp_list_tools.completed"


class McpListToolsFailed(_McpListToolsEvent):
    type: Literal["mcp_list_tools.failed"] = "mcp_list_tools.failed"


class _McpCallEvent(ServerEvent):
    item_id: str
    output_index: int


class McpCallArgumentsDelta(_McpCallEvent):
    type: Literal["response.mcp_call_arguments.delta"] = "response.mcp_call_arguments.delta"
    response_id: str
    delta: str


class McpCallArgumentsDone(_McpCallEvent):
    type: Literal["response.mcp_call_arguments.done"] = "response.mcp_call_arguments.done"
    response_id: str
    arguments: str


class McpCallInProgress(_McpCallEvent):
    type: Literal["response.mcp_call.in_progress"] = "response.mcp_call.in_progress"


class McpCallCompleted(_McpCallEvent):
    type: Literal["response.mcp_call.completed"] = "response.mcp_call.completed"


class McpCallFailed(_McpCallEvent):
    type: Literal["response.mcp_call.failed"] = "response.mcp_call.failed"
