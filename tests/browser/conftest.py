"""TEMPORARY `server_url` for the browser test until tests/conftest.py provides the shared one.

Delete this file once the session-wide fixture exists: a fixture defined here would shadow it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
URL = "http://127.0.0.1:8000"
START_TIMEOUT_S = 600  # first start loads every model on 2 cores


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=5) as res:
            return res.status == 200
    except OSError:
        return False


@pytest.fixture(scope="session")
def server_url():
    """The real graph via `serve run serve_config.yaml`; QUILLMAN_URL points at one already running."""
    if os.environ.get("QUILLMAN_URL"):
        yield os.environ["QUILLMAN_URL"].rstrip("/")
        return
    artifacts = ROOT / "tests" / "browser" / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    log = open(artifacts / "serve.log", "wb")
    proc = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "serve"), "run", "serve_config.yaml"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _healthy(URL):
            if proc.poll() is not None:
                pytest.fail(f"serve run exited with {proc.returncode}; see tests/browser/artifacts/serve.log")
            if time.monotonic() > deadline:
                pytest.fail("server not healthy in time; see tests/browser/artifacts/serve.log")
            time.sleep(2)
        yield URL
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # serve run shuts the graph down on Ctrl-C
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
