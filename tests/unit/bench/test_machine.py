"""Machine facts and CPU use during a run (quillman_bench.machine, psutil)."""

from __future__ import annotations

import os

from quillman_bench import machine
from tests.unit.conftest import until


def test_cpu_summary_merges_stretches():
    parts = [{"samples": [10.0, 30.0], "wall_s": 2.0, "client_cpu_s": 0.2},
             {"samples": [50.0], "wall_s": 2.0, "client_cpu_s": 0.2}]
    cpu = machine.cpu_summary(parts)
    assert cpu["mean_pct"] == 30.0 and cpu["max_pct"] == 50.0
    assert cpu["bench_client_pct"] == round(100 * 0.4 / 4.0 / (os.cpu_count() or 1), 1)
    assert machine.cpu_summary([{"samples": [], "wall_s": 0.0, "client_cpu_s": 0.0}])["mean_pct"] is None


def test_cpu_busy_total_grows():
    busy, total = machine.cpu_busy_total()
    assert 0 <= busy <= total
    later_busy, later_total = machine.cpu_busy_total()
    assert later_busy >= busy and later_total >= total


async def test_cpu_sampler_takes_percentages():
    sampler = machine.CpuSampler(interval_s=0.01)
    sampler.start()
    await until(lambda: len(sampler.samples) >= 2)
    part = await sampler.stop()
    assert part["samples"] and all(0.0 <= v <= 100.0 for v in part["samples"])
    assert part["wall_s"] > 0 and part["client_cpu_s"] >= 0


def test_machine_info_fields():
    info = machine.machine_info()
    assert set(info) == {"cpu", "cores", "memory_gb", "os", "python", "gpu"}
    assert info["cores"] >= 1 and info["memory_gb"] > 0 and info["cpu"]
