"""Metrics endpoint discovery and Prometheus text parsing (quillman_bench.server_process), and
the measurements' server (--url or --start).

Pure: a fake Ray temp dir, sample Prometheus text, a fake ``serve run``; no server.
"""

from __future__ import annotations

import json

import pytest

from quillman_bench import server_process
from quillman_bench.server_process import ServerStartError, http_url, metrics_urls, parse_samples, realtime_server


def test_http_url():
    assert http_url("ws://127.0.0.1:8000/v1/realtime") == "http://127.0.0.1:8000"
    assert http_url("http://127.0.0.1:8000") == "http://127.0.0.1:8000"


class FakeServe:
    """``serve run`` as ServeProcess runs it, logged; ``fail``: it does not come up."""

    log: list = []
    fail = False

    def __init__(self, config, port=None):
        self.log.append(("run", str(config), port))
        self.log_path = "serve.log"

    def start(self) -> str:
        if self.fail:
            raise ServerStartError("serve run exited")
        return "http://127.0.0.1:8123"

    def stop(self) -> None:
        self.log.append("stop")


def test_a_measurement_uses_url_or_a_server_started_for_it(monkeypatch):
    monkeypatch.setattr(server_process, "ServeProcess", FakeServe)
    monkeypatch.setattr(FakeServe, "log", [])
    with realtime_server("ws://example/v1/realtime", start=False) as url:
        assert url == "ws://example/v1/realtime" and FakeServe.log == []
    with realtime_server("ws://example/v1/realtime", start=True, config="c.yaml", port=8123) as url:
        assert url == "ws://127.0.0.1:8123/v1/realtime" and FakeServe.log == [("run", "c.yaml", 8123)]
    assert FakeServe.log[-1] == "stop"
    monkeypatch.setattr(FakeServe, "fail", True)
    with pytest.raises(ServerStartError):
        with realtime_server("ws://example/v1/realtime", start=True):
            pytest.fail("the block ran without a server")


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
