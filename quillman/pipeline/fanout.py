"""Ordered fan-out: run a streaming job per item in parallel, yield results in item order.

Sentence k+1 is synthesized while sentence k is still being produced or played, but its audio is
only released once every chunk of sentence k has been yielded. The item currently at the head
streams live (chunk by chunk as it arrives); later items buffer until their turn.

With ``head_start`` the second item waits until the first has produced its first result: on a
small CPU the first chunk is the one the listener is waiting for, so it gets the cores alone.
"""

from __future__ import annotations

import asyncio
from typing import AsyncGenerator, AsyncIterator, Awaitable, Callable, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_END = object()


async def ordered_fanout(
    items: AsyncIterator[T],
    work: Callable[[T], AsyncIterator[R]],
    max_concurrency: int,
    on_item_start: Callable[[int, T], Awaitable[None] | None] | None = None,
    head_start: bool = False,
) -> AsyncGenerator[tuple[int, T, R], None]:
    """Yield ``(index, item, result)`` for each result of ``work(item)``, items in order."""
    slots = asyncio.Semaphore(max_concurrency)
    first_result = asyncio.Event()
    # One queue per item, in item order; None closes the list of items.
    pending: asyncio.Queue[tuple[int, T, asyncio.Queue] | None] = asyncio.Queue()
    tasks: set[asyncio.Task] = set()

    async def run_one(item: T, out: asyncio.Queue) -> None:
        try:
            async for result in work(item):
                out.put_nowait(result)
            out.put_nowait(_END)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, in order
            out.put_nowait(exc)
        finally:
            slots.release()

    async def produce() -> None:
        try:
            await _produce()
        finally:
            # Abandoned (cancelled, failed, closed): stop the upstream stream (the LLM) now,
            # not whenever the garbage collector finalizes the suspended generator.
            aclose = getattr(items, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _produce() -> None:
        index = 0
        async for item in items:
            if head_start and index == 1:
                await first_result.wait()
            await slots.acquire()
            out: asyncio.Queue = asyncio.Queue()
            if on_item_start is not None:
                started = on_item_start(index, item)
                if started is not None:
                    await started
            task = asyncio.create_task(run_one(item, out))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            pending.put_nowait((index, item, out))
            index += 1
        pending.put_nowait(None)

    producer = asyncio.create_task(produce())
    get: asyncio.Future | None = None
    try:
        while True:
            get = asyncio.ensure_future(pending.get())
            # The producer may fail (e.g. the LLM stream errored) while we wait for an item.
            done, _ = await asyncio.wait({get, producer}, return_when=asyncio.FIRST_COMPLETED)
            if get not in done:
                get.cancel()
                producer.result()  # raises the producer's error
                entry = await pending.get()
            else:
                entry = get.result()
            if entry is None:
                break
            index, item, out = entry
            while True:
                result = await out.get()
                first_result.set()
                if result is _END:
                    break
                if isinstance(result, BaseException):
                    raise result
                yield index, item, result
        producer.result()
    finally:
        if get is not None:
            get.cancel()  # cancelled while waiting for the next item: no Queue.get left behind
        producer.cancel()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(producer, *tasks, return_exceptions=True)
