"""The OpenAI-compatible backend against a real streaming server on 127.0.0.1.

The server is a small aiohttp app that answers ``POST /v1/chat/completions`` with server-sent
chat-completion chunks, like vLLM's or llama.cpp's OpenAI servers do, and records what it was
asked and whether the client went away mid-stream.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web

from quillman.config import LlmConfig
from quillman.engines.llm.base import GenerationParams, GenerationRequest, Usage
from quillman.engines.llm.openai_compat import OpenAICompatibleModel, iterate_sse_data
from quillman.engines.loader import load_language_model
from quillman.errors import ConfigError, ModelError

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
PARAMS = GenerationParams(max_tokens=40, temperature=0.1, top_p=0.95)


def _chunk(content: str | None = None, role: str | None = None, finish: str | None = None) -> bytes:
    delta = {k: v for k, v in (("role", role), ("content", content)) if v is not None}
    body = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return f"data: {json.dumps(body)}\n\n".encode()


class ChatServer:
    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.words = ["Hello", " there", ",", " friend", "."]
        self.delay_s = 0.0
        self.status = 200
        self.sent = 0
        self.disconnected = asyncio.Event()
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(await request.json())
        self.headers.append(dict(request.headers))
        if self.status != 200:
            return web.json_response({"error": {"message": "model overloaded"}}, status=self.status)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            await response.write(b": keep-alive\n\n" + _chunk(role="assistant", content=""))
            for word in self.words:
                await asyncio.sleep(self.delay_s)  # the model's time per token (a stream that takes a while)
                await response.write(_chunk(word))
                self.sent += 1
            await response.write(_chunk(finish="stop"))
            usage = {"id": "chatcmpl-1", "choices": [], "usage": {"prompt_tokens": 21, "completion_tokens": 5}}
            await response.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
        except (ConnectionResetError, asyncio.CancelledError):
            self.disconnected.set()
            raise
        return response


@pytest.fixture
async def chat_server():
    server = ChatServer()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    server.url = f"http://127.0.0.1:{port}/v1"
    yield server
    await runner.cleanup()


@pytest.fixture
async def model(chat_server, monkeypatch):
    monkeypatch.setenv("QUILLMAN_TEST_LLM_KEY", "sk-test")
    engine = load_language_model(LlmConfig(backend="openai", model="zephyr", base_url=chat_server.url,
                                           api_key_env="QUILLMAN_TEST_LLM_KEY", request_timeout_s=5))
    yield engine
    await engine.aclose()


async def test_streams_deltas_and_sends_the_request(model, chat_server):
    assert isinstance(model, OpenAICompatibleModel)
    deltas = [d async for d in model.stream(GenerationRequest(MESSAGES, PARAMS))]
    # The server's own token counts come last (stream_options.include_usage).
    assert deltas == ["Hello", " there", ",", " friend", ".", Usage(input_tokens=21, output_tokens=5)]
    body = chat_server.requests[0]
    assert body == {"model": "zephyr", "messages": MESSAGES, "stream": True, "max_tokens": 40,
                    "temperature": 0.1, "top_p": 0.95, "stream_options": {"include_usage": True}}
    assert chat_server.headers[0]["Authorization"] == "Bearer sk-test"


async def test_connection_is_reused_across_turns(model, chat_server):
    for _ in range(3):
        assert "".join([d async for d in model.stream(GenerationRequest(MESSAGES, PARAMS)) if isinstance(d, str)]) == "Hello there, friend."
    assert len(chat_server.requests) == 3


async def test_closing_the_stream_disconnects_so_the_server_stops(model, chat_server):
    chat_server.words = [f" w{i}" for i in range(200)]
    chat_server.delay_s = 0.01
    stream = model.stream(GenerationRequest(MESSAGES, PARAMS))
    assert await stream.__anext__() == " w0"
    await stream.aclose()  # barge-in
    await asyncio.wait_for(chat_server.disconnected.wait(), 3)
    assert chat_server.sent < 200


async def test_cancelling_the_consumer_disconnects(model, chat_server):
    chat_server.words = [f" w{i}" for i in range(200)]
    chat_server.delay_s = 0.01
    seen: list[str] = []
    streaming = asyncio.Event()

    async def consume():
        async for delta in model.stream(GenerationRequest(MESSAGES, PARAMS)):
            seen.append(delta)
            if len(seen) == 2:
                streaming.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(streaming.wait(), 5)  # mid-stream: two deltas in
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(chat_server.disconnected.wait(), 3)
    assert chat_server.sent < 200
    # The model still works for the next turn.
    chat_server.words, chat_server.delay_s = ["ok"], 0.0
    assert [d async for d in model.stream(GenerationRequest(MESSAGES, PARAMS)) if isinstance(d, str)] == ["ok"]


async def test_http_error_is_a_model_error(model, chat_server):
    chat_server.status = 503
    with pytest.raises(ModelError, match="503.*model overloaded"):
        [d async for d in model.stream(GenerationRequest(MESSAGES, PARAMS))]


async def test_unreachable_server_is_a_model_error(chat_server):
    model = OpenAICompatibleModel("http://127.0.0.1:9/v1", "m", timeout_s=2)
    with pytest.raises(ModelError, match="unreachable"):
        [d async for d in model.stream(GenerationRequest(MESSAGES, PARAMS))]
    await model.aclose()


async def test_sse_parsing_joins_multiline_data_and_skips_comments():
    async def lines():
        for line in [b": ping\n", b"event: message\n", b"data: a\n", b"data: b\r\n", b"\n", b"data: [DONE]\n"]:
            yield line

    assert [d async for d in iterate_sse_data(lines())] == ["a\nb", "[DONE]"]


def test_base_url_is_required():
    with pytest.raises(ConfigError, match="llm.base_url"):
        load_language_model(LlmConfig(backend="openai", model="m"))
    with pytest.raises(ConfigError, match="llm.base_url"):
        load_language_model(LlmConfig(backend="openai", model="m", base_url="localhost:8001"))


def test_streamed_tool_calls_become_tool_call_deltas():
    from quillman.engines.llm.base import ToolCallDelta
    from quillman.engines.llm.openai_compat import _deltas

    # As llama-cpp-python's server streams a call: id and name on every chunk.
    chunk = {"choices": [{"delta": {"tool_calls": [
        {"index": 0, "id": "call_x", "type": "function", "function": {"name": "get_weather", "arguments": '{"ci'}}]}}]}
    assert _deltas(chunk, "u") == [ToolCallDelta(index=0, arguments='{"ci', call_id="call_x", name="get_weather")]
    assert _deltas({"choices": [{"delta": {"content": "Hi"}}]}, "u") == ["Hi"]


async def test_tools_are_passed_through(chat_server):
    from quillman.engines.llm.base import Tool

    model = OpenAICompatibleModel(chat_server.url, "m")
    tool = Tool("get_weather", "Weather.", {"type": "object", "properties": {"city": {"type": "string"}}})
    try:
        request = GenerationRequest(MESSAGES, PARAMS, tools=(tool,), tool_choice="get_weather")
        [delta async for delta in model.stream(request)]
        body = chat_server.requests[-1]
        assert body["tools"][0]["function"]["name"] == "get_weather"
        assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
        [delta async for delta in model.stream(GenerationRequest(MESSAGES, PARAMS, tools=(tool,), tool_choice="none"))]
        assert "tools" not in chat_server.requests[-1]
    finally:
        await model.aclose()
