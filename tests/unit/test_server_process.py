"""Metrics endpoint discovery and Prometheus text parsing (quillman_bench.server_process).

Pure: a fake Ray temp dir and sample Prometheus text; no server.
"""

from __future__ import annotations

import json

from quillman_bench.server_process import http_url, metrics_urls, parse_samples


def test_http_url():
    assert http_url("ws://127.0.0.1:8000/v1/realtime") == "http://127.0.0.1:8000"
    assert http_url("http://127.0.0.1:8000") == "http://127.0.0.1:8000"


def test_metrics_urls_from_discovery_file_and_live_sessions(tmp_path, monkeypatch):
    import os

    monkeypatch.delenv("QUILLMAN_METRICS_URL", raising=False)
    (tmp_path / "prom_metrics_service_discovery.json").write_text(
        json.dumps([{"labels": {"job": "ray"}, "targets": ["192.0.2.2:37543", "192.0.2.2:44217"]}]))
    live = tmp_path / f"session_2026-01-01_00-00-00_000000_{os.getpid()}"
    dead = tmp_path / "session_2025-01-01_00-00-00_000000_999999999"
    for session, port in ((live, "37543"), (dead, "5555")):
        session.mkdir()
        (session / "metrics_export_port_abc").write_text(port)
    live_only = tmp_path / f"session_2026-01-02_00-00-00_000000_{os.getpid()}"
    live_only.mkdir()
    (live_only / "metrics_export_port_def").write_text("40000")
    assert metrics_urls(tmp_path) == ["http://127.0.0.1:37543/metrics", "http://127.0.0.1:44217/metrics",
                                      "http://127.0.0.1:40000/metrics"]
    monkeypatch.setenv("QUILLMAN_METRICS_URL", "http://127.0.0.1:1/metrics")
    assert metrics_urls(tmp_path) == ["http://127.0.0.1:1/metrics"]


def test_metrics_urls_without_ray(tmp_path, monkeypatch):
    monkeypatch.delenv("QUILLMAN_METRICS_URL", raising=False)
    assert metrics_urls(tmp_path / "nothing") == []


def test_parse_samples_keeps_quillman_series():
    text = """# HELP ray_quillman_turns_total User turns committed.
# TYPE ray_quillman_turns_total counter
ray_quillman_turns_total{application="quillman",deployment="Ingress"} 4.0
# TYPE ray_serve_num_http_requests_total counter
ray_serve_num_http_requests_total{route="/"} 7.0
"""
    assert parse_samples(text) == [("ray_quillman_turns_total", {"application": "quillman", "deployment": "Ingress"}, 4.0)]
