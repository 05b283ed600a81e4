"""A bench caller over WebRTC: :class:`~quillman.webrtc.caller.WebRtcCaller` behind the same
``connect`` / ``talk`` / ``stream_audio`` / ``close`` that ``quillman bench`` uses with the
websocket client, so one sweep measures both transports on the same run.

Latency is taken where the websocket client takes it, as far as the transport lets it: from the
moment the last speech sample goes out on the microphone track to the first audible reply frame
arriving on the reply track (the server paces that track in real time, so the first frame that
arrives is the first one played). The reply audio is what the track carried from
``output_audio_buffer.started`` to ``stopped``.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import numpy as np

from quillman.audio import resample
from quillman.client import TurnResult
from quillman.webrtc.caller import RATE_HZ, WebRtcCaller

TAIL_S = 0.2  # after output_audio_buffer.stopped, frames still in flight


def http_base(url: str) -> str:
    """The server's http base from bench's Realtime websocket URL."""
    base = url.replace("wss://", "https://").replace("ws://", "http://")
    for suffix in ("/v1/realtime", "/pipeline"):
        base = base.removesuffix(suffix)
    return base.rstrip("/")


class WebRtcTalker:
    rate = 24000

    def __init__(self, url: str, turn_detection: dict[str, Any] | None):
        self.base = http_base(url)
        self.turn_detection = turn_detection
        self.caller: WebRtcCaller | None = None
        self.session: dict[str, Any] = {}

    async def connect(self, session: dict[str, Any] | None = None) -> None:
        config: dict[str, Any] = {"type": "realtime", **(session or {})}
        if self.turn_detection is not None:
            config["audio"] = {"input": {"turn_detection": self.turn_detection}}
        self.caller = WebRtcCaller(self.base, key=os.environ.get("QUILLMAN_API_KEY"), session=config)
        try:
            await self.caller.connect()
        except BaseException:
            await self.caller.close()
            raise
        created = next(e for e in self.caller.events if e["type"] == "session.created")
        self.session = created["session"]

    async def talk(self, pcm: np.ndarray, sample_rate_hz: int, timeout: float) -> TurnResult:
        caller = self.caller
        since = len(caller.events)
        spoken_until = caller.say(pcm, sample_rate_hz)
        result = TurnResult(sample_rate_hz=RATE_HZ)
        done = await caller.wait_for("response.done", timeout, since)
        response = done["response"]
        result.response, result.status = response, response.get("status", "none")
        result.timings = response.get("timings") or {}
        result.reply_text = "".join(p.get("transcript") or p.get("text") or "" for item in response.get("output", [])
                                    for p in item.get("content", []))
        events = caller.events[since:]
        result.errors = [e["error"] for e in events if e["type"] == "error"]
        started = next((e for e in events if e["type"] == "output_audio_buffer.started"
                        and e["response_id"] == response["id"]), None)
        if started is not None:
            stopped = await caller.wait_for("output_audio_buffer.stopped", timeout, since, response_id=response["id"])
            await asyncio.sleep(TAIL_S)
            result.reply_audio = caller.heard.audio(since=started["_t"] - 0.1, until=stopped["_t"] + TAIL_S)
            first = caller.heard.first_sound(spoken_until)
            if first is not None:
                result.latency_ms = round((first - spoken_until) * 1000, 1)
        try:
            heard = await caller.wait_for("conversation.item.input_audio_transcription.completed", 10, since)
            result.user_transcript = heard.get("transcript")
        except TimeoutError:
            pass
        result.events = [e for e in caller.events[since:]]
        return result

    async def stream_audio(self, pcm: np.ndarray, pad_silence_s: float = 0.0) -> None:
        """Speech (if any), then silence: the microphone track sends silence by itself."""
        if len(pcm):
            self.caller.say(resample(pcm, self.rate, RATE_HZ), RATE_HZ)
        await asyncio.sleep(pad_silence_s + len(pcm) / self.rate)

    async def close(self) -> None:
        if self.caller is not None:
            await self.caller.close()
            self.caller = None
