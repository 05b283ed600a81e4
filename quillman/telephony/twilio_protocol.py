"""Twilio Media Streams' websocket messages and the TwiML that starts a stream: their only home.

Inbound (Twilio -> us): ``connected``, ``start``, ``media``, ``mark``, ``dtmf``, ``stop``, each a
JSON object with an ``event`` key. Outbound (bidirectional streams): ``media`` (base64 8 kHz
μ-law), ``mark`` (echoed back by Twilio once the audio before it has been played) and ``clear``
(drop the audio not yet played). Parsing is lenient about fields we don't use (Twilio adds
``sequenceNumber``, ``accountSid``, ...), strict about the ones we do.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal, Union
from xml.sax.saxutils import quoteattr

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

MEDIA_STREAM_PATH = "/twilio/media-stream"
TWILIO_ENCODING, TWILIO_RATE_HZ = "audio/x-mulaw", 8000


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class Connected(_Lenient):
    event: Literal["connected"]
    protocol: str | None = None
    version: str | None = None


class MediaFormat(_Lenient):
    encoding: str = TWILIO_ENCODING
    sample_rate: int = Field(TWILIO_RATE_HZ, alias="sampleRate")
    channels: int = 1


class StartInfo(_Lenient):
    stream_sid: str = Field(alias="streamSid")
    call_sid: str | None = Field(None, alias="callSid")
    account_sid: str | None = Field(None, alias="accountSid")
    tracks: list[str] = Field(default_factory=lambda: ["inbound"])
    media_format: MediaFormat = Field(default_factory=MediaFormat, alias="mediaFormat")
    custom_parameters: dict[str, str] = Field(default_factory=dict, alias="customParameters")


class Start(_Lenient):
    event: Literal["start"]
    stream_sid: str | None = Field(None, alias="streamSid")
    start: StartInfo


class MediaInfo(_Lenient):
    payload: str
    track: str = "inbound"
    timestamp: str | int | None = None
    chunk: str | int | None = None


class Media(_Lenient):
    event: Literal["media"]
    stream_sid: str | None = Field(None, alias="streamSid")
    media: MediaInfo


class MarkInfo(_Lenient):
    name: str


class Mark(_Lenient):
    event: Literal["mark"]
    stream_sid: str | None = Field(None, alias="streamSid")
    mark: MarkInfo


class DtmfInfo(_Lenient):
    digit: str
    track: str | None = None


class Dtmf(_Lenient):
    event: Literal["dtmf"]
    stream_sid: str | None = Field(None, alias="streamSid")
    dtmf: DtmfInfo


class Stop(_Lenient):
    event: Literal["stop"]
    stream_sid: str | None = Field(None, alias="streamSid")


TwilioMessage = Union[Connected, Start, Media, Mark, Dtmf, Stop]
_MESSAGE = TypeAdapter(Annotated[TwilioMessage, Field(discriminator="event")])
KNOWN_EVENTS = ("connected", "start", "media", "mark", "dtmf", "stop")


class BadMessage(ValueError):
    """A frame that is not one of Twilio's messages (logged and ignored by the bridge)."""


def parse_message(frame: str | bytes) -> TwilioMessage:
    try:
        data = json.loads(frame)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise BadMessage(f"not JSON: {exc}"[:200]) from None
    if not isinstance(data, dict):
        raise BadMessage("not a JSON object")
    if data.get("event") not in KNOWN_EVENTS:
        raise BadMessage(f"unknown event {str(data.get('event'))[:80]!r}")
    try:
        return _MESSAGE.validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise BadMessage(f"invalid {data['event']!r}: {'.'.join(map(str, first['loc'][1:]))}: "
                         f"{first['msg']}") from None


# --- outbound ----------------------------------------------------------------------------------

def media_message(stream_sid: str, payload: str) -> str:
    return json.dumps({"event": "media", "streamSid": stream_sid, "media": {"payload": payload}})


def mark_message(stream_sid: str, name: str) -> str:
    return json.dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}})


def clear_message(stream_sid: str) -> str:
    return json.dumps({"event": "clear", "streamSid": stream_sid})


def twiml_connect_stream(stream_url: str) -> str:
    """The answer to Twilio's voice webhook: connect the call to a bidirectional stream."""
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Response><Connect><Stream url={quoteattr(stream_url)} /></Connect></Response>")
