"""Per-session limits on what a client may send: event rate, frame size, audio pace.

Checked before any work is done for a frame; each refusal is a typed error (one ``error``
event), and the session goes on.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from quillman import errors
from quillman.config import SessionConfig


class TokenBucket:
    """Events per second with a burst allowance (per-session rate limit)."""

    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate = rate_per_s
        self.burst = float(burst)
        self._clock = clock  # injected by tests: refills without waiting
        self._tokens = float(burst)
        self._last = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


class SessionLimits:
    def __init__(self, config: SessionConfig, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self._bucket = TokenBucket(config.max_events_per_s, config.event_burst, clock)
        self._first_audio: float | None = None  # perf_counter of the first append
        self._audio_s = 0.0  # seconds of input audio accepted so far

    def check_frame(self, frame: str | bytes) -> None:
        """Rate and size, before the frame is parsed."""
        if not self._bucket.take():
            raise errors.RateLimited(
                f"more than {self.config.max_events_per_s:g} events/s; this event was dropped")
        size = len(frame) if isinstance(frame, bytes) else len(frame.encode("utf-8", "replace"))
        if size > self.config.max_frame_bytes:
            raise errors.FrameTooLarge(
                f"frame of {size} bytes exceeds the limit of {self.config.max_frame_bytes}")

    def admit_audio(self, seconds: float, now: float) -> None:
        """Audio may run at most ``max_audio_ahead_s`` ahead of real time; counts it if admitted."""
        if self._first_audio is None:
            self._first_audio = now
        ahead = self._audio_s + seconds - (now - self._first_audio)
        if ahead > self.config.max_audio_ahead_s:
            raise errors.AudioBufferOverflow(
                f"audio is arriving {ahead:.1f} s ahead of real time (limit "
                f"{self.config.max_audio_ahead_s:g} s); send it at playback speed", param="audio")
        self._audio_s += seconds
