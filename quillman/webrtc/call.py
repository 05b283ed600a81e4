"""One WebRTC call: a peer connection in front of one RealtimeSession, from offer to hang-up.

Lifetime: :meth:`Call.answer` negotiates (the offer in, our answer with every ICE candidate
out: no trickle, as the GA API answers) and :meth:`Call.run` serves the session until the call
ends: the peer connection fails or closes, the caller's track or data channel ends, ICE and
DTLS do not complete within ``connect_timeout_s``, the session ends itself (idle, too slow), or
the server hangs up (:meth:`hang_up`). Whatever ends it, ``run`` closes the peer connection and
cancels every task of the call; :data:`COUNTS` proves nothing is left (``/healthz``).

Sideband: server-side applications may watch and steer the call over a websocket
(``/v1/realtime?call_id=…``): :meth:`attach` adds its ``send``, and its events go into the same
inbox as the data channel's.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter
from collections.abc import Awaitable, Callable

from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)

from quillman import errors, protocol
from quillman.pipeline.playback import PlaybackBuffer
from quillman.pipeline.session import RealtimeSession
from quillman.webrtc.channel import LABEL, EventChannel, Inbox, client_event
from quillman.webrtc.media import RATE_HZ, ReplyTrack, pump_input, set_jitter_buffer
from quillman.webrtc.signalling import Offer

logger = logging.getLogger(__name__)

# Live objects of this process, for leak checks: peer connections created and not yet closed,
# calls between answer and the end of run().
COUNTS: Counter[str] = Counter()


def new_call_id() -> str:
    return protocol.new_id("rtc")


def udp_sockets() -> int:
    """UDP sockets this process holds (Linux; -1 elsewhere): what ICE binds, one per candidate."""
    try:
        inodes = set()
        for name in ("udp", "udp6"):
            with open(f"/proc/net/{name}") as table:
                inodes |= {line.split()[9] for line in list(table)[1:]}
        held = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                held += 1
        return held
    except OSError:
        return -1


class Call:
    def __init__(self, call_id: str, make_session: Callable[[Callable[[str], Awaitable[None]], PlaybackBuffer], RealtimeSession],
                 rtc_config: RTCConfiguration, connect_timeout_s: float, max_event_backlog: int,
                 jitter_buffer_frames: int = 2):
        self.id = call_id
        self.buffer = PlaybackBuffer(emit=lambda event: self.session.emit(event), rate_hz=RATE_HZ)
        self.session = make_session(self._send, self.buffer)
        self.inbox = Inbox(max_event_backlog)
        self.track = ReplyTrack(self.buffer)
        self.connect_timeout_s = connect_timeout_s
        self.jitter_buffer_frames = jitter_buffer_frames
        self.pc = RTCPeerConnection(rtc_config)
        COUNTS["peer_connections"] += 1
        self._pc_closed = False
        self.channel: EventChannel | None = None
        self._ready = asyncio.Event()  # events may flow: the data channel is open
        self._sidebands: dict[int, Callable[[str], Awaitable[None]]] = {}
        self._tasks: set[asyncio.Task] = set()
        self.end_reason = "open"
        self.ended = asyncio.Event()  # set once closed: sideband sockets follow
        self.pc.on("datachannel", self._on_channel)
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_state)

    # --- negotiation ----------------------------------------------------------------------------

    async def answer(self, offer: Offer) -> str:
        """Our SDP answer (all candidates in it); InvalidSdp if the offer cannot be negotiated."""
        self._has_channel = offer.has_data_channel
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(offer.sdp, "offer"))
            self.pc.addTrack(self.track)
            opus = [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType.lower() == "audio/opus"]
            for transceiver in self.pc.getTransceivers():
                if transceiver.kind == "audio":
                    transceiver.setCodecPreferences(opus)
                    set_jitter_buffer(transceiver.receiver, self.jitter_buffer_frames)
            await self.pc.setLocalDescription(await self.pc.createAnswer())
        except (ValueError, AttributeError, IndexError, KeyError, TypeError) as exc:
            # aiortc's SDP parser raises these for malformed lines; none is ours to show.
            await self.close("bad offer")
            raise errors.InvalidSdp(f"the SDP offer cannot be negotiated: {type(exc).__name__}") from None
        except Exception as exc:  # noqa: BLE001 - e.g. no codec in common: the offer's fault too
            await self.close("bad offer")
            logger.info("[%s] offer refused: %r", self.id, exc)
            raise errors.InvalidSdp("the SDP offer cannot be negotiated (Opus audio is required)") from None
        if "opus/48000" not in self.pc.localDescription.sdp.lower():
            await self.close("bad offer")  # no codec in common: aiortc would answer with none
            raise errors.InvalidSdp("the offer's audio has no Opus (48 kHz): it is the codec a call uses")
        if not self._has_channel:
            self._ready.set()  # audio only: the session's events have nowhere to go
        return self.pc.localDescription.sdp

    # --- serving ----------------------------------------------------------------------------------

    async def run(self) -> int:
        COUNTS["calls"] += 1
        self._spawn(self._connect_watchdog(), "connect-watchdog")
        try:
            return await self.session.run(self.inbox.get)
        finally:
            await self.close(self.end_reason if self.end_reason != "open" else "session ended")
            COUNTS["calls"] -= 1

    async def close(self, reason: str) -> None:
        """End the call: no more input, the peer connection and every task of the call closed."""
        if self.end_reason == "open":
            self.end_reason = reason
            logger.info("[%s] call ending: %s", self.id, reason)
        self.inbox.close()
        self.track.stop()
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if not self._pc_closed:
            self._pc_closed = True
            try:
                await self.pc.close()
            finally:
                COUNTS["peer_connections"] -= 1
                self.ended.set()

    def hang_up(self, reason: str = "hung up") -> None:
        if self.end_reason == "open":
            self.end_reason = reason
        self.inbox.close()
        self._ready.set()  # a session still waiting to send gives up at once

    def _spawn(self, coro, name: str) -> asyncio.Task:
        task = asyncio.create_task(coro, name=f"{self.id}-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _connect_watchdog(self) -> None:
        try:
            await asyncio.wait_for(self._ready.wait(), self.connect_timeout_s)
        except TimeoutError:
            logger.info("[%s] ICE/DTLS did not complete within %g s", self.id, self.connect_timeout_s)
            self.hang_up("connect timeout")

    def _on_state(self) -> None:
        state = self.pc.connectionState
        logger.info("[%s] connection %s", self.id, state)
        if state in ("failed", "closed"):
            self.hang_up(f"connection {state}")

    def _on_track(self, track) -> None:
        if track.kind != "audio" or any(t.get_name().endswith("-input") for t in self._tasks):
            return  # one audio track is the call's input; others are ignored
        self._spawn(self._pump(track), "input")

    async def _pump(self, track) -> None:
        await pump_input(track, lambda: self.session.settings.input_rate_hz, self.inbox.put_audio)
        self.hang_up("caller's track ended")

    def _on_channel(self, channel) -> None:
        if channel.label != LABEL or self.channel is not None:
            logger.info("[%s] data channel %r refused (only one %r)", self.id, channel.label, LABEL)
            channel.close()
            return
        self.channel = EventChannel(channel)
        channel.on("message", self.receive_event)
        channel.on("close", lambda: self.hang_up("data channel closed"))
        self._ready.set()

    # --- events -------------------------------------------------------------------------------------

    def receive_event(self, frame: str | bytes) -> None:
        """A client event from the data channel or a sideband socket."""
        event = client_event(frame, self.session.limits, self.session.error)
        if event is None:
            return
        if not self.inbox.put_event(event) and self.inbox.new_burst:
            self.session.error(errors.RateLimited(
                f"more than {self.inbox.max_events} events are waiting to be handled; events are "
                "refused until they drain", event_id=event.event_id))

    async def _send(self, frame: str) -> None:
        """The session's ``send``: the data channel, then every sideband socket."""
        await self._ready.wait()
        if self.channel is not None and self.open:
            await self.channel.send(frame)
        for key, send in list(self._sidebands.items()):
            try:
                await send(frame)
            except Exception:  # noqa: BLE001 - that socket is gone; its handler detaches it
                self._sidebands.pop(key, None)

    def attach(self, send: Callable[[str], Awaitable[None]]) -> int:
        key = id(send)
        self._sidebands[key] = send
        return key

    def detach(self, key: int) -> None:
        self._sidebands.pop(key, None)

    @property
    def open(self) -> bool:
        return self.end_reason == "open"
