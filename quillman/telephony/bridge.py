"""One phone call: Twilio Media Streams messages <-> a :class:`RealtimeSession`, typed in-process.

Not a second pipeline: the bridge is the session's transport, as a WebRTC call is. Twilio's
``start`` becomes a typed ``session.update`` to μ-law in and out; each ``media`` payload (base64
8 kHz μ-law) is decoded here and handed to the session as a :class:`PcmFrame`. Out, the bridge is
the session's :class:`~quillman.pipeline.playback.Playback`: the reply audio comes to it as
``response.output_audio.delta`` events, never serialized, and goes to the caller as ``media``,
each followed by a ``mark`` named ``<item_id>:<ms sent so far>``. Twilio echoes a mark once the
caller has heard the audio before it, so the last echoed mark says how much of a reply was heard.
The session's other events are not for Twilio (the ingress discards them; errors are logged by
the session).

Barge-in: when the caller starts talking the session cancels the reply and clears its playback:
the bridge sends ``clear`` (drop what Twilio has buffered but not played) and reports what was
heard, and the session truncates the reply there once it is done, so the conversation holds only
the words the caller got.

Bad frames (not JSON, unknown event, media before start, bad base64) are logged and ignored; a
``stop`` or the socket closing ends the session. The only JSON is Twilio's wire.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Awaitable, Callable

from quillman import errors, protocol
from quillman.audio import PCMU, decode_audio_base64
from quillman.pipeline.playback import Cut
from quillman.pipeline.session import ClientInput, PcmFrame
from quillman.telephony import twilio_protocol as twilio

logger = logging.getLogger(__name__)

MS_PER_BYTE = 1000 / twilio.TWILIO_RATE_HZ  # μ-law: one byte per sample


def session_update_for_call(start: twilio.StartInfo) -> protocol.SessionUpdateEvent:
    """The session a call gets: μ-law both ways (what Twilio streams)."""
    fmt = protocol.AudioFormat(type=PCMU)
    return protocol.SessionUpdateEvent(type="session.update", session=protocol.SessionUpdate(
        type="realtime", audio=protocol.SessionAudio(input=protocol.AudioInput(format=fmt),
                                                     output=protocol.AudioOutput(format=fmt))))


def payload_bytes(payload: str) -> int:
    """The length of valid base64's decoded bytes, without decoding it."""
    return len(payload) * 3 // 4 - payload[-2:].count("=")


@dataclass
class _Reply:
    """One reply item's audio sent to Twilio, and what of it the caller has heard."""

    response_id: str
    sent_ms: float = 0.0
    heard_ms: float = 0.0  # the last echoed mark
    unplayed: int = 0  # marks sent, not yet echoed


class TwilioBridge:
    def __init__(self, send_twilio: Callable[[str], Awaitable[None]]):
        self._send_twilio = send_twilio
        self.stream_sid: str | None = None
        self.call_sid: str | None = None
        self.custom_parameters: dict[str, str] = {}
        self._inbox: asyncio.Queue[ClientInput | None] = asyncio.Queue()
        # Twilio messages in order; Playback's methods are synchronous, a task sends them.
        self._outbox: asyncio.Queue[str] = asyncio.Queue()
        self._replies: dict[str, _Reply] = {}  # reply item -> its playback on the call
        self._cleared: set[str] = set()  # responses cut off by a barge-in: later audio dropped
        self.ignored = 0  # frames logged and ignored (for tests and the log)

    async def run(self, session, receive: Callable[[], Awaitable[str | bytes | None]]) -> int:
        """Serve the call until Twilio stops it or the socket closes; the session's close code.
        ``session`` plays its reply audio on this bridge (its ``playback``)."""
        tasks = [asyncio.create_task(self._pump(receive), name=f"{session.id}-twilio-in"),
                 asyncio.create_task(self._write(), name=f"{session.id}-twilio-out")]
        try:
            return await session.run(self._inbox.get)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # --- Twilio -> session ---------------------------------------------------------------------

    async def _pump(self, receive: Callable[[], Awaitable[str | bytes | None]]) -> None:
        try:
            while (frame := await receive()) is not None:
                if not self.on_twilio_frame(frame):
                    break
        finally:
            self._inbox.put_nowait(None)  # the session ends

    def on_twilio_frame(self, frame: str | bytes) -> bool:
        """Translate one Twilio message into the session's input; False once the call is over."""
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
                try:
                    pcm = decode_audio_base64(media.payload, PCMU)  # the session's input format since start
                except errors.InvalidBase64 as exc:
                    return self._ignore(f"media: {exc.message}")
                self._inbox.put_nowait(PcmFrame(pcm))
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
        reply = self._replies.get(item_id)
        if reply is None or reply.response_id in self._cleared:
            return  # a mark Twilio returns for audio that was cleared: not heard
        reply.heard_ms = max(reply.heard_ms, heard)
        reply.unplayed = max(reply.unplayed - 1, 0)

    # --- session -> Twilio: the session's Playback -------------------------------------------

    def play(self, event: protocol.OutputAudioDelta) -> None:
        """A reply's audio (base64 μ-law, the session's output format): ``media`` + ``mark``."""
        if self.stream_sid is None or event.response_id in self._cleared:
            return
        reply = self._replies.setdefault(event.item_id, _Reply(event.response_id))
        reply.sent_ms += payload_bytes(event.delta) * MS_PER_BYTE
        reply.unplayed += 1
        self._outbox.put_nowait(twilio.media_message(self.stream_sid, event.delta))
        self._outbox.put_nowait(twilio.mark_message(self.stream_sid, f"{event.item_id}:{reply.sent_ms:.0f}"))

    def response_finished(self, response_id: str) -> None:
        """Nothing to do: a finished reply may still be playing, its marks still to come."""

    def clear(self) -> list[Cut]:
        """Barge-in: ``clear`` what Twilio has not played; each reply still playing was heard
        up to its last echoed mark."""
        playing = {item: reply for item, reply in self._replies.items()
                   if reply.unplayed and reply.response_id not in self._cleared}
        if self.stream_sid is None or not playing:
            return []
        self._outbox.put_nowait(twilio.clear_message(self.stream_sid))
        cuts = []
        for item_id, reply in playing.items():
            logger.info("[%s] barge-in: %s heard %.0f of %.0f ms", self.stream_sid, item_id,
                        reply.heard_ms, reply.sent_ms)
            self._cleared.add(reply.response_id)
            cuts.append(Cut(reply.response_id, item_id, int(reply.heard_ms)))
        return cuts

    async def _write(self) -> None:
        while True:
            message = await self._outbox.get()
            try:
                await self._send_twilio(message)
            except Exception:  # noqa: BLE001 - the socket closed under us: the pump ends the call
                logger.debug("[%s] send to twilio failed; call gone", self.stream_sid or "-")
