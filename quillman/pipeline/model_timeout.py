"""The model timeout: a model (ASR, LLM, TTS) answers a request, and each item of a stream,
within ``model_timeout_s``, or the turn fails with a ``ModelError`` instead of hanging on a
stuck replica.

``asyncio.timeout`` keeps a cancellation that lands as the answer comes (``asyncio.wait_for``
before Python 3.12 dropped it: see ``tests/unit/pipeline/test_response_cancel_race.py``).
"""

from __future__ import annotations

import asyncio
from typing import AsyncGenerator, AsyncIterator, Awaitable, TypeVar

from quillman import errors

T = TypeVar("T")


async def within(awaitable: Awaitable[T], timeout_s: float) -> T:
    try:
        async with asyncio.timeout(timeout_s):
            return await awaitable
    except TimeoutError:
        raise errors.ModelError(f"a model did not answer within {timeout_s:g} s") from None


async def each_within(iterator: AsyncIterator[T], timeout_s: float) -> AsyncGenerator[T, None]:
    """The items of ``iterator``, each within the timeout; closing this closes ``iterator``."""
    try:
        while True:
            try:
                item = await within(anext(iterator), timeout_s)
            except StopAsyncIteration:
                return
            yield item
    finally:
        close = getattr(iterator, "aclose", None)
        if close is not None:
            await close()
