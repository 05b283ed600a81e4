"""DeadlineGate: earliest deadline first, cancellation, the lead that holds bulk work back."""

from __future__ import annotations

import asyncio
import time

from quillman.scheduling import DeadlineGate, speech_seconds_estimate


def one_at_a_time():
    """A gate of capacity 1, the order jobs ran in, an event releasing the holding job."""
    gate = DeadlineGate(capacity=1)
    order: list[str] = []
    release = asyncio.Event()

    async def job(name: str, deadline: float | None, hold: bool = False):
        async with gate.slot(deadline):
            order.append(name)
            if hold:
                await release.wait()

    return gate, order, release, job


async def test_waiters_run_earliest_deadline_first():
    gate, order, release, job = one_at_a_time()

    now = time.time()
    first = asyncio.create_task(job("running", now, hold=True))
    await asyncio.sleep(0)
    tasks = [asyncio.create_task(job(name, deadline)) for name, deadline in
             [("later", now + 5), ("whenever", None), ("sooner", now + 1)]]
    await asyncio.sleep(0)
    assert gate.waiting == 3 and gate.running == 1
    release.set()
    await asyncio.gather(first, *tasks)
    assert order == ["running", "sooner", "later", "whenever"]
    assert gate.running == 0


async def test_a_cancelled_waiter_gives_its_turn_away():
    _, order, release, job = one_at_a_time()

    now = time.time()
    holder = asyncio.create_task(job("holder", now, hold=True))
    await asyncio.sleep(0)
    doomed = asyncio.create_task(job("doomed", now))
    survivor = asyncio.create_task(job("survivor", now + 1))
    await asyncio.sleep(0)
    doomed.cancel()
    release.set()
    await asyncio.gather(holder, survivor)
    assert order == ["holder", "survivor"] and doomed.cancelled()


async def test_work_due_beyond_the_lead_waits_until_it_is_within_it():
    gate = DeadlineGate(capacity=2, lead_s=0.5)
    start = time.perf_counter()
    async with gate.slot(time.time() + 0.7) as waited_s:
        pass
    assert waited_s >= 0.15  # held about 0.2 s, until 0.5 s before its deadline
    async with gate.slot(time.time() + 0.1) as waited_now:
        pass
    assert waited_now < waited_s <= time.perf_counter() - start


def test_speech_estimate_grows_with_words():
    assert speech_seconds_estimate("one two three") < speech_seconds_estimate("one two three four five six")
