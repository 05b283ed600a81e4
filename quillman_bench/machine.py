"""The machine a load test runs on: what it is, and how busy its CPUs are during a run (psutil)."""

from __future__ import annotations

import asyncio
import os
import platform
import time
from typing import Any

import psutil

from quillman_bench.report import mean, percentile


def cpu_busy_total() -> tuple[float, float]:
    """(busy, total) CPU seconds of all cores since boot (``psutil.cpu_times``).

    Idle is idle + iowait; guest time is left out of the total (the kernel counts it inside
    user/nice already).
    """
    times = psutil.cpu_times()
    total = sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
    idle = times.idle + getattr(times, "iowait", 0.0)
    return total - idle, total


class CpuSampler:
    """Machine-wide CPU busy % (all cores, 100 = every core busy) sampled during a level.

    Also the benchmark process's own share, so its cost on a small machine is visible.
    """

    def __init__(self, interval_s: float = 0.5):
        self.interval_s = interval_s
        self.samples: list[float] = []
        self._task: asyncio.Task | None = None
        self._process_start = 0.0
        self._wall_start = 0.0

    async def _run(self) -> None:
        previous = cpu_busy_total()
        while True:
            await asyncio.sleep(self.interval_s)
            current = cpu_busy_total()
            busy, total = current[0] - previous[0], current[1] - previous[1]
            if total > 0:
                self.samples.append(min(100.0, max(0.0, 100.0 * busy / total)))
            previous = current

    def start(self) -> None:
        self._process_start, self._wall_start = time.process_time(), time.perf_counter()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> dict[str, Any]:
        """Stop sampling; returns the raw samples, wall and client CPU time (see :func:`cpu_summary`)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        return {"samples": list(self.samples), "wall_s": time.perf_counter() - self._wall_start,
                "client_cpu_s": time.process_time() - self._process_start}


def cpu_summary(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and max machine CPU % over the samples of one or more sampled stretches, and the
    benchmark client's own share of all cores."""
    samples = [v for part in parts for v in part["samples"]]
    wall = sum(part["wall_s"] for part in parts)
    cores = os.cpu_count() or 1
    client = 100.0 * sum(part["client_cpu_s"] for part in parts) / wall / cores if wall > 0 else None
    return {"cores": cores, "mean_pct": mean(samples), "max_pct": percentile(samples, 100),
            "bench_client_pct": None if client is None else round(client, 1)}


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:  # psutil does not name the CPU
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    return {"cpu": _cpu_model() or platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1), "os": platform.platform(),
            "python": platform.python_version(), "gpu": None}
