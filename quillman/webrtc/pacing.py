"""The clock of an audio track we send: one 20 ms frame per 20 ms of wall time.

aiortc pulls the next frame from a track's ``recv()`` as soon as it has sent the last one; the
track itself must wait until that frame is due. :class:`FrameClock` is that wait, for the
server's reply track (:mod:`.media`) and the Python caller's microphone (:mod:`.caller`).
"""

from __future__ import annotations

import asyncio
import math
import time

RATE_HZ = 48000  # Opus's clock, what the track carries
FRAME_S = 0.020
FRAME_SAMPLES = int(RATE_HZ * FRAME_S)


class FrameClock:
    """:meth:`tick` waits until the next frame is due and returns its pts (in samples); the
    first frame goes out at once and starts the clock."""

    def __init__(self, max_lag_s: float = math.inf):
        # Behind schedule by more than this (a stalled loop): restart the clock, don't burst.
        self.max_lag_s = max_lag_s
        self.start: float | None = None  # monotonic time of the first frame
        self.pts = 0

    async def tick(self) -> int:
        now = time.monotonic()
        if self.start is None:
            self.start = now
        else:
            self.pts += FRAME_SAMPLES
            due = self.start + self.pts / RATE_HZ
            if now - due > self.max_lag_s:
                self.start = now - self.pts / RATE_HZ
            elif due > now:
                await asyncio.sleep(due - now)
        return self.pts
