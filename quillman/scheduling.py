"""Deadlines: which unit of work is due when, and a gate that serves the earliest first.

Every unit of work carries a deadline (Unix time, ``time.time()``, comparable across the
processes of one machine and, NTP-synced, of a cluster): the first tokens and the first audio of
a new response are due now; sentence k of a reply is due when the audio before it will have
finished playing at the client. A model replica admits its work through a :class:`DeadlineGate`:
at most ``capacity`` units run at once, waiting units start in deadline order (not arrival
order), and a unit due far in the future waits until it is within ``lead_s`` of its deadline, so
bulk work stays a margin ahead of playback instead of taking the cores from urgent work.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator

from quillman.engines.llm.base import Pacing

# Piper's voices speak about 2.7-3.2 words per second; a shorter guess makes deadlines early,
# never late.
SECONDS_PER_WORD_ESTIMATE = 0.3


# A spoken reply's tokens: the first clause (the first TTS chunk is cut after 4-12 words, ~1.3
# tokens a word) at once, then a little faster than speech (~3 words/s = ~4 tokens/s), kept 1 s
# ahead of when playback needs them.
SPOKEN_REPLY_PACING = Pacing(burst_tokens=12, tokens_per_s=6.0, lead_s=1.0)
# A text reply (read, not heard), and any request that names no pacing: fast, but paced, so
# that one never holds a batching engine's steps while another reply's first words are due.
READING_PACE = Pacing(burst_tokens=20, tokens_per_s=40.0, lead_s=0.5)


@dataclass(frozen=True)
class QueueWait:
    """A stream's first item from a gated deployment: how long the unit waited for the gate."""

    ms: float


def speech_seconds_estimate(text: str) -> float:
    return len(text.split()) * SECONDS_PER_WORD_ESTIMATE


class DeadlineGate:
    """An asyncio semaphore whose waiters are served earliest deadline first."""

    def __init__(self, capacity: int, lead_s: float = math.inf):
        self.capacity = capacity
        self.lead_s = lead_s
        self._running = 0
        self._waiters: list[tuple[float, int, asyncio.Future]] = []
        self._order = itertools.count()
        self._wakeup: asyncio.TimerHandle | None = None

    @property
    def waiting(self) -> int:
        return sum(1 for *_, future in self._waiters if not future.done())

    @property
    def running(self) -> int:
        return self._running

    @asynccontextmanager
    async def slot(self, deadline: float | None) -> AsyncIterator[float]:
        """Hold a slot for the block; yields the seconds waited for it."""
        start = time.perf_counter()
        due = math.inf if deadline is None else deadline
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (due, next(self._order), future))
        self._dispatch()
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release()  # granted just as we were cancelled: hand it on
            else:
                future.cancel()
                self._dispatch()
            raise
        try:
            yield time.perf_counter() - start
        finally:
            self._release()

    def _release(self) -> None:
        self._running -= 1
        self._dispatch()

    def _dispatch(self) -> None:
        if self._wakeup is not None:
            self._wakeup.cancel()
            self._wakeup = None
        while self._waiters and self._running < self.capacity:
            due, _, future = self._waiters[0]
            if future.done():  # cancelled while waiting
                heapq.heappop(self._waiters)
                continue
            hold_s = due - self.lead_s - time.time() if due != math.inf else 0.0
            if hold_s > 0:
                # Not due yet: look again when it is (or when something else arrives).
                self._wakeup = asyncio.get_running_loop().call_later(hold_s, self._dispatch)
                return
            heapq.heappop(self._waiters)
            self._running += 1
            future.set_result(None)
