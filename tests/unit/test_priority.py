"""The machine's critical-path arbiter: critical sections per process, seen by every process."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

from quillman.priority import NodePriority, is_due


@pytest.fixture
def priority(tmp_path):
    arbiter = NodePriority(tmp_path)
    yield arbiter
    arbiter.close()


def test_a_critical_section_makes_the_machine_busy(priority):
    assert not priority.busy()
    with priority.critical():
        with priority.critical():  # nested: still held after the inner one ends
            assert priority.held == 2
        assert priority.busy()
        assert not priority.busy(include_self=False)  # only this process holds one
    assert not priority.busy() and priority.held == 0


def test_another_processs_critical_work_is_seen_and_its_end_too(priority, tmp_path):
    ready, release = tmp_path / "ready", tmp_path / "release"
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import pathlib, time
        from quillman.priority import NodePriority
        arbiter = NodePriority({str(tmp_path)!r})
        with arbiter.critical():
            pathlib.Path({str(ready)!r}).touch()
            while not pathlib.Path({str(release)!r}).exists():
                time.sleep(0.01)
        pathlib.Path({str(ready)!r}).unlink()
        while True:
            time.sleep(0.01)
    """)])
    try:
        for _ in range(1000):
            if ready.exists():
                break
            time.sleep(0.01)
        priority._scanned = 0.0  # noqa: SLF001 - look at the directory now, not in 0.5 s
        assert priority.busy(include_self=False)
        release.touch()
        for _ in range(1000):
            if not ready.exists():
                break
            time.sleep(0.01)
        assert not priority.busy(include_self=False)
    finally:
        child.kill()
        child.wait()
    priority._scanned = 0.0  # noqa: SLF001
    assert not priority.busy()
    assert not (tmp_path / str(child.pid)).exists()  # a dead process's file is removed


def test_bulk_work_waits_no_longer_than_until(priority):
    with priority.critical():
        waited = priority.wait_while_busy(until=time.time() + 0.05, include_self=True)
    assert waited >= 0.04
    assert priority.wait_while_busy(until=None) < 0.01  # nothing critical: no wait


async def test_the_asyncio_wait_ends_when_the_critical_work_does(priority):
    import asyncio

    async def critical_for_a_moment():
        with priority.critical():
            await asyncio.sleep(0.05)

    task = asyncio.create_task(critical_for_a_moment())
    await asyncio.sleep(0)
    waited = await priority.yield_while_busy(until=None)
    await task
    assert 0.03 <= waited < 5


def test_an_unwritable_directory_turns_the_arbiter_off(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    arbiter = NodePriority(blocker / "sub")  # a file where a directory should be
    assert not arbiter.enabled
    with arbiter.critical():
        assert not arbiter.busy()


def test_due_means_now_or_within_the_slack():
    now = time.time()
    assert is_due(now) and is_due(now + 0.1) and not is_due(now + 5) and not is_due(None)
