"""What an MCP tool call adds to a response beyond the tool's own time (listing excluded).

  python benchmarks/mcp_overhead.py [--calls 50] [--json out.json]

Starts the test MCP server (``quillman_bench.mcp_server``, streamable HTTP on 127.0.0.1) and
measures two spans around its ``echo_timing`` tool, whose own time (reported in its output) is a
few microseconds:

- ``sdk_round_trip``: one ``McpConnection.call`` (the official SDK over HTTP, through the access
  guard), minus the tool's own time;
- ``in_response``: in a real :class:`RealtimeSession` (a zero-cost fake LLM, text output), from
  the moment ``response.mcp_call_arguments.done`` is emitted to the moment the follow-up
  generation that reads the result starts, minus the tool's own time: approval check, the call,
  the ``mcp_call`` item's events, the prompt with the result.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable from a checkout without installing

from quillman.config import LlmConfig, McpConfig, SessionConfig, VadConfig  # noqa: E402
from quillman.engines.llm.base import ToolCallDelta  # noqa: E402
from quillman.engines.vad import SileroVad  # noqa: E402
from quillman_bench.mcp_server import McpServerProcess  # noqa: E402
from quillman.pipeline.mcp_connection import McpConnection  # noqa: E402
from quillman.pipeline.mcp_spec import parse_mcp_tool  # noqa: E402
from quillman.pipeline.mcp_access import Access  # noqa: E402
from quillman.pipeline.session import RealtimeSession  # noqa: E402

OWN_MS = re.compile(r"\(([0-9.]+) ms\)")


@contextlib.contextmanager
def mcp_server():
    server = McpServerProcess()
    try:
        yield server.url()
    finally:
        server.stop()


def tool(url: str) -> dict:
    return {"type": "mcp", "server_label": "bench", "server_url": url, "require_approval": "never",
            "allowed_tools": ["echo_timing"]}


async def sdk_round_trips(url: str, calls: int) -> list[float]:
    access = Access(["127.0.0.1"])
    spec = parse_mcp_tool(tool(url), "session.tools[0]", access)
    connection = McpConnection(spec, access, McpConfig(), lambda e: None, lambda e: None, "bench").start()
    assert await connection.ready(), connection.failure
    await connection.call("echo_timing", {"text": "warm"})
    overheads = []
    for _ in range(calls):
        started = time.perf_counter()
        result = await connection.call("echo_timing", {"text": "x"})
        total_ms = (time.perf_counter() - started) * 1000
        overheads.append(total_ms - float(OWN_MS.search(result.output).group(1)))
    await connection.close()
    return overheads


class ZeroCostModels:
    """The LLM calls the tool on each even request and answers on each odd one; no ASR/TTS."""

    def __init__(self) -> None:
        self.requests = 0
        self.follow_up_at: list[float] = []

    async def transcribe(self, pcm, language, deadline=None):
        raise NotImplementedError

    async def generate(self, request):
        index, self.requests = self.requests, self.requests + 1
        if index % 2 == 0:
            yield ToolCallDelta(index=0, call_id=f"call_{index}", name="echo_timing")
            yield ToolCallDelta(index=0, arguments='{"text": "x"}')
        else:
            self.follow_up_at.append(time.perf_counter())
            yield "Done."

    async def synthesize(self, text, voice, sample_rate_hz, deadline=None):
        raise NotImplementedError
        yield


async def in_response(url: str, calls: int) -> list[float]:
    models = ZeroCostModels()
    args_done_at: list[float] = []
    outputs: list[str] = []
    done = asyncio.Event()

    async def send(frame: str) -> None:
        event = json.loads(frame)
        if event["type"] == "response.done":
            outputs.append(event["response"]["output"][0].get("output", ""))
            done.set()

    session = RealtimeSession(models, SessionConfig(few_shot=[]), VadConfig(), SileroVad, send, LlmConfig(),
                              mcp=McpConfig(allowed_servers=["127.0.0.1"]))
    emit = session.connection.emit

    def timed_emit(event):  # the instant the event is emitted, not when the socket sends it
        if event.type == "response.mcp_call_arguments.done":
            args_done_at.append(time.perf_counter())
        emit(event)

    session.connection.emit = timed_emit
    inbox: asyncio.Queue = asyncio.Queue()
    runner = asyncio.create_task(session.run(inbox.get))
    await session.handle_frame(json.dumps({"type": "session.update", "session": {
        "output_modalities": ["text"], "tools": [tool(url)],
        "tool_choice": {"type": "mcp", "server_label": "bench", "name": "echo_timing"}}}))
    overheads = []
    for turn in range(calls + 1):  # the first turn waits for the listing: not counted
        done.clear()
        await session.handle_frame(json.dumps({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Echo x."}]}}))
        await session.handle_frame(json.dumps({"type": "response.create"}))
        await asyncio.wait_for(done.wait(), 30)
        if turn:
            own = float(OWN_MS.search(outputs[-1]).group(1))
            overheads.append((models.follow_up_at[-1] - args_done_at[-1]) * 1000 - own)
    inbox.put_nowait(None)
    await runner
    return overheads


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"p50_ms": round(statistics.median(ordered), 2),
            "p95_ms": round(ordered[max(0, int(len(ordered) * 0.95) - 1)], 2),
            "max_ms": round(ordered[-1], 2), "n": len(ordered)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with mcp_server() as url:
        results = {"sdk_round_trip": summary(await sdk_round_trips(url, args.calls)),
                   "in_response": summary(await in_response(url, args.calls))}
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
