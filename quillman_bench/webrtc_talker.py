"""A bench caller over WebRTC: :class:`~quillman.webrtc.caller.WebRtcCaller` behind the same
``connect`` / ``talk`` / ``stream_audio`` / ``close`` that ``quillman bench`` uses with the
websocket client, so one sweep measures both transports on the same run.

Latency is taken as the websocket client takes it: from when the sample at the server's
``speech_stopped.audio_end_ms`` went out on the microphone track (the server's input timeline
counts the track's frames from its first) to the first reply frame with any signal arriving on
the reply track (the server paces that track in real time: the first frame that arrives is the
first one played; the websocket client takes the first audio delta, leading silence included). The reply audio is what the track carried from
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
SIGNAL_RMS = 1.0  # a frame with any signal (between replies the track carries digital silence)


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
        caller.say(pcm, sample_rate_hz)
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
            stopped_speech = next((e for e in events if e["type"] == "input_audio_buffer.speech_stopped"), None)
            speech_end = caller.mic.sent_at(stopped_speech["audio_end_ms"]) if stopped_speech else None
            first = caller.heard.first_sound(speech_end, SIGNAL_RMS) if speech_end is not None else None
            if first is not None:
                result.latency_ms = round((first - speech_end) * 1000, 1)
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
