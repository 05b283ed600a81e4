"""iterate_in_thread: a blocking generator consumed from the event loop, stoppable."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading

import pytest

from quillman.aio import iterate_in_thread

pytestmark = pytest.mark.usefixtures("hang_guard")


async def test_yields_every_item_in_order_from_another_thread():
    threads = set()

    def gen():
        for i in range(50):
            threads.add(threading.get_ident())
            yield i

    assert [x async for x in iterate_in_thread(gen)] == list(range(50))
    assert threading.get_ident() not in threads


async def test_plain_iterators_work():
    assert [x async for x in iterate_in_thread(lambda: iter(["a", "b"]))] == ["a", "b"]
    assert [x async for x in iterate_in_thread(lambda: iter([]))] == []


async def test_does_not_block_the_event_loop():
    release = threading.Event()
    ticks = 0

    def gen():
        release.wait(5)
        yield "late"

    ticked = asyncio.Event()

    async def ticker():
        nonlocal ticks
        while not release.is_set():
            ticks += 1
            if ticks == 5:
                ticked.set()
            await asyncio.sleep(0)  # one loop iteration per tick

    consumer = asyncio.create_task(anext(iterate_in_thread(gen)))
    tick_task = asyncio.create_task(ticker())
    # The loop keeps ticking while the worker thread is blocked.
    await asyncio.wait_for(ticked.wait(), 5)
    assert ticks >= 5 and not consumer.done()
    release.set()
    assert await asyncio.wait_for(consumer, 5) == "late"
    await tick_task


async def test_generator_error_reaches_the_consumer():
    def gen():
        yield 1
        raise ValueError("engine failed")

    got = []
    with pytest.raises(ValueError, match="engine failed"):
        async for x in iterate_in_thread(gen):
            got.append(x)
    assert got == [1]


async def test_error_creating_the_iterator_reaches_the_consumer():
    # e.g. an engine method that validates its input before returning an iterator
    def make():
        raise ValueError("bad voice")

    async def consume():
        return [x async for x in iterate_in_thread(make)]

    with pytest.raises(ValueError, match="bad voice"):
        await asyncio.wait_for(consume(), 5)


class Lockstep:
    """A blocking generator that produces one item per permit and records what happened."""

    def __init__(self, n: int = 100):
        self.n = n
        self.permits = threading.Semaphore(0)
        self.next_calls = 0
        self.finally_ran = threading.Event()
        self.closed_early = False

    def __call__(self):
        try:
            for i in range(self.n):
                self.permits.acquire(timeout=5)
                self.next_calls += 1
                yield i
        except GeneratorExit:
            self.closed_early = True
            raise
        finally:
            self.finally_ran.set()


async def test_closing_early_stops_the_worker_generator():
    gen = Lockstep()
    stream = iterate_in_thread(gen)
    got = []
    for _ in range(3):
        gen.permits.release()
        got.append(await asyncio.wait_for(anext(stream), 5))
    assert got == [0, 1, 2]
    await stream.aclose()
    # The worker may be inside one next() call: let it return, then it must stop.
    gen.permits.release()
    assert await asyncio.to_thread(gen.finally_ran.wait, 5)
    # Its finally ran: the generator is closed and never runs again, so the count is final.
    assert gen.next_calls <= 4
    assert gen.closed_early


async def test_cancelling_the_consumer_stops_the_worker_generator():
    gen = Lockstep()
    started = asyncio.Event()

    async def consume():
        async for _ in iterate_in_thread(gen):
            started.set()

    gen.permits.release()
    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()  # while the worker is blocked waiting for its next permit
    with pytest.raises(asyncio.CancelledError):
        await task
    gen.permits.release()
    assert await asyncio.to_thread(gen.finally_ran.wait, 5)  # closed: the count is final
    assert gen.next_calls <= 2
    assert gen.closed_early


async def test_a_fast_generator_finishes_and_runs_its_finally():
    done = threading.Event()

    def gen():
        try:
            yield from range(3)
        finally:
            done.set()

    assert [x async for x in iterate_in_thread(gen)] == [0, 1, 2]
    assert await asyncio.to_thread(done.wait, 2)


def test_worker_does_not_outlive_a_closed_loop():
    # The consumer goes away and the loop is closed while the worker still runs: no crash.
    release = threading.Event()
    finished = threading.Event()

    def gen():
        try:
            yield 1
            release.wait(5)
            yield 2
        finally:
            finished.set()

    async def main():
        stream = iterate_in_thread(gen)
        assert await anext(stream) == 1
        await stream.aclose()

    class Executor(concurrent.futures.ThreadPoolExecutor):
        """The loop's default executor, keeping the worker's future (its outcome, joinable)."""
        futures: list[concurrent.futures.Future] = []

        def submit(self, fn, /, *args, **kwargs):
            future = super().submit(fn, *args, **kwargs)
            self.futures.append(future)
            return future

    executor = Executor(max_workers=1)
    loop = asyncio.new_event_loop()
    loop.set_default_executor(executor)
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()  # the worker still waits in the generator
        release.set()
    executor.shutdown(wait=True)  # the worker ran on, writing to the closed loop, and ended
    [worker] = executor.futures
    assert worker.exception() is None and finished.is_set()
