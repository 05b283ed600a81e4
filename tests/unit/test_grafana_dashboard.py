"""The Grafana dashboard uses only the metrics quillman/metrics.py exports, and all of them."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_grafana_dashboard_uses_only_exported_metrics():
    dashboard = json.loads((ROOT / "configs" / "grafana" / "quillman-dashboard.json").read_text())
    source = (ROOT / "quillman" / "metrics.py").read_text()
    ours = set(re.findall(r'"(quillman_\w+)"', source))
    assert ours >= {"quillman_sessions_active", "quillman_turns_total", "quillman_voice_to_voice_ms",
                    "quillman_stage_ms", "quillman_cancellations_total", "quillman_errors_total",
                    "quillman_audio_in_seconds_total", "quillman_audio_out_seconds_total"}
    exprs = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                exprs.append(node["expr"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(dashboard["panels"])
    used = {re.sub(r"_(bucket|sum|count)$", "", m) for e in exprs for m in re.findall(r"ray_quillman_\w+", e)}
    assert used, "no quillman series in the dashboard"
    assert {name.removeprefix("ray_") for name in used} <= ours
    assert {f"ray_{name}" for name in ours} <= used, "every metric has a panel"
    for e in exprs:
        assert e.count("(") == e.count(")") and e.count("{") == e.count("}"), e
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
