"""A model deployment that cannot start is said out loud: /healthz, /prewarm and the log name it.

The server (``broken_server`` in tests/conftest.py) runs with a LanguageModel whose GGUF file is
garbage, so its constructor fails on every try and Serve marks it DEPLOY_FAILED (the same state
a replica crashing with SIGILL ends in).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

pytestmark = pytest.mark.e2e


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body)
        except ValueError:  # Serve's proxy before the route exists
            return exc.code, {"text": body.decode(errors="replace")}


def test_healthz_names_the_failed_deployment_and_serves_reason(broken_server):
    deadline = time.monotonic() + 240
    while True:
        status, body = _get(f"{broken_server.url}/healthz")
        llm = body.get("deployments", {}).get("LanguageModel", {})
        if llm.get("status") == "failed" or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert status == 503
    assert body["status"] == "failed"
    assert llm["status"] == "failed", body
    assert llm["serve_status"] == "DEPLOY_FAILED"
    assert llm["role"] == "the language model"
    assert llm["reason"] and llm["reason"] != "no reason recorded"
    assert "quillman doctor" in llm["error"]
    # The other models are fine and say so.
    assert body["deployments"]["Speaker"]["status"] == "healthy"


def test_prewarm_answers_at_once_with_the_failure_instead_of_waiting_forever(broken_server):
    test_healthz_names_the_failed_deployment_and_serves_reason(broken_server)  # failed by now
    started = time.monotonic()
    status, body = _get(f"{broken_server.url}/prewarm")
    assert status == 503
    assert body["deployments"]["LanguageModel"]["status"] == "failed"
    assert body["deployments"]["Transcriber"]["status"] == "ready"
    assert time.monotonic() - started < 25  # bounded by one poll, not by a queue that never drains


def test_the_log_says_what_failed_and_what_to_run(broken_server):
    test_healthz_names_the_failed_deployment_and_serves_reason(broken_server)
    deadline = time.monotonic() + 30  # Serve's next health check of the ingress logs it
    while "the language model failed to start" not in broken_server.log_tail(200_000):
        assert time.monotonic() < deadline, broken_server.log_tail()
        time.sleep(1)
    assert "run `quillman doctor`" in broken_server.log_tail(200_000)
