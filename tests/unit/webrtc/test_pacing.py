"""The clock of the audio tracks we send (quillman.webrtc.pacing): no aiortc, a fake clock."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from quillman.webrtc import pacing
from quillman.webrtc.pacing import FRAME_SAMPLES, RATE_HZ, FrameClock


@pytest.fixture
def clock(monkeypatch):
    """Wall time that only the clock's own waits (and the test) move on."""
    now = SimpleNamespace(t=100.0, waits=[])

    async def wait(seconds: float) -> None:
        now.waits.append(round(seconds, 6))
        now.t += seconds

    monkeypatch.setattr(pacing, "time", SimpleNamespace(monotonic=lambda: now.t))
    monkeypatch.setattr(pacing, "asyncio", SimpleNamespace(sleep=wait))
    return now


async def test_the_first_frame_goes_at_once_and_the_next_when_due(clock):
    track = FrameClock()
    assert [await track.tick() for _ in range(3)] == [0, FRAME_SAMPLES, 2 * FRAME_SAMPLES]
    assert track.start == 100.0 and clock.waits == [0.02, 0.02]
    clock.t += 0.015  # the sender was slow: the next frame is due sooner
    await track.tick()
    assert clock.waits[-1] == 0.005


async def test_behind_by_more_than_max_lag_the_clock_restarts(clock):
    track = FrameClock(max_lag_s=0.5)
    await track.tick()
    clock.t += 2.0  # a stalled loop
    assert await track.tick() == FRAME_SAMPLES and clock.waits == []  # no burst of late frames
    assert track.start == pytest.approx(clock.t - FRAME_SAMPLES / RATE_HZ)
    await track.tick()
    assert clock.waits == [0.02]


async def test_without_max_lag_a_late_clock_catches_up(clock):
    track = FrameClock()
    await track.tick()
    clock.t += 0.1  # five frames late: they go out without waiting
    for _ in range(5):
        await track.tick()
    assert clock.waits == []
    await track.tick()
    assert clock.waits == [0.02]
