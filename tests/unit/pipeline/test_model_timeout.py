"""The model timeout: each answer, and each item of a stream, within the limit or a ModelError."""

from __future__ import annotations

import asyncio

import pytest

from quillman import errors
from quillman.pipeline.model_timeout import each_within, within

pytestmark = pytest.mark.usefixtures("hang_guard")


async def test_an_answer_in_time_is_returned():
    assert await within(asyncio.sleep(0, result="ok"), 1) == "ok"


async def test_a_late_answer_is_a_model_error_and_is_cancelled():
    cancelled = []

    async def stuck():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    with pytest.raises(errors.ModelError, match="within 0.05 s"):
        await within(stuck(), 0.05)
    assert cancelled == [True]


async def test_a_cancellation_that_races_the_answer_is_kept():
    inner = asyncio.get_running_loop().create_future()
    waiter = asyncio.create_task(within(inner, 10))
    await asyncio.sleep(0)
    inner.set_result("token")
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter


async def test_each_item_of_a_stream_is_timed_and_closing_closes_the_stream():
    closed = []

    async def stream(stall_after: int):
        try:
            for n in range(5):
                if n == stall_after:
                    await asyncio.sleep(10)
                yield n
        finally:
            closed.append(True)

    assert [item async for item in each_within(stream(stall_after=99), 1)] == [0, 1, 2, 3, 4]
    items = []
    with pytest.raises(errors.ModelError):
        async for item in each_within(stream(stall_after=2), 0.05):
            items.append(item)
    assert items == [0, 1] and closed == [True, True]

    early = each_within(stream(stall_after=99), 1)
    assert await anext(early) == 0
    await early.aclose()
    assert closed == [True, True, True]
