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


# --- MCP test servers (quillman_bench.mcp_server: the SDK's MCPServer on 127.0.0.1) ----------


@pytest.fixture(scope="session")
def mcp_server():
    """Streamable HTTP at /mcp; shared by every MCP test."""
    from quillman_bench.mcp_server import McpServerProcess

    server = McpServerProcess()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mcp_sse_server():
    from quillman_bench.mcp_server import McpServerProcess

    server = McpServerProcess("--sse")
    yield server
    server.stop()
