"""Critical-path priority across the processes of one machine.

A reply's first audio is made of a few pieces of work: the last segment's ASR, the turn decision,
the LLM's prompt and first clause, the first TTS chunk. They are *critical*: the user is waiting
for them. Everything else can wait: the paced tokens of replies already speaking, later
sentences, other sessions' work that is ahead of its playback. Inside one engine the deadlines
already order the work (:mod:`quillman.scheduling`), but on one machine the stages are separate
processes (Ray replicas) that share the cores: a reply's LLM running ahead of its pace slows the
next turn's first TTS chunk in another process.

:class:`NodePriority` is that rule per machine. A process doing critical work holds a *critical
section* (``with priority.critical():``); each process keeps the number it holds in a small
shared-memory file of its own (``/dev/shm/quillman-priority-<uid>/<pid>``), so holding one costs
a store, no lock between processes, no round trip. Bulk work asks :meth:`NodePriority.busy`
(the sum over the machine's files, ~µs) before each unit it could postpone and waits while any
critical work runs, but never past the moment the unit itself is due (playback must not
starve). A process that dies leaves a file that is skipped (its pid is gone) and removed.

On a cluster each node has its own directory: priority is per node, where the cores are
shared; work on other nodes is not affected. Where ``/dev/shm`` is missing, the arbiter falls back
to the temp dir; where neither can be written, it is off (every call is a no-op) and scheduling
degrades to each replica's own deadline order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mmap
import os
import struct
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

logger = logging.getLogger(__name__)

_COUNTER = struct.Struct("<q")
# Work due within this is critical: the first chunk and the last segment are due "now" (their
# deadline is the instant they were asked for); later sentences are due when playback reaches them.
CRITICAL_SLACK_S = 0.25
POLL_S = 0.002  # how often waiting bulk work looks again
_RESCAN_S = 0.5  # how often the set of processes is read again


def default_directory() -> Path:
    base = Path("/dev/shm") if os.path.isdir("/dev/shm") else Path(tempfile.gettempdir())
    return base / f"quillman-priority-{os.getuid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


class NodePriority:
    """Critical sections of this process, and whether any process of the machine is in one."""

    def __init__(self, directory: Path | str | None = None, enabled: bool = True, name: str | None = None):
        """``name``: this counter's file, ``<pid>`` or ``<pid>-<name>`` (tests: two in one process)."""
        self.directory = Path(directory) if directory is not None else default_directory()
        self._name = str(os.getpid()) if name is None else f"{os.getpid()}-{name}"
        self._lock = threading.Lock()
        self._held = 0
        self._own: mmap.mmap | None = None
        self._others: dict[str, mmap.mmap] = {}  # file name -> counter
        self._scanned = 0.0
        self.enabled = enabled and self._open()

    def _open(self) -> bool:
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            path = self.directory / self._name
            with open(path, "wb+") as f:
                f.write(_COUNTER.pack(0))
                f.flush()
                self._own = mmap.mmap(f.fileno(), _COUNTER.size)
            return True
        except OSError:
            logger.warning("node priority off: %s cannot be written", self.directory, exc_info=True)
            return False

    # --- critical work -------------------------------------------------------------------------

    @contextlib.contextmanager
    def critical(self) -> Iterator[None]:
        """Hold a critical section for the block (nestable, any thread)."""
        self._add(1)
        try:
            yield
        finally:
            self._add(-1)

    def _add(self, n: int) -> None:
        if not self.enabled:
            return
        with self._lock:
            self._held += n
            _COUNTER.pack_into(self._own, 0, self._held)

    @property
    def held(self) -> int:
        """Critical sections this process holds now."""
        return self._held

    # --- bulk work -----------------------------------------------------------------------------

    def busy(self, include_self: bool = True) -> bool:
        """Is any critical work running on this machine (this process's too, unless told not)?"""
        if not self.enabled:
            return False
        if include_self and self._held > 0:
            return True
        now = time.monotonic()
        if now - self._scanned > _RESCAN_S:
            self._rescan()
            self._scanned = now
        for name, counter in list(self._others.items()):
            try:
                if _COUNTER.unpack_from(counter, 0)[0] > 0:
                    return True
            except (ValueError, OSError):  # closed under us by a rescan
                self._others.pop(name, None)
        return False

    def _rescan(self) -> None:
        try:
            names = os.listdir(self.directory)
        except OSError:
            return
        seen = set()
        for name in names:
            pid = name.split("-", 1)[0]
            if name == self._name or not pid.isdigit():
                continue
            if not _alive(int(pid)):
                with contextlib.suppress(OSError):
                    os.unlink(self.directory / name)
                continue
            seen.add(name)
            if name not in self._others:
                try:
                    with open(self.directory / name, "rb") as f:
                        self._others[name] = mmap.mmap(f.fileno(), _COUNTER.size, access=mmap.ACCESS_READ)
                except (OSError, ValueError):
                    continue
        for name in set(self._others) - seen:
            self._others.pop(name).close()

    def wait_while_busy(self, until: float | None, include_self: bool = False) -> float:
        """Block (a worker thread) while critical work runs, at most until Unix time ``until``
        (None: no limit); returns the seconds waited."""
        start = time.monotonic()
        while self.busy(include_self) and (until is None or time.time() < until):
            time.sleep(POLL_S)
        return time.monotonic() - start

    async def yield_while_busy(self, until: float | None, include_self: bool = True) -> float:
        """The asyncio form of :meth:`wait_while_busy`."""
        start = time.monotonic()
        # Polled: the counters live in other processes' shared memory, no event to await.
        while self.busy(include_self) and (until is None or time.time() < until):  # noqa: ASYNC110
            await asyncio.sleep(POLL_S)
        return time.monotonic() - start

    def close(self) -> None:
        if self._own is not None:
            self._own.close()
            self._own = None
            with contextlib.suppress(OSError):
                os.unlink(self.directory / self._name)
        for counter in self._others.values():
            counter.close()
        self._others.clear()
        self.enabled = False


def is_due(deadline: float | None, slack_s: float = CRITICAL_SLACK_S) -> bool:
    """A unit with this deadline (Unix time) is critical: due now, or within ``slack_s``."""
    return deadline is not None and deadline - time.time() <= slack_s


_node: NodePriority | None = None
_node_lock = threading.Lock()


def node_priority() -> NodePriority:
    """This process's arbiter (one per process: a replica's stages share its counter)."""
    global _node
    with _node_lock:
        if _node is None:
            _node = NodePriority()
        return _node
