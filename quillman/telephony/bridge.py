"""One phone call: Twilio Media Streams messages <-> the events of a :class:`RealtimeSession`.

Not a second pipeline: the bridge is the session's client. Twilio's ``start`` becomes a
``session.update`` to μ-law in and out, each ``media`` an ``input_audio_buffer.append`` (its
payload is already base64 8 kHz μ-law, the session's ``audio/pcmu``), and the session's
``response.output_audio.delta`` events go to the caller as ``media``, each followed by a ``mark``
named ``<item_id>:<ms sent so far>``. Twilio echoes a mark once the caller has heard the audio
before it, so the last echoed mark says how much of a reply was heard.

Barge-in: the session cancels the reply itself when the caller starts talking
(``speech_started``); the bridge then sends ``clear`` (drop what Twilio has buffered but not
played) and, once that reply is done, ``conversation.item.truncate`` to what was heard, so the
conversation holds only the words the caller got.

Bad frames (not JSON, unknown event, media before start, bad base64) are logged and ignored; a
``stop`` or the socket closing ends the session.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from typing import Awaitable, Callable

from quillman.telephony import twilio_protocol as twilio

logger = logging.getLogger(__name__)

MS_PER_BYTE = 1000 / twilio.TWILIO_RATE_HZ  # μ-law: one byte per sample


def session_update_for_call(start: twilio.StartInfo) -> str:
    """The session a call gets: μ-law both ways (what Twilio streams)."""
    formats = {"type": "audio/pcmu"}
    return json.dumps({"type": "session.update", "session": {
        "type": "realtime", "audio": {"input": {"format": formats}, "output": {"format": formats}}}})


class TwilioBridge:
    def __init__(self, send_twilio: Callable[[str], Awaitable[None]]):
        self._send_twilio = send_twilio
        self.stream_sid: str | None = None
        self.call_sid: str | None = None
        self.custom_parameters: dict[str, str] = {}
        self._inbox: asyncio.Queue[str | None] = asyncio.Queue()
        self._sent_ms: dict[str, float] = {}  # reply item -> ms of its audio sent to Twilio
        self._heard_ms: dict[str, float] = {}  # reply item -> ms the caller heard (echoed marks)
        self._unplayed: dict[str, int] = {}  # reply item -> marks sent, not yet echoed
        self._cleared: set[str] = set()  # items cut off by a barge-in: no more audio, marks ignored
        self._open_items: set[str] = set()  # items of responses not yet done
        self._truncate_after: dict[str, float] = {}  # item -> heard ms, truncated once it is done
        self.ignored = 0  # frames logged and ignored (for tests and the log)

    # --- Twilio -> session ---------------------------------------------------------------------

    async def run(self, session, receive: Callable[[], Awaitable[str | bytes | None]]) -> int:
        """Serve the call until Twilio stops it or the socket closes; the session's close code."""
        pump = asyncio.create_task(self._pump(receive), name=f"{session.id}-twilio")
        try:
            return await session.run(self._inbox.get)
        finally:
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)

    async def _pump(self, receive: Callable[[], Awaitable[str | bytes | None]]) -> None:
        try:
            while (frame := await receive()) is not None:
                if not self.on_twilio_frame(frame):
                    break
        finally:
            self._inbox.put_nowait(None)  # the session ends

    def on_twilio_frame(self, frame: str | bytes) -> bool:
        """Translate one Twilio message into client events; False once the call is over."""
        try:
            message = twilio.parse_message(frame)
        except twilio.BadMessage as exc:
            return self._ignore(f"bad frame: {exc}")
        match message:
            case twilio.Connected():
                logger.info("twilio connected (protocol %s %s)", message.protocol, message.version)
            case twilio.Start(start=start):
                if self.stream_sid is not None:
                    return self._ignore("a second start")
                fmt = start.media_format
                if (fmt.encoding, fmt.sample_rate, fmt.channels) != (twilio.TWILIO_ENCODING, twilio.TWILIO_RATE_HZ, 1):
                    logger.warning("[%s] stream format %s/%d/%d is not μ-law 8 kHz mono; ending the call",
                                   start.stream_sid, fmt.encoding, fmt.sample_rate, fmt.channels)
                    return False
                self.stream_sid, self.call_sid = start.stream_sid, start.call_sid
                self.custom_parameters = start.custom_parameters
                logger.info("[%s] call %s started", self.stream_sid, self.call_sid)
                self._inbox.put_nowait(session_update_for_call(start))
            case twilio.Media(media=media):
                if self.stream_sid is None:
                    return self._ignore("media before start")
                if media.track not in ("inbound", "inbound_track"):
                    return True  # our own audio echoed on an outbound track: not the caller
                self._inbox.put_nowait(json.dumps({"type": "input_audio_buffer.append", "audio": media.payload}))
            case twilio.Mark(mark=mark):
                self._on_mark(mark.name)
            case twilio.Dtmf(dtmf=dtmf):
                logger.info("[%s] dtmf %s (not used)", self.stream_sid, dtmf.digit)
            case twilio.Stop():
                logger.info("[%s] stop", self.stream_sid)
                return False
        return True

    def _ignore(self, why: str) -> bool:
        self.ignored += 1
        logger.warning("[%s] twilio frame ignored: %s", self.stream_sid or "-", why)
        return True

    def _on_mark(self, name: str) -> None:
        item_id, _, ms = name.rpartition(":")
        try:
            heard = float(ms)
        except ValueError:
            self._ignore(f"mark {name[:80]!r} is not one of ours")
            return
        if item_id in self._cleared or item_id not in self._sent_ms:
            return  # a mark Twilio returns for audio that was cleared: not heard
        self._heard_ms[item_id] = max(self._heard_ms.get(item_id, 0.0), heard)
        self._unplayed[item_id] = max(self._unplayed.get(item_id, 0) - 1, 0)

    # --- session -> Twilio ---------------------------------------------------------------------

    async def on_server_frame(self, frame: str) -> None:
        """The session's ``send``: one server event, as Twilio messages (most are not for Twilio)."""
        event = json.loads(frame)
        match event["type"]:
            case "response.output_audio.delta":
                await self._play(event["item_id"], event["delta"])
            case "response.output_item.added":
                self._open_items.add(event["item"]["id"])
            case "input_audio_buffer.speech_started":
                await self._barge_in()
            case "response.done":
                for item in event["response"].get("output", []):
                    self._open_items.discard(item["id"])
                    self._truncate_if_due(item["id"])
            case "error":
                error = event["error"]
                logger.warning("[%s] session error %s: %s", self.stream_sid or "-", error.get("code"),
                               error.get("message"))

    async def _play(self, item_id: str, payload: str) -> None:
        if self.stream_sid is None or item_id in self._cleared:
            return
        try:
            ms = len(base64.b64decode(payload, validate=True)) * MS_PER_BYTE
        except binascii.Error:
            logger.exception("the session sent audio that is not base64")
            return
        self._sent_ms[item_id] = self._sent_ms.get(item_id, 0.0) + ms
        self._unplayed[item_id] = self._unplayed.get(item_id, 0) + 1
        await self._send_twilio(twilio.media_message(self.stream_sid, payload))
        await self._send_twilio(twilio.mark_message(self.stream_sid, f"{item_id}:{self._sent_ms[item_id]:.0f}"))

    async def _barge_in(self) -> None:
        """The caller talks over a reply still playing: stop it where they are."""
        playing = [item for item, count in self._unplayed.items() if count and item not in self._cleared]
        if self.stream_sid is None or not playing:
            return
        await self._send_twilio(twilio.clear_message(self.stream_sid))
        for item_id in playing:
            heard = self._heard_ms.get(item_id, 0.0)
            logger.info("[%s] barge-in: %s heard %.0f of %.0f ms", self.stream_sid, item_id, heard,
                        self._sent_ms.get(item_id, 0.0))
            self._cleared.add(item_id)
            self._truncate_after[item_id] = heard
            self._truncate_if_due(item_id)

    def _truncate_if_due(self, item_id: str) -> None:
        # The session truncates only finished replies; a cancelled one finishes soon after.
        if item_id in self._truncate_after and item_id not in self._open_items:
            heard = self._truncate_after.pop(item_id)
            self._inbox.put_nowait(json.dumps({"type": "conversation.item.truncate", "item_id": item_id,
                                               "content_index": 0, "audio_end_ms": int(heard)}))
