"""Shared fixtures: the real server, started the way users start it (``serve run``).

Set QUILLMAN_TEST_URL=http://127.0.0.1:8000 to run the end-to-end tests against a server that
is already running instead of starting one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVER_URL = "http://127.0.0.1:8000"
STARTUP_TIMEOUT_S = 300


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _stop_ray(env: dict[str, str]) -> None:
    ray = Path(sys.executable).with_name("ray")
    subprocess.run([str(ray), "stop", "--force"], env=env, capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    existing = os.environ.get("QUILLMAN_TEST_URL")
    if existing:
        assert _healthy(existing), f"QUILLMAN_TEST_URL={existing} is not healthy"
        yield existing
        return
    if _healthy(SERVER_URL):
        pytest.fail(f"something already serves {SERVER_URL}; stop it or set QUILLMAN_TEST_URL")
    log_path = tmp_path_factory.mktemp("server") / "serve.log"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    serve = Path(sys.executable).with_name("serve")
    with open(log_path, "wb") as log:
        process = subprocess.Popen([str(serve), "run", "serve_config.yaml"], cwd=ROOT, env=env,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _healthy(SERVER_URL):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"server did not start; log:\n{log_path.read_text()[-4000:]}")
            time.sleep(1)
        yield SERVER_URL
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        _stop_ray(env)
        print(f"\nserver log: {log_path}")


@pytest.fixture(scope="session")
def ws_url(server_url: str) -> str:
    return server_url.replace("http://", "ws://") + "/v1/realtime"
