"""SchedulerStats: vLLM's scheduler reports, awaited without polling (no vLLM needed)."""

from __future__ import annotations

import asyncio
import threading
import time

from quillman.engines.llm.vllm import SchedulerStats


async def test_a_report_that_already_holds_returns_at_once():
    stats = SchedulerStats()
    stats.record(running=1, waiting=0, kv_cache_usage=0.1)
    assert (await stats.until(lambda s: s["running"] == 1))["running"] == 1


async def test_every_report_is_judged_even_one_replaced_at_once():
    stats = SchedulerStats()
    waiting = asyncio.ensure_future(stats.until(lambda s: s["running"] == 2))
    await asyncio.sleep(0)  # one loop step: the waiter is registered
    for running in (1, 2, 0):  # 2 is replaced before the waiter runs: it still sees it
        stats.record(running=running, waiting=0, kv_cache_usage=0.0)
    assert (await asyncio.wait_for(waiting, 5))["running"] == 2


async def test_reports_from_another_thread_wake_the_waiter_on_its_loop():
    stats = SchedulerStats()
    stats.record(running=1, waiting=0, kv_cache_usage=0.0)
    since = time.time()
    waiting = asyncio.ensure_future(stats.until(lambda s: s["running"] == 0, since=since))
    await asyncio.sleep(0)
    reporter = threading.Thread(target=stats.record, kwargs={"running": 0, "waiting": 0, "kv_cache_usage": 0.0})
    reporter.start()
    reporter.join()
    report = await asyncio.wait_for(waiting, 5)
    assert report["running"] == 0 and report["updated_at"] >= since


async def test_a_report_older_than_since_does_not_count():
    stats = SchedulerStats()
    stats.record(running=0, waiting=0, kv_cache_usage=0.0)
    waiting = asyncio.ensure_future(stats.until(lambda s: s["running"] == 0, since=time.time() + 3600))
    await asyncio.sleep(0)
    assert not waiting.done()
    waiting.cancel()
