"""The machine's critical-path arbiter: critical sections per process, seen by every process."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

from quillman.priority import NodePriority, is_due
from tests.unit.conftest import until


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
    # The child says on stdout where it is and waits on stdin for the next step: no polling.
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from quillman.priority import NodePriority
        arbiter = NodePriority({str(tmp_path)!r})
        with arbiter.critical():
            print("critical", flush=True)
            sys.stdin.readline()
        print("done", flush=True)
        sys.stdin.readline()  # alive, its file kept, until killed
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "critical\n"
        priority._scanned = 0.0  # noqa: SLF001 - look at the directory now, not in 0.5 s
        assert priority.busy(include_self=False)
        child.stdin.write("release\n")
        child.stdin.flush()
        assert child.stdout.readline() == "done\n"
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

    release = asyncio.Event()

    async def critical_until_released():
        with priority.critical():
            await release.wait()

    looked: list[float] = []  # when the waiting work looked for critical work
    machine_busy = priority.busy

    def busy(include_self: bool = True) -> bool:
        looked.append(time.monotonic())
        return machine_busy(include_self)

    priority.busy = busy  # type: ignore[method-assign]
    holder = asyncio.create_task(critical_until_released())
    await asyncio.sleep(0)  # a step: it holds the section
    waiter = asyncio.create_task(priority.yield_while_busy(until=None))
    await until(lambda: len(looked) >= 3)  # it waits, looking again and again
    assert not waiter.done()
    released_at = time.monotonic()
    release.set()
    await holder
    waited = await asyncio.wait_for(waiter, 5)
    assert released_at - looked[0] <= waited < 5  # the whole wait, ended by the critical work's end


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
