"""The OpenAI Realtime (GA) wire protocol: the only home of event shapes.

Client events are pydantic models parsed by :func:`parse_client_event`, which turns every kind
of bad input into a typed :class:`~quillman.errors.QuillmanError` with a stable code. Server
events are built by the small functions at the bottom; each returns a JSON-ready dict.
Our own additions (per-stage ``timings`` on the response) are extra keys, which the official
SDK keeps (its models allow extra fields).
"""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from quillman import errors

SUPPORTED_RATES_HZ = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


class _Lenient(BaseModel):
    # Clients send fields we don't use (tools, tracing, ...): accept and ignore them.
    model_config = ConfigDict(extra="ignore")


# --- session -----------------------------------------------------------------------------


class AudioFormat(_Lenient):
    type: Literal["audio/pcm", "audio/pcmu", "audio/pcma"] = "audio/pcm"
    rate: int = 24000


class TurnDetection(_Lenient):
    type: Literal["server_vad", "semantic_vad"] = "server_vad"
    threshold: float | None = Field(None, gt=0, lt=1)
    prefix_padding_ms: int | None = Field(None, ge=0, le=5000)
    silence_duration_ms: int | None = Field(None, ge=100, le=10000)
    create_response: bool = True
    interrupt_response: bool = True
    idle_timeout_ms: int | None = None
    eagerness: str | None = None


class Transcription(_Lenient):
    model: str | None = None
    language: str | None = None
    prompt: str | None = None


class AudioInput(_Lenient):
    format: AudioFormat | None = None
    turn_detection: TurnDetection | None = Field(default=None)
    transcription: Transcription | None = None
    noise_reduction: dict | None = None


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


class SessionUpdate(_Lenient):
    type: Literal["realtime"] | None = None
    quillman: QuillmanExtension | None = None
    model: str | None = None
    instructions: str | None = None
    output_modalities: list[Literal["audio", "text"]] | None = None
    max_output_tokens: OutputTokens | Literal["inf"] | None = None
    audio: SessionAudio | None = None


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


class ConversationItemCreate(_ClientEvent):
    type: Literal["conversation.item.create"]
    previous_item_id: str | None = None
    item: ConversationItem


class ResponseOptions(_Lenient):
    instructions: str | None = None
    output_modalities: list[Literal["audio", "text"]] | None = None
    max_output_tokens: OutputTokens | Literal["inf"] | None = None
    metadata: dict[str, str] | None = None
    conversation: Literal["auto", "none"] | str | None = None
    audio: SessionAudio | None = None


class ResponseCreate(_ClientEvent):
    type: Literal["response.create"]
    response: ResponseOptions | None = None


class ConversationItemTruncate(_ClientEvent):
    """After a barge-in: the client heard only ``audio_end_ms`` of an assistant item."""

    type: Literal["conversation.item.truncate"]
    item_id: str
    content_index: int = 0
    audio_end_ms: int = Field(ge=0)


class ResponseCancel(_ClientEvent):
    type: Literal["response.cancel"]
    response_id: str | None = None


ClientEvent = Union[
    SessionUpdateEvent,
    InputAudioBufferAppend,
    InputAudioBufferCommit,
    InputAudioBufferClear,
    ConversationItemCreate,
    ConversationItemTruncate,
    ResponseCreate,
    ResponseCancel,
]

_CLIENT_EVENT = TypeAdapter(Annotated[ClientEvent, Field(discriminator="type")])
_KNOWN_TYPES = {
    "session.update", "input_audio_buffer.append", "input_audio_buffer.commit",
    "input_audio_buffer.clear", "conversation.item.create", "conversation.item.truncate",
    "response.create", "response.cancel",
}
# Real Realtime client events we don't implement: a clear error, not "unknown".
_UNSUPPORTED_TYPES = {
    "conversation.item.delete", "conversation.item.retrieve",
    "output_audio_buffer.clear", "transcription_session.update",
}


def parse_client_event(frame: str | bytes) -> ClientEvent:
    """Parse one websocket text frame; raise a typed error naming what is wrong."""
    try:
        data = json.loads(frame)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise errors.InvalidJson(f"frame is not valid JSON: {exc}") from None
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
        where = ".".join(str(p) for p in first["loc"][1:]) or event_type
        raise errors.InvalidEvent(
            f"invalid '{event_type}': {where}: {first['msg']}", param=where, event_id=event_id
        ) from None


# --- server events -------------------------------------------------------------------------


def event(event_type: str, **fields: Any) -> dict[str, Any]:
    return {"event_id": new_id("event"), "type": event_type, **fields}


def error_event(exc: errors.QuillmanError) -> dict[str, Any]:
    body: dict[str, Any] = {"type": exc.type, "code": exc.code, "message": exc.message}
    if exc.param is not None:
        body["param"] = exc.param
    if exc.event_id is not None:
        body["event_id"] = exc.event_id
    return event("error", error=body)


def user_audio_item(item_id: str, transcript: str | None, status: str = "completed") -> dict:
    return {
        "id": item_id, "object": "realtime.item", "type": "message", "role": "user",
        "status": status, "content": [{"type": "input_audio", "transcript": transcript}],
    }


def user_text_item(item_id: str, text: str) -> dict:
    return {
        "id": item_id, "object": "realtime.item", "type": "message", "role": "user",
        "status": "completed", "content": [{"type": "input_text", "text": text}],
    }


def assistant_item(item_id: str, transcript: str, status: str, audio: bool) -> dict:
    part = {"type": "output_audio", "transcript": transcript} if audio else {
        "type": "output_text", "text": transcript}
    return {
        "id": item_id, "object": "realtime.item", "type": "message", "role": "assistant",
        "status": status, "content": [part],
    }


def content_part(transcript: str, audio: bool) -> dict:
    return {"type": "audio", "transcript": transcript} if audio else {"type": "text", "text": transcript}
