"""A cancellation must never be lost: a cancelled response always ends with one response.done.

Regression (found by test_fuzz.py): before Python 3.12, ``asyncio.wait_for`` drops the caller's
cancellation when the awaited thing finishes in the same loop step. The response's model
timeout used it, so a ``response.cancel`` (or a barge-in) landing just as an LLM token arrived
left the response running; its TTS fan-out then waited forever for a first chunk nobody would
read: no ``response.done``, and every later ``response.create`` refused as "already active".
The model timeouts now use ``asyncio.timeout`` (Python >= 3.11), which keeps the cancellation;
these tests hold it to that.
"""

from __future__ import annotations

import asyncio

import pytest


pytestmark = pytest.mark.usefixtures("hang_guard")


async def within(awaitable, timeout_s: float):
    async with asyncio.timeout(timeout_s):
        return await awaitable


async def test_timeout_returns_the_result():
    assert await within(asyncio.sleep(0, result="ok"), 1) == "ok"


async def test_timeout_cancels_the_awaitable():
    started = asyncio.Event()
    cancelled = []

    async def slow():
        started.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    with pytest.raises(TimeoutError):
        await within(slow(), 0.05)
    assert cancelled == [True]


async def test_timeout_keeps_a_cancellation_that_races_the_result():
    loop = asyncio.get_running_loop()
    inner = loop.create_future()
    waiter = asyncio.create_task(within(inner, 10))
    await asyncio.sleep(0)  # the waiter is now blocked on ``inner``
    inner.set_result("token")  # the result is ready ...
    waiter.cancel()  # ... in the same step as the cancellation
    with pytest.raises(asyncio.CancelledError):
        await waiter


@pytest.mark.parametrize("steps", range(0, 60, 3))
async def test_response_cancel_at_any_moment_ends_the_response(make_driver, backends, steps):
    d = await make_driver()
    await d.send({"type": "response.create"})
    for _ in range(steps):  # cancel after a different number of loop steps each time
        await asyncio.sleep(0)
    await d.send({"type": "response.cancel"})
    done = await d.wait_for("response.done", timeout=3)
    assert done["response"]["status"] in ("cancelled", "completed")
    await d.settle()
    assert len(d.of_type("response.done")) == 1
    assert d.session.response is None
    # The session takes the next response.
    assert (await d.text_turn("again"))["response"]["status"] == "completed"
    assert all(call.finalized for call in backends.llm_calls + backends.tts_calls)
