"""OpenAI-compatible backend: any server with a streaming ``/v1/chat/completions``.

For people who already run vLLM, TGI, llama.cpp's server, Ollama or a hosted API. Each ``stream``
is one streaming request; the text deltas come from its server-sent events. Closing the stream
(barge-in, disconnect) closes the HTTP connection, which is how these servers learn to stop
generating. The client is aiohttp, which Ray Serve already depends on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any, AsyncIterator
from urllib.parse import urlparse

import aiohttp

from quillman.config import LlmConfig
from quillman.engines.llm.base import Capabilities, Delta, GenerationRequest, ToolCallDelta, Usage
from quillman.errors import ConfigError, ModelError

logger = logging.getLogger(__name__)

_CONNECT_TIMEOUT_S = 10.0


async def iterate_sse_data(lines: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """The ``data`` payload of each server-sent event; multi-line data is joined with newlines."""
    data: list[str] = []
    async for raw in lines:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):  # comment / keep-alive
            continue
        field, _, value = line.partition(":")
        if field == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        yield "\n".join(data)


class OpenAICompatibleModel:
    capabilities = Capabilities(tools=True)  # the server it talks to does the rest its own way

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, timeout_s: float = 60.0):
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.model = model
        self.name = model
        self._headers = {"Accept": "text/event-stream"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        # No total limit (a reply streams as long as it streams); a stall between chunks fails.
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=min(_CONNECT_TIMEOUT_S, timeout_s), sock_read=timeout_s
        )
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def from_config(cls, config: LlmConfig) -> "OpenAICompatibleModel":
        if not config.base_url:
            raise ConfigError(
                "llm.backend 'openai' needs llm.base_url, the server's OpenAI API root "
                "(e.g. http://127.0.0.1:8001/v1)"
            )
        parsed = urlparse(config.base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ConfigError(
                f"llm.base_url {config.base_url!r} must be an http(s) URL such as http://host:8001/v1"
            )
        api_key = os.environ.get(config.api_key_env)
        if api_key is None:
            logger.info("llm: %s is not set; calling %s without an API key",
                        config.api_key_env, config.base_url)
        return cls(config.base_url, config.model, api_key=api_key, timeout_s=config.request_timeout_s)

    def _get_session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._session_loop is not loop:
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers=self._headers)
            self._session_loop = loop
        return self._session

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        params = request.params
        body: dict[str, Any] = {
            "model": self.model, "messages": request.messages, "stream": True,
            "max_tokens": params.max_tokens, "temperature": params.temperature, "top_p": params.top_p,
            "stream_options": {"include_usage": True},  # a last chunk with the token counts
        }
        if request.tools and request.tool_choice != "none":
            # Passed through: the server's model decides (or is forced) and streams tool_calls.
            body["tools"] = [{"type": "function", "function": {
                "name": t.name, "description": t.description, "parameters": t.parameters}}
                for t in request.tools]
            body["tool_choice"] = request.tool_choice if request.tool_choice in ("auto", "required") \
                else {"type": "function", "function": {"name": request.tool_choice}}
        try:
            response = await self._get_session().post(self.url, json=body)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise ModelError(f"LLM server {self.url} unreachable: {type(exc).__name__}: {exc}") from exc
        completed = False
        try:
            if response.status != 200:
                detail = (await response.text())[:300]
                raise ModelError(f"LLM server {self.url} answered {response.status}: {detail}")
            async for data in iterate_sse_data(response.content):
                if data.strip() == "[DONE]":
                    break
                chunk = json.loads(data)
                for delta in _deltas(chunk, self.url):
                    yield delta
                usage = chunk.get("usage")
                if isinstance(usage, dict) and "prompt_tokens" in usage:
                    yield Usage(input_tokens=int(usage["prompt_tokens"]),
                                output_tokens=int(usage.get("completion_tokens") or 0))
            completed = True
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise ModelError(f"LLM stream from {self.url} failed: {type(exc).__name__}: {exc}") from exc
        finally:
            if completed:
                response.release()
            else:
                # Drop the connection: the server sees the client leave and stops generating.
                response.close()


def _deltas(chunk: dict[str, Any], url: str) -> list[Delta]:
    """The text and tool-call deltas of one streamed chunk (OpenAI chat ``delta.tool_calls``:
    the first part of a call has its ``id`` and ``function.name``, later ones argument text)."""
    if "error" in chunk:
        raise ModelError(f"LLM server {url} sent an error: {str(chunk['error'])[:300]}")
    choices = chunk.get("choices") or []
    if not choices:
        return []  # e.g. a final usage-only chunk
    delta = choices[0].get("delta") or {}
    deltas: list[Delta] = [delta["content"]] if delta.get("content") else []
    for call in delta.get("tool_calls") or ():
        function = call.get("function") or {}
        deltas.append(ToolCallDelta(index=int(call.get("index") or 0), arguments=function.get("arguments") or "",
                                    call_id=call.get("id"), name=function.get("name")))
    return deltas
