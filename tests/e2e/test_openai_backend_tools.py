"""The openai backend against a real OpenAI-compatible server: llama-cpp-python's server on the
shipped SmolLM2 GGUF (the "stronger local model" recipe of docs/models.md), tools passed through."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml

from quillman.engines.llm.llama_cpp import resolve_gguf_path
from quillman_bench.server_process import ROOT, serve_run
from sdk import sdk_client, until_done

pytestmark = pytest.mark.e2e

PORT = 8003  # beside the shared server (8000) and the broken one (8002)
WEATHER = {"type": "function", "name": "get_weather", "description": "Get the current weather for a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    port = free_port()
    log = (tmp_path_factory.mktemp("llama-server") / "server.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", resolve_gguf_path("smollm2-135m"),
         "--host", "127.0.0.1", "--port", str(port), "--n_threads", "1", "--n_ctx", "2048"],
        stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(240):
            if process.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {process.returncode}")
            try:
                urllib.request.urlopen(f"{base_url}/models", timeout=2).close()
                break
            except OSError:
                time.sleep(0.5)
        yield base_url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def openai_backend_server(llama_server, tmp_path_factory):
    folder = tmp_path_factory.mktemp("openai-backend")
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    config["applications"][0]["args"]["llm"] = {"backend": "openai", "model": "smollm2", "base_url": llama_server,
                                                "max_tokens": 48, "temperature": 0.2}
    config["applications"][0]["args"]["mcp"] = {"allowed_servers": ["127.0.0.1"]}  # the MCP test
    path = folder / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with serve_run(path, port=PORT, log_path=folder / "serve.log") as server:
        yield server.url


async def test_a_text_turn_with_tools_on_a_real_openai_compatible_server(openai_backend_server):
    client = sdk_client(openai_backend_server)
    async with client.realtime.connect(model="quillman") as connection:
        await connection.session.update(session={
            "type": "realtime", "output_modalities": ["text"], "tools": [WEATHER], "tool_choice": "auto"})
        await connection.conversation.item.create(item={
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello! Who are you?"}]})
        await connection.response.create()
        response = (await until_done(connection)).response
    assert response.status == "completed"
    # The server's model decides: text here (or a call, which the events would carry).
    assert response.output and response.output[0].type in ("message", "function_call")
    if response.output[0].type == "message":
        assert response.output[0].content[0].text.strip()


async def test_an_mcp_tool_on_the_openai_backend(openai_backend_server, mcp_server):
    """The server's model is told the MCP server's tools as functions; the call it makes runs
    on the MCP server, and its answer follows in the same response."""
    client = sdk_client(openai_backend_server)
    async with client.realtime.connect(model="quillman") as connection:
        await connection.session.update(session={
            "type": "realtime", "output_modalities": ["text"],
            "tools": [{"type": "mcp", "server_label": "weather", "server_url": mcp_server.url(),
                       "allowed_tools": ["get_weather"], "require_approval": "never"}],
            "tool_choice": {"type": "mcp", "server_label": "weather", "name": "get_weather"}})
        await connection.conversation.item.create(item={
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "What is the weather in Paris?"}]})
        await connection.response.create()
        reply = await until_done(connection)
    response, seen = reply.response, reply.types
    assert response.status == "completed"
    assert "mcp_list_tools.completed" in seen and "response.mcp_call.completed" in seen
    kinds = [item.type for item in response.output]
    assert kinds[0] == "mcp_call" and "weather in" in response.output[0].output.lower(), response.output
    assert kinds[-1] == "message" and response.output[-1].content[0].text.strip()
