"""Asyncio helper: a blocking generator consumed from the loop.

The engines' inference is blocking (llama.cpp, Piper, CTranslate2); the event loop must never
wait on it. Closing the async iterator (e.g. the task was cancelled by a barge-in) sets a stop
flag the worker checks between items, so generation stops instead of running on unseen.
"""

from __future__ import annotations

import asyncio
import threading
from typing import AsyncIterator, Callable, Iterator, TypeVar

T = TypeVar("T")

_DONE = object()


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
