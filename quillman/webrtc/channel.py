"""The ``oai-events`` data channel <-> the session, and the call's inbox.

Client events come as JSON text, exactly as over the websocket, minus the audio the track
replaces (``input_audio_buffer.append`` is refused here). Each is parsed once, here, and the
session gets the typed event. Server events go out as the session serialized them, one message
each; a peer that stops reading fills SCTP's buffer, and ``send`` then waits, so the session's
bounded outbox (``client_too_slow``) applies as on a websocket.

The inbox is what the session's receive loop reads: typed events from the channel and from any
sideband socket, audio frames from the track, None at the end. A channel flooding events faster
than the session handles them gets ``rate_limit_exceeded`` for the excess (one error per burst)
instead of growing memory; audio is bounded separately (the oldest dropped, as a jitter buffer
would).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable

from quillman import errors, protocol
from quillman.pipeline.session import ClientInput, PcmFrame

logger = logging.getLogger(__name__)

LABEL = "oai-events"
HIGH_WATER_BYTES = 1 << 20  # SCTP bytes queued for the peer before send() waits
LOW_WATER_BYTES = 256 << 10
MAX_AUDIO_FRAMES = 1500  # 30 s of 20 ms frames waiting for the session: it is stalled


class Inbox:
    """What the session reads next; bounded per kind."""

    def __init__(self, max_events: int):
        self.max_events = max_events
        self._items: collections.deque[ClientInput | None] = collections.deque()
        self._ready = asyncio.Event()
        self.events = 0  # client events waiting
        self.audio = 0
        self.flooding = False
        self.new_burst = False  # the last refusal started a burst (the one that gets an error)
        self.refused = 0
        self.dropped_audio = 0
        self.closed = False

    def put_event(self, event: protocol.ClientEvent) -> bool:
        """False (refused) past ``max_events`` waiting; taken again below half of it."""
        if self.closed:
            return True
        if self.flooding and self.events < self.max_events // 2:
            self.flooding = False
        if self.events >= self.max_events:
            self.new_burst = not self.flooding
            self.flooding, self.refused = True, self.refused + 1
            return False
        self.events += 1
        self._push(event)
        return True

    def put_audio(self, frame: PcmFrame) -> None:
        if self.closed:
            return
        if self.audio >= MAX_AUDIO_FRAMES:
            for i, item in enumerate(self._items):
                if isinstance(item, PcmFrame):
                    del self._items[i]
                    self.audio -= 1
                    self.dropped_audio += 1
                    break
        self.audio += 1
        self._push(frame)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._push(None)

    def _push(self, item: ClientInput | None) -> None:
        self._items.append(item)
        self._ready.set()

    async def get(self) -> ClientInput | None:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        item = self._items.popleft()
        if isinstance(item, PcmFrame):
            self.audio -= 1
        elif item is not None:
            self.events -= 1
        else:
            self._items.append(None)  # stays the end for any later reader
        return item


def client_event(frame: str | bytes, limits, refuse: Callable[[errors.QuillmanError], None]) -> protocol.ClientEvent | None:
    """One data-channel (or sideband) message as a typed event; refused ones go to ``refuse``."""
    event_id = None
    try:
        limits.check_frame(frame)
        event = protocol.parse_client_event(frame)
        event_id = event.event_id
        if event.type in protocol.TRACK_REPLACED_CLIENT_TYPES:
            raise errors.UnsupportedEvent(
                f"{event.type} is not taken on a WebRTC call: the audio track carries the input audio",
                param="type")
        return event
    except errors.QuillmanError as exc:
        if exc.event_id is None:
            exc.event_id = event_id
        refuse(exc)
        return None


class EventChannel:
    """Server events onto the data channel, with backpressure."""

    def __init__(self, channel):
        self.channel = channel
        self._drained = asyncio.Event()
        self._drained.set()
        channel.bufferedAmountLowThreshold = LOW_WATER_BYTES
        channel.on("bufferedamountlow", self._drained.set)

    async def send(self, frame: str) -> None:
        if self.channel.readyState != "open":
            return  # closing: the call is ending
        while self.channel.bufferedAmount > HIGH_WATER_BYTES:
            self._drained.clear()
            await self._drained.wait()
        self.channel.send(frame)
