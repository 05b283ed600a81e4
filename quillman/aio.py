"""Asyncio helpers: a blocking generator consumed from the loop, and a cancellation-safe wait_for.

The engines' inference is blocking (llama.cpp, Piper, CTranslate2); the event loop must never
wait on it. Closing the async iterator (e.g. the task was cancelled by a barge-in) sets a stop
flag the worker checks between items, so generation stops instead of running on unseen.
"""

from __future__ import annotations

import asyncio
import threading
from typing import AsyncIterator, Awaitable, Callable, Iterator, TypeVar

T = TypeVar("T")

_DONE = object()


async def wait_for(awaitable: Awaitable[T], timeout_s: float) -> T:
    """``asyncio.wait_for`` that never loses a cancellation of the caller.

    Before Python 3.12, ``asyncio.wait_for`` returns the result, and drops the cancellation,
    when the awaitable finishes in the same loop step as the caller is cancelled. A response
    task cancelled that way (barge-in, ``response.cancel``) ran on and hung in its cleanup:
    no ``response.done`` ever. Raises ``asyncio.TimeoutError`` after ``timeout_s``.
    """
    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not done:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise asyncio.TimeoutError
    return task.result()


async def iterate_in_thread(make_iterator: Callable[[], Iterator[T]]) -> AsyncIterator[T]:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    stop = threading.Event()

    def put(item: object) -> None:
        # The loop may already be closed if the consumer went away during shutdown.
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:
            pass

    def work() -> None:
        iterator = None
        try:
            iterator = make_iterator()  # may raise: the consumer must hear of it
            while not stop.is_set():
                try:
                    item = next(iterator)
                except StopIteration:
                    break
                put(item)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
            put(exc)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
            put(_DONE)

    worker = loop.run_in_executor(None, work)
    try:
        while True:
            item = await queue.get()
            if item is _DONE:
                break
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        # Let the worker finish its current item; don't leave it writing to a dead loop.
        if not worker.done():
            worker.add_done_callback(lambda f: f.exception())
