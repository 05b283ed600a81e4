"""The official ``openai`` SDK's realtime client in the end-to-end tests: the one home of the
client, the live-paced microphone and the event loop up to ``response.done``."""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import numpy as np
import pytest
from openai import AsyncOpenAI

def sdk_client(server_url: str) -> AsyncOpenAI:
    """The SDK pointed at a local server (http://127.0.0.1:port): its websocket base is /v1."""
    return AsyncOpenAI(api_key="unused-locally", websocket_base_url=server_url.replace("http://", "ws://") + "/v1")


def pcm16_base64(frame: np.ndarray) -> str:
    return base64.b64encode(frame.astype("<i2").tobytes()).decode()


async def speak(connection, pcm: np.ndarray, stop: asyncio.Event, rate_hz: int = 24000, frame_ms: int = 40,
                encode: Callable[[np.ndarray], str] = pcm16_base64) -> None:
    """Live-paced mic: the question, then silence until told to stop (at most 120 s), in
    ``frame_ms`` frames of ``rate_hz`` audio (``encode``: base64 of the session's format)."""
    loop = asyncio.get_running_loop()
    chunk = rate_hz * frame_ms // 1000
    start, sent = loop.time(), 0.0
    position = 0
    while not stop.is_set() and sent < 120:
        frame = np.pad(pcm[position:position + chunk], (0, max(0, chunk - len(pcm[position:]))))
        position += chunk
        await connection.input_audio_buffer.append(audio=encode(frame))
        sent += chunk / rate_hz
        await asyncio.sleep(max(0.0, start + sent - loop.time()))


@dataclass
class Reply:
    """What the client saw of one response, event by event."""

    response: Any = None  # response.done's response: the SDK's model, or a dict from raw frames
    transcript: str = ""  # the reply's audio transcript (or its text, for text replies)
    audio_bytes: int = 0
    user_transcript: str | None = None
    types: list[str] = field(default_factory=list)

    def see(self, event: Any) -> bool:
        """Take one server event (an SDK model or its JSON dict); True at ``response.done``.
        An ``error`` event fails the test."""
        get = event.get if isinstance(event, dict) else lambda name: getattr(event, name)
        kind = get("type")
        self.types.append(kind)
        if kind in ("response.output_audio_transcript.delta", "response.output_text.delta"):
            self.transcript += get("delta")
        elif kind == "response.output_audio.delta":
            self.audio_bytes += len(base64.b64decode(get("delta")))
        elif kind == "conversation.item.input_audio_transcription.completed":
            self.user_transcript = get("transcript")
        elif kind == "error":
            pytest.fail(f"server error {get('error')}")
        elif kind == "response.done":
            self.response = get("response")
            return True
        return False


async def until_done(connection, on_event: Callable[[Any], Awaitable[None]] | None = None) -> Reply:
    """The connection's events up to ``response.done`` (``on_event`` sees each first)."""
    reply = Reply()
    async for event in connection:
        if on_event is not None:
            await on_event(event)
        if reply.see(event):
            return reply
    pytest.fail("the connection closed before response.done")


async def spoken_reply(connection, pcm: np.ndarray, on_event: Callable[[Any], Awaitable[None]] | None = None,
                       **audio_format: Any) -> Reply:
    """Speak ``pcm`` at live pace (then silence, as an open mic; ``audio_format``: :func:`speak`'s
    rate, frame and encoding) until the reply is done."""
    stop = asyncio.Event()
    mic = asyncio.create_task(speak(connection, pcm, stop, **audio_format))
    try:
        return await until_done(connection, on_event)
    finally:
        stop.set()
        await mic
