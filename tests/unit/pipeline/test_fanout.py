"""Ordered fan-out: parallel work per item, results strictly in item order."""

from __future__ import annotations

import asyncio

import pytest

from quillman.pipeline.fanout import ordered_fanout

pytestmark = pytest.mark.usefixtures("hang_guard")


async def settle(rounds: int = 20) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


async def aiter_of(values):
    for value in values:
        yield value


class Workers:
    """Work whose progress the test controls: each item waits for its gate(s)."""

    def __init__(self, chunks_per_item: int = 2):
        self.chunks_per_item = chunks_per_item
        self.gates: dict[tuple[int, int], asyncio.Event] = {}
        self.active = 0
        self.max_active = 0
        self.started: list[int] = []
        self.cancelled: list[int] = []
        self.finished: list[int] = []

    def gate(self, item: int, chunk: int = 0) -> asyncio.Event:
        return self.gates.setdefault((item, chunk), asyncio.Event())

    def open_all(self, item: int) -> None:
        for chunk in range(self.chunks_per_item):
            self.gate(item, chunk).set()

    async def work(self, item: int):
        self.started.append(item)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            for chunk in range(self.chunks_per_item):
                await self.gate(item, chunk).wait()
                yield f"{item}.{chunk}"
            self.finished.append(item)
        except asyncio.CancelledError:
            self.cancelled.append(item)
            raise
        finally:
            self.active -= 1


class Consumer:
    def __init__(self, stream):
        self.results: list[tuple[int, object, object]] = []
        self.task = asyncio.create_task(self._run(stream))

    async def _run(self, stream):
        async for entry in stream:
            self.results.append(entry)

    @property
    def values(self):
        return [r for _, _, r in self.results]


async def test_reverse_completion_still_yields_in_order():
    workers = Workers()
    consumer = Consumer(ordered_fanout(aiter_of(range(4)), workers.work, max_concurrency=4))
    await settle()
    assert sorted(workers.started) == [0, 1, 2, 3]
    for item in (3, 2, 1):  # the later items finish first...
        workers.open_all(item)
        await settle()
        assert item in workers.finished
        assert consumer.results == []  # ...but nothing passes item 0
    workers.open_all(0)
    await asyncio.wait_for(consumer.task, 2)
    assert consumer.values == ["0.0", "0.1", "1.0", "1.1", "2.0", "2.1", "3.0", "3.1"]
    assert [(i, item) for i, item, _ in consumer.results] == [(i // 2, i // 2) for i in range(8)]


async def test_head_item_streams_chunk_by_chunk():
    workers = Workers(chunks_per_item=3)
    consumer = Consumer(ordered_fanout(aiter_of(range(2)), workers.work, max_concurrency=2))
    workers.open_all(1)  # item 1 is complete before item 0 has produced anything
    await settle()
    assert consumer.values == []
    workers.gate(0, 0).set()
    await settle()
    assert consumer.values == ["0.0"]  # live, not buffered until item 0 is done
    workers.gate(0, 1).set()
    await settle()
    assert consumer.values == ["0.0", "0.1"]
    workers.gate(0, 2).set()
    await asyncio.wait_for(consumer.task, 2)
    assert consumer.values == ["0.0", "0.1", "0.2", "1.0", "1.1", "1.2"]


@pytest.mark.parametrize("limit", [1, 2, 3])
async def test_concurrency_bound(limit):
    active = 0
    peak = 0

    async def work(item):
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        try:
            for k in range(3):
                await asyncio.sleep(0.001 * ((item * 7) % 3))  # the work's length: items finish out of order
                yield (item, k)
        finally:
            active -= 1

    results = [r async for _, _, r in ordered_fanout(aiter_of(range(8)), work, limit)]
    assert results == [(i, k) for i in range(8) for k in range(3)]
    assert peak == limit


async def test_later_items_start_while_head_is_running():
    workers = Workers()
    consumer = Consumer(ordered_fanout(aiter_of(range(5)), workers.work, max_concurrency=2))
    await settle()
    assert workers.started == [0, 1]  # two in flight, the third waits for a slot
    workers.open_all(1)
    await settle()
    assert workers.started == [0, 1, 2]  # item 1 finished: its slot goes to item 2
    for item in (0, 2, 3, 4):
        workers.open_all(item)
    await asyncio.wait_for(consumer.task, 2)
    assert workers.max_active == 2


async def test_on_item_start_called_in_order_with_index():
    seen = []

    async def on_start(index, item):
        seen.append((index, item))

    async def work(item):
        yield item.upper()

    out = [(i, item, r) async for i, item, r in
           ordered_fanout(aiter_of(["a", "b", "c"]), work, 2, on_item_start=on_start)]
    assert seen == [(0, "a"), (1, "b"), (2, "c")]
    assert out == [(0, "a", "A"), (1, "b", "B"), (2, "c", "C")]

    sync_seen = []
    out = [r async for _, _, r in ordered_fanout(
        aiter_of(["x"]), work, 1, on_item_start=lambda i, item: sync_seen.append(i))]
    assert out == ["X"] and sync_seen == [0]


async def test_error_in_one_item_propagates_in_order():
    later_done = asyncio.Event()

    async def work(item):
        if item == 1:
            yield "1.0"
            await later_done.wait()  # fail only after item 2 has finished
            raise ValueError("item 1 failed")
        yield f"{item}.0"
        if item == 2:
            later_done.set()

    got = []
    with pytest.raises(ValueError, match="item 1 failed"):
        async for _, _, result in ordered_fanout(aiter_of(range(4)), work, 4):
            got.append(result)
    assert got == ["0.0", "1.0"]  # item 2's result never overtakes item 1's error


async def test_error_in_head_item_cancels_the_others():
    workers = Workers()

    async def work(item):
        if item == 0:
            await asyncio.sleep(0)
            raise RuntimeError("head failed")
        async for chunk in workers.work(item):
            yield chunk

    with pytest.raises(RuntimeError, match="head failed"):
        async for _ in ordered_fanout(aiter_of(range(3)), work, 3):
            pass
    assert sorted(workers.cancelled) == [1, 2]
    assert workers.active == 0


async def test_consumer_cancellation_cancels_running_workers():
    workers = Workers()
    items_closed = asyncio.Event()

    async def items():
        try:
            for i in range(10):
                yield i
        finally:
            items_closed.set()

    consumer = Consumer(ordered_fanout(items(), workers.work, max_concurrency=3))
    workers.gate(0, 0).set()
    await settle()
    assert consumer.values == ["0.0"]
    assert workers.started == [0, 1, 2]
    consumer.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer.task
    # Every running worker saw CancelledError and is gone once the consumer is.
    assert sorted(workers.cancelled) == [0, 1, 2]
    assert workers.active == 0
    assert workers.finished == []


async def test_closing_early_cancels_workers():
    workers = Workers()
    stream = ordered_fanout(aiter_of(range(3)), workers.work, max_concurrency=3)
    workers.gate(0, 0).set()
    first = await anext(stream)
    assert first == (0, 0, "0.0")
    await stream.aclose()
    assert sorted(workers.cancelled) == [0, 1, 2]
    assert workers.active == 0


async def test_closing_early_closes_the_items_iterator():
    # The items are typically a stream of LLM sentences: abandoning the fan-out must stop the
    # LLM (close its stream) before aclose() returns, also while the producer waits for a slot.
    workers = Workers()
    state = {"closed": False}

    async def items():
        try:
            for i in range(10):
                yield i
        finally:
            state["closed"] = True

    source = items()
    stream = ordered_fanout(source, workers.work, max_concurrency=1)
    workers.gate(0, 0).set()
    try:
        assert (await anext(stream))[2] == "0.0"
        await settle()  # the producer now waits for a free slot, holding item 1
        await stream.aclose()
        assert workers.cancelled == [0]
        assert state["closed"], "the items iterator was left suspended, not closed"
    finally:
        # Never leave it to the garbage collector: finalizing a suspended async generator in
        # the middle of pytest's report rendering crashes CPython 3.11's ast.parse.
        await source.aclose()


async def test_producer_error_propagates():
    async def items():
        yield 0
        yield 1
        raise KeyError("llm stream broke")

    async def work(item):
        yield item * 10

    got = []
    with pytest.raises(KeyError, match="llm stream broke"):
        async for _, _, result in ordered_fanout(items(), work, 2):
            got.append(result)
    assert got == [0, 10]  # what was produced before the error still comes, in order


async def test_producer_error_while_waiting_for_the_first_item():
    async def items():
        await asyncio.sleep(0)  # a step: the error comes while the consumer waits, not at once
        raise RuntimeError("no items at all")
        yield  # pragma: no cover

    async def work(item):  # pragma: no cover - never called
        yield item

    with pytest.raises(RuntimeError, match="no items at all"):
        async for _ in ordered_fanout(items(), work, 2):
            pass


async def test_producer_error_comes_after_the_items_already_running():
    workers = Workers()
    failed = asyncio.Event()

    async def items():
        yield 0
        yield 1
        failed.set()
        raise RuntimeError("producer broke")

    got = []

    async def consume():
        async for _, _, result in ordered_fanout(items(), workers.work, max_concurrency=3):
            got.append(result)

    task = asyncio.create_task(consume())
    workers.open_all(0)
    await asyncio.wait_for(failed.wait(), 2)
    await settle()
    assert got == ["0.0", "0.1"]
    workers.open_all(1)  # item 1 was already running: its audio still comes, then the error
    with pytest.raises(RuntimeError, match="producer broke"):
        await asyncio.wait_for(task, 2)
    assert got == ["0.0", "0.1", "1.0", "1.1"]
    assert workers.active == 0


async def test_empty_items():
    async def work(item):  # pragma: no cover
        yield item

    assert [r async for r in ordered_fanout(aiter_of([]), work, 2)] == []


async def test_work_with_no_results_is_skipped():
    async def work(item):
        if item % 2:
            yield item

    assert [r async for _, _, r in ordered_fanout(aiter_of(range(6)), work, 3)] == [1, 3, 5]


async def test_head_start_holds_the_second_item_until_the_first_result():
    workers = Workers()
    consumer = Consumer(ordered_fanout(aiter_of(range(4)), workers.work, max_concurrency=3, head_start=True))
    await settle()
    assert workers.started == [0]  # the first chunk gets the cores alone
    workers.gate(0, 0).set()
    await settle()
    assert consumer.values == ["0.0"]
    assert workers.started == [0, 1, 2]  # then the others run in parallel, up to the bound
    for item in range(4):
        workers.open_all(item)
    await asyncio.wait_for(consumer.task, 2)
    assert consumer.values == [f"{i}.{k}" for i in range(4) for k in range(2)]


async def test_head_start_with_an_empty_first_item():
    async def work(item):
        if item:
            yield item

    out = [r async for _, _, r in ordered_fanout(aiter_of(range(3)), work, 2, head_start=True)]
    assert out == [1, 2]


async def test_head_start_with_a_failing_first_item():
    async def work(item):
        if item == 0:
            raise RuntimeError("first failed")
        yield item  # pragma: no cover

    async def consume():
        return [r async for r in ordered_fanout(aiter_of(range(3)), work, 2, head_start=True)]

    with pytest.raises(RuntimeError, match="first failed"):
        await asyncio.wait_for(consume(), 2)
