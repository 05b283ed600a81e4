"""A simulated Twilio Media Stream: what Twilio sends and does during a phone call.

It sends ``connected`` and ``start`` (μ-law 8 kHz mono), the caller's speech as 20 ms ``media``
frames at live pace, and ``stop``. It *plays* the server's ``media`` at real time, as a phone
does, and echoes each ``mark`` once the audio before it has been played; a ``clear`` drops the
audio not yet played. The end-to-end tests and ``quillman_bench.telephony`` use it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import websockets

from quillman.audio import PCMU, decode_audio_base64, encode_audio_base64, resample

FRAME_BYTES = 160  # 20 ms of 8 kHz μ-law
RATE_HZ = 8000


@dataclass
class Played:
    """One reply item as the caller heard it."""

    item_id: str
    audio: list[np.ndarray] = field(default_factory=list)
    first_audio_at: float | None = None  # perf_counter when its first media arrived
    cleared: bool = False

    def pcm(self) -> np.ndarray:
        return np.concatenate(self.audio) if self.audio else np.zeros(0, np.int16)


class TwilioCaller:
    def __init__(self, url: str, custom_parameters: dict[str, str] | None = None,
                 headers: dict[str, str] | None = None):
        self.url = url
        self.headers = headers
        self.stream_sid = "MZ" + uuid.uuid4().hex
        self.call_sid = "CA" + uuid.uuid4().hex
        self.custom_parameters = custom_parameters or {}
        self.ws: Any = None
        self.received: list[dict] = []  # every message from the server, with "_at"
        self.replies: dict[str, Played] = {}  # by item id, in arrival order
        self.marks_echoed: list[str] = []
        self.speech_ended_at: float | None = None  # when the last question's audio was sent
        self._queue: list[tuple[bytes, str | None]] = []  # unplayed audio chunks, then their mark
        self._sequence = 0
        self._tasks: list[asyncio.Task] = []
        self.closed = asyncio.Event()

    async def __aenter__(self) -> "TwilioCaller":
        self.ws = await websockets.connect(self.url, max_size=None, open_timeout=30,
                                           additional_headers=self.headers)
        self._tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._play())]
        await self.send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        await self.send({"event": "start", "streamSid": self.stream_sid, "start": {
            "accountSid": "AC" + "0" * 32, "streamSid": self.stream_sid, "callSid": self.call_sid,
            "tracks": ["inbound"], "customParameters": self.custom_parameters,
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": RATE_HZ, "channels": 1}}})
        return self

    async def __aexit__(self, *exc: Any) -> None:
        try:
            await self.send({"event": "stop", "streamSid": self.stream_sid,
                             "stop": {"accountSid": "AC" + "0" * 32, "callSid": self.call_sid}})
        except websockets.ConnectionClosed:
            pass
        await self.ws.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def send(self, message: dict | str) -> None:
        if isinstance(message, dict) and message.get("event") not in ("connected",):
            self._sequence += 1
            message = {**message, "sequenceNumber": str(self._sequence)}
        await self.ws.send(message if isinstance(message, str) else json.dumps(message))

    async def speak(self, pcm: np.ndarray, sample_rate_hz: int, silence_after_s: float = 0.0) -> None:
        """Send speech (any rate; sent as 8 kHz μ-law) at live pace, then some silence."""
        pcm8 = resample(np.asarray(pcm, np.int16), sample_rate_hz, RATE_HZ)
        pcm8 = np.concatenate([pcm8, np.zeros(int(silence_after_s * RATE_HZ), np.int16)])
        start = time.perf_counter()
        for n, offset in enumerate(range(0, len(pcm8), FRAME_BYTES)):
            payload = encode_audio_base64(pcm8[offset:offset + FRAME_BYTES], PCMU)
            await self.send({"event": "media", "streamSid": self.stream_sid, "media": {
                "track": "inbound", "chunk": str(n + 1), "timestamp": str(n * 20), "payload": payload}})
            if offset + FRAME_BYTES >= len(pcm8) - int(silence_after_s * RATE_HZ):
                self.speech_ended_at = self.speech_ended_at or time.perf_counter()
            await asyncio.sleep(max(0.0, start + (n + 1) * 0.02 - time.perf_counter()))

    async def silence(self, seconds: float) -> None:
        await self.speak(np.zeros(0, np.int16), RATE_HZ, silence_after_s=seconds)

    async def _read(self) -> None:
        pending: list[np.ndarray] = []  # media since the last mark (the mark names its item)
        pending_at: float | None = None
        try:
            async for text in self.ws:
                message = json.loads(text)
                message["_at"] = time.perf_counter()
                self.received.append(message)
                match message["event"]:
                    case "media":
                        chunk = base64.b64decode(message["media"]["payload"])
                        pending.append(decode_audio_base64(message["media"]["payload"], PCMU))
                        pending_at = pending_at or message["_at"]
                        self._queue.append((chunk, None))
                    case "mark":
                        name = message["mark"]["name"]
                        reply = self.replies.setdefault(name.rpartition(":")[0], Played(name.rpartition(":")[0]))
                        reply.first_audio_at = reply.first_audio_at or pending_at
                        reply.audio.extend(pending)
                        pending, pending_at = [], None
                        self._queue.append((b"", name))
                    case "clear":
                        # Twilio drops what it has not played and returns those marks at once.
                        marks = [name for _, name in self._queue if name]
                        for name in marks:
                            self.replies[name.rpartition(":")[0]].cleared = True
                        self._queue.clear()
                        for name in marks:
                            await self._echo(name)
        finally:
            self.closed.set()

    async def _echo(self, name: str) -> None:
        self.marks_echoed.append(name)
        await self.send({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}})

    async def _play(self) -> None:
        """The phone's speaker: audio at real time; a mark is echoed when playback reaches it."""
        while True:
            if not self._queue:
                await asyncio.sleep(0.005)
                continue
            chunk, name = self._queue.pop(0)
            if name is not None:
                await self._echo(name)
            else:
                await asyncio.sleep(len(chunk) / RATE_HZ)

    def events(self, kind: str) -> list[dict]:
        return [m for m in self.received if m["event"] == kind]

    async def wait_for_reply(self, after: float, quiet_s: float = 2.0, timeout: float = 90.0) -> Played | None:
        """The first reply whose audio began after ``after`` (perf_counter), once it has been
        played out: nothing new for ``quiet_s``."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            await asyncio.sleep(0.1)
            late = [r for r in self.replies.values() if r.first_audio_at and r.first_audio_at >= after]
            last = max((m["_at"] for m in self.received), default=0.0)
            if late and not self._queue and time.perf_counter() - last > quiet_s:
                return late[0]
        return None
