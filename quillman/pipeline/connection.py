"""The socket side of a session: receive and send loops, the bounded outbox, error rules.

A :class:`Connection` is a TaskGroup of two loops. The receive loop hands each client input to
the session (a text frame is checked against the limits and parsed here first); the send loop
drains the :class:`Outbox`, where every server event is serialized once. Every client input is
handled to the end: a refused one gets one ``error`` with a stable code, anything unexpected one
``server_error``, and the connection goes on. A fatal state (a client that stopped reading) gets
one ``error``, then the socket closes (1011). The tasks of the session's work are tracked here,
so that closing cancels and awaits every one.

Transports: a websocket hands ``receive`` text frames; another transport may hand it typed input
instead of JSON it would have to build: a parsed :data:`protocol.ClientEvent`, or a
:class:`PcmFrame` of linear audio (a WebRTC track, already decoded).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import numpy as np

from quillman import errors, protocol
from quillman.metrics import SessionMetrics
from quillman.pipeline.limits import SessionLimits

logger = logging.getLogger(__name__)

FLUSH_TIMEOUT_S = 5.0  # after the client leaves, how long queued events may take to go out
CLOSE_NORMAL, CLOSE_INTERNAL_ERROR = 1000, 1011


@dataclass(frozen=True)
class PcmFrame:
    """Linear pcm16 mono audio at the session's input rate, from a transport that decoded it."""

    pcm: np.ndarray


ClientInput = str | bytes | protocol.ClientEvent | PcmFrame  # what ``receive`` may return


class Outbox:
    """Serialized server events waiting for the socket, bounded in bytes.

    A client that stops reading makes ``send`` block; the queue then grows, and past
    ``max_bytes`` the session ends instead of memory.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.queued_bytes = 0
        self._frames: collections.deque[str] = collections.deque()
        self._ready = asyncio.Event()
        self.finished = False

    def put(self, frame: str) -> bool:
        """False if the bound is passed (the frame is kept: the caller decides what is fatal)."""
        if self.finished:
            return True
        self._frames.append(frame)
        self.queued_bytes += len(frame)
        self._ready.set()
        return self.queued_bytes <= self.max_bytes

    def finish(self) -> None:
        self.finished = True
        self._ready.set()

    def empty(self) -> bool:
        return not self._frames

    async def get(self) -> str | None:
        """The next frame, or None once finished and drained."""
        while not self._frames:
            if self.finished:
                return None
            self._ready.clear()
            await self._ready.wait()
        frame = self._frames.popleft()
        self.queued_bytes -= len(frame)
        return frame


class Connection:
    """One client's socket: what comes in, what goes out, and the work in between."""

    def __init__(self, session_id: str, send: Callable[[str], Awaitable[None]], limits: SessionLimits,
                 metrics: SessionMetrics, max_outbox_bytes: int, idle_timeout_s: float):
        self.id = session_id
        self._send = send
        self.limits = limits
        self.metrics = metrics
        self.idle_timeout_s = idle_timeout_s
        self.outbox = Outbox(max_outbox_bytes)
        self.tasks: set[asyncio.Task] = set()  # the session's work: cancel_tasks() ends it
        self._receiver: asyncio.Task | None = None
        self.close_code = CLOSE_NORMAL

    async def serve(self, receive: Callable[[], Awaitable[ClientInput | None]],
                    on_event: Callable[[protocol.ClientEvent], Awaitable[None]],
                    on_pcm: Callable[[np.ndarray], Awaitable[None]],
                    close: Callable[[], Awaitable[None]]) -> int:
        """Until the client goes away (``receive`` returns None) or a fatal error; ``close``
        ends the session's work, before the last events are flushed. Returns the close code."""
        try:
            async with asyncio.TaskGroup() as loops:
                sender = loops.create_task(self._send_loop(), name=f"{self.id}-send")
                self._receiver = loops.create_task(self._receive_loop(receive, on_event, on_pcm),
                                                   name=f"{self.id}-receive")
                await asyncio.wait({self._receiver})
                await close()
                self.outbox.finish()
                await asyncio.wait({sender}, timeout=FLUSH_TIMEOUT_S)
                sender.cancel()  # a peer that does not read: its queue is dropped
        finally:
            await close()  # also when the caller (the ingress) is cancelled
            self.outbox.finish()
        return self.close_code

    async def _receive_loop(self, receive: Callable[[], Awaitable[ClientInput | None]],
                            on_event: Callable[[protocol.ClientEvent], Awaitable[None]],
                            on_pcm: Callable[[np.ndarray], Awaitable[None]]) -> None:
        while True:
            try:
                async with asyncio.timeout(self.idle_timeout_s):
                    frame = await receive()
            except TimeoutError:
                self.error(errors.IdleTimeout(
                    f"no client event for {self.idle_timeout_s:g} s; closing the session"))
                return
            except Exception:  # noqa: BLE001 - a broken transport is a disconnect
                logger.info("[%s] receive failed; closing", self.id, exc_info=True)
                return
            if frame is None:
                return
            if isinstance(frame, PcmFrame):
                await on_pcm(frame.pcm)
            elif isinstance(frame, (str, bytes)):
                await self.handle_frame(frame, on_event)
            else:
                await on_event(frame)

    async def _send_loop(self) -> None:
        while (frame := await self.outbox.get()) is not None:
            try:
                await self._send(frame)
            except Exception:  # noqa: BLE001 - socket closed under us; drain until finished
                logger.debug("[%s] send failed; client gone", self.id)

    # --- client input -------------------------------------------------------------------------

    async def handle_frame(self, frame: str | bytes,
                           on_event: Callable[[protocol.ClientEvent], Awaitable[None]]) -> None:
        """One text frame: the limits, then parsed; refused -> one ``error``; never raises."""
        try:
            self.limits.check_frame(frame)
            event = protocol.parse_client_event(frame)  # its refusals carry the frame's event_id
        except errors.QuillmanError as exc:
            self.error(exc)
            return
        except Exception:  # noqa: BLE001 - a bug must not end the session; the log has it
            logger.exception("[%s] internal error handling a client event", self.id)
            self.error(errors.InternalError("the server failed to handle this event; the session goes on"))
            return
        await on_event(event)

    async def handled(self, work: Awaitable[None], event_id: str | None, what: str) -> None:
        """Run one client input to the end: a refusal -> one ``error`` with the client's
        ``event_id``; a bug -> one ``server_error``, and the session goes on; never raises."""
        try:
            await work
        except errors.QuillmanError as exc:
            if exc.event_id is None:  # an empty event_id is still the client's to get back
                exc.event_id = event_id
            self.error(exc)
        except Exception:  # noqa: BLE001 - a bug must not end the session; the log has it
            logger.exception("[%s] internal error handling %s", self.id, what)
            self.error(errors.InternalError(f"the server failed to handle {what}; the session goes on",
                                            event_id=event_id))

    # --- server events ------------------------------------------------------------------------

    def emit(self, event: protocol.ServerEvent) -> None:
        """Queue one server event for the client, serialized here, once."""
        if not self.outbox.put(protocol.serialize(event)) and self.close_code == CLOSE_NORMAL:
            self.fatal(errors.ClientTooSlow(
                f"more than {self.outbox.max_bytes} bytes of events are waiting for the client; "
                "it is not reading them, so the session ends"))

    def fatal(self, exc: errors.QuillmanError) -> None:
        """One ``error``, then the socket closes with 1011; the session's work is cancelled."""
        logger.warning("[%s] fatal %s: %s", self.id, exc.code, exc.message)
        self.metrics.error(exc.code)
        self.close_code = CLOSE_INTERNAL_ERROR
        self.outbox.put(protocol.serialize(protocol.error_event(exc)))
        if self._receiver is not None and not self._receiver.done():
            self._receiver.cancel()

    def error(self, exc: errors.QuillmanError) -> None:
        logger.info("[%s] error %s: %s", self.id, exc.code, exc.message)
        self.metrics.error(exc.code)
        self.emit(protocol.error_event(exc))

    # --- the session's work -------------------------------------------------------------------

    def track(self, task: asyncio.Task) -> asyncio.Task:
        """cancel_tasks() cancels and awaits every tracked task (responses included)."""
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task:
        return self.track(asyncio.ensure_future(coro))

    async def cancel_tasks(self) -> None:
        tasks = [t for t in self.tasks if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
