"""A Python WebRTC caller (aiortc): what the e2e tests and ``quillman bench --transport webrtc`` use.

It does what a browser does: a microphone track (here: samples queued by :meth:`say`, silence
otherwise, paced in real time), the ``oai-events`` data channel, the SDP exchange over
``POST /v1/realtime/calls``, and the reply track recorded frame by frame with arrival times.
"""

from __future__ import annotations

import asyncio
import collections
import fractions
import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import av
import httpx
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from quillman.audio import resample
from quillman.webrtc.pacing import FRAME_SAMPLES, RATE_HZ, FrameClock

SILENT_RMS = 30.0  # int16 RMS under this counts as silence (Opus's noise floor on digital zero is ~0)


class MicTrack(MediaStreamTrack):
    """Queued speech at 48 kHz, silence between, one 20 ms frame per 20 ms."""

    kind = "audio"

    def __init__(self):
        super().__init__()
        self._queue: collections.deque[np.ndarray] = collections.deque()
        self._clock = FrameClock()
        self.spoken_until: float | None = None  # when the last queued sample goes out

    def say(self, pcm: np.ndarray, rate_hz: int) -> float:
        """Queue speech; returns when (monotonic) its last sample will have been sent."""
        pcm48 = resample(np.asarray(pcm, dtype=np.int16), rate_hz, RATE_HZ)
        queued = sum(len(p) for p in self._queue)
        self._queue.append(pcm48)
        self.spoken_until = time.monotonic() + (queued + len(pcm48)) / RATE_HZ
        return self.spoken_until

    @property
    def speaking(self) -> bool:
        return bool(self._queue)

    def sent_at(self, audio_ms: float) -> float | None:
        """When (monotonic) the sample at ``audio_ms`` of this track's timeline went out: the
        server's input timeline (``speech_stopped.audio_end_ms``) counts from its first frame."""
        start = self._clock.start
        return None if start is None else start + audio_ms / 1000

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        pts = await self._clock.tick()
        out = np.zeros(FRAME_SAMPLES, dtype=np.int16)
        filled = 0
        while filled < FRAME_SAMPLES and self._queue:
            head = self._queue[0]
            n = min(FRAME_SAMPLES - filled, len(head))
            out[filled:filled + n] = head[:n]
            filled += n
            if n == len(head):
                self._queue.popleft()
            else:
                self._queue[0] = head[n:]
        frame = av.AudioFrame.from_ndarray(out.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = RATE_HZ, pts, fractions.Fraction(1, RATE_HZ)
        return frame


@dataclass
class Heard:
    """The reply track as received: 20 ms mono frames at 48 kHz with their arrival times."""

    frames: list[np.ndarray] = field(default_factory=list)
    times: list[float] = field(default_factory=list)

    def audio(self, since: float = 0.0, until: float = float("inf")) -> np.ndarray:
        picked = [f for f, t in zip(self.frames, self.times) if since <= t < until]
        return np.concatenate(picked) if picked else np.zeros(0, dtype=np.int16)

    def first_sound(self, since: float, level: float = SILENT_RMS) -> float | None:
        for frame, t in zip(self.frames, self.times):
            if t >= since and _rms(frame) > level:
                return t
        return None

    def last_sound(self) -> float | None:
        for frame, t in zip(reversed(self.frames), reversed(self.times)):
            if _rms(frame) > SILENT_RMS:
                return t
        return None


def _rms(frame: np.ndarray) -> float:
    return float(np.sqrt(np.mean(frame.astype(np.float64) ** 2))) if len(frame) else 0.0


class WebRtcCaller:
    def __init__(self, base_url: str, key: str | None = None, session: dict[str, Any] | None = None,
                 raw_sdp: bool = False, jitter_buffer_frames: int | None = 2):
        """``jitter_buffer_frames``: the reply track's receive buffer (None: aiortc's 80 ms); 2
        stands in for a browser's adaptive buffer on a clean network."""
        self.jitter_buffer_frames = jitter_buffer_frames
        self.base_url = base_url.rstrip("/")
        self.key = key
        self.session = session
        self.raw_sdp = raw_sdp
        self.pc = RTCPeerConnection()
        self.mic = MicTrack()
        self.heard = Heard()
        self.events: list[dict[str, Any]] = []
        self._new_event = asyncio.Condition()  # notified at each event and each frame heard
        self.call_id: str | None = None
        self._tasks: list[asyncio.Task] = []
        self.channel = None

    async def __aenter__(self) -> WebRtcCaller:
        await self.connect()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def offer(self) -> str:
        self.channel = self.pc.createDataChannel("oai-events")
        self.channel.on("message", self._on_message)
        self.pc.addTrack(self.mic)
        if self.jitter_buffer_frames is not None:
            from quillman.webrtc.media import set_jitter_buffer

            for transceiver in self.pc.getTransceivers():
                set_jitter_buffer(transceiver.receiver, self.jitter_buffer_frames)
        self.pc.on("track", lambda track: self._tasks.append(asyncio.create_task(self._record(track))))
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def post_offer(self, sdp: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        async with httpx.AsyncClient(timeout=60) as http:
            if self.raw_sdp and self.session is None:
                return await http.post(self.base_url + "/v1/realtime/calls", content=sdp,
                                       headers={**headers, "Content-Type": "application/sdp"})
            files = {"sdp": (None, sdp, "application/sdp")}
            if self.session is not None:
                files["session"] = (None, json.dumps(self.session), "application/json")
            return await http.post(self.base_url + "/v1/realtime/calls", files=files, headers=headers)

    async def connect(self, timeout_s: float = 30.0) -> None:
        response = await self.post_offer(await self.offer())
        if response.status_code != 201:
            await self.pc.close()
            raise CallRefused(response.status_code, response)
        await self.accept(response.text, response.headers["location"].rstrip("/").rsplit("/", 1)[-1])
        await self.wait_for("session.created", timeout_s)

    async def accept(self, answer_sdp: str, call_id: str | None = None) -> None:
        self.call_id = call_id
        await self.pc.setRemoteDescription(RTCSessionDescription(answer_sdp, "answer"))

    def send(self, event: dict[str, Any]) -> None:
        self.channel.send(json.dumps(event))

    def say(self, pcm: np.ndarray, rate_hz: int) -> float:
        return self.mic.say(pcm, rate_hz)

    def _on_message(self, message: str | bytes) -> None:
        event = json.loads(message)
        event["_t"] = time.monotonic()
        self.events.append(event)
        asyncio.ensure_future(self._notify())

    async def _notify(self) -> None:
        async with self._new_event:
            self._new_event.notify_all()

    async def wait_for(self, event_type: str, timeout_s: float, since: int = 0, **match: Any) -> dict[str, Any]:
        """The first event of ``event_type`` at index >= ``since`` whose fields match."""
        async def found():
            while True:
                for event in self.events[since:]:
                    if event["type"] == event_type and all(event.get(k) == v for k, v in match.items()):
                        return event
                async with self._new_event:
                    await self._new_event.wait()
        return await asyncio.wait_for(found(), timeout_s)

    async def until(self, condition: Callable[[], object], timeout_s: float) -> None:
        """Until ``condition()`` holds, looked at again at each event and each frame heard."""
        async def holds() -> None:
            async with self._new_event:
                await self._new_event.wait_for(condition)
        await asyncio.wait_for(holds(), timeout_s)

    async def _record(self, track) -> None:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE_HZ)
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            now = time.monotonic()
            for out in resampler.resample(frame):
                self.heard.frames.append(out.to_ndarray().reshape(-1).copy())
                self.heard.times.append(now)
            await self._notify()

    async def close(self) -> None:
        self.mic.stop()
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class CallRefused(Exception):
    def __init__(self, status: int, response: httpx.Response):
        try:
            self.code = response.json()["error"]["code"]
        except (ValueError, KeyError, TypeError):
            self.code = None
        super().__init__(f"HTTP {status}: {response.text[:300]}")
        self.status = status
