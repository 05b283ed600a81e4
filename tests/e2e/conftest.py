from __future__ import annotations

import numpy as np
import pytest

from quillman.audio import int16_to_float, resample


@pytest.fixture(scope="session")
def recognizer():
    """An ASR engine in the test process, to check that reply audio is real speech."""
    from quillman.engines.asr.faster_whisper import FasterWhisperRecognizer

    return FasterWhisperRecognizer("tiny.en", cpu_threads=1)


@pytest.fixture(scope="session")
def transcribe_reply(recognizer):
    def transcribe(pcm: np.ndarray, sample_rate_hz: int) -> str:
        audio = int16_to_float(resample(pcm, sample_rate_hz, 16000))
        return recognizer.transcribe(audio).text

    return transcribe


# --- MCP test servers (quillman.loadtest.mcp_server: the SDK's MCPServer on 127.0.0.1) ----------


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class McpProcess:
    """``python -m quillman.loadtest.mcp_server`` on a free port, until ``stop()``."""

    def __init__(self, *args: str):
        import subprocess
        import sys

        self.port = free_port()
        self.process = subprocess.Popen([sys.executable, "-m", "quillman.loadtest.mcp_server",
                                         "--port", str(self.port), *args])
        self._wait()

    def _wait(self) -> None:
        import socket
        import time

        for _ in range(200):
            if self.process.poll() is not None:
                raise RuntimeError(f"the MCP test server exited with {self.process.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("the MCP test server did not start")

    def url(self, path: str = "/mcp", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@pytest.fixture(scope="session")
def mcp_server():
    """Streamable HTTP at /mcp; shared by every MCP test."""
    server = McpProcess()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mcp_sse_server():
    server = McpProcess("--sse")
    yield server
    server.stop()
