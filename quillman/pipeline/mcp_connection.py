"""One MCP server of one session: the connection, the tools it listed, its calls and their results.

Each server gets one :class:`McpConnection` per session (kept by
:class:`~quillman.pipeline.mcp_servers.McpServers`), made with the official ``mcp`` SDK (streamable
HTTP; SSE for a server that offers only that: :mod:`~quillman.pipeline.mcp_http`), listed once
(``mcp_list_tools.*`` and an ``mcp_list_tools`` item), reused by every call, and closed with the
session.

Secrets: nothing here logs a spec, a header or an exception's text, and the errors the client gets
are fixed sentences (the tool's own error text excepted: the MCP server wrote it for the model).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from quillman import errors, protocol
from quillman.config import McpConfig
from quillman.engines.llm.base import Tool
from quillman.pipeline.mcp_access import Access
from quillman.pipeline.mcp_spec import MAX_DESCRIPTION, McpServerSpec

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ListedTool:
    """A tool the MCP server offers this session (after ``allowed_tools``)."""

    server_label: str
    name: str  # the MCP server's name for it
    engine_name: str  # the name the LLM calls it by (unique among a response's tools)
    description: str
    input_schema: dict[str, Any]
    read_only: bool
    annotations: dict[str, Any] | None = None

    def engine_tool(self) -> Tool:
        return Tool(name=self.engine_name, description=self.description, parameters=self.input_schema)

    def wire(self) -> protocol.McpListedTool:
        return protocol.McpListedTool(name=self.name, input_schema=self.input_schema,
                                      description=self.description or None, annotations=self.annotations)


@dataclass
class CallResult:
    output: str | None = None
    error: protocol.McpCallError | None = None
    tool_ms: float = 0.0  # the round trip of the call itself (for the overhead bench)


class McpConnection:
    """One MCP server of one session: connected and listed once, then reused by every call.

    The SDK's client is entered and left in this connection's own task (anyio requires it);
    calls from response tasks go through the session it holds."""

    def __init__(self, spec: McpServerSpec, access: Access, config: McpConfig,
                 emit: Callable[[protocol.ServerEvent], None],
                 on_item: Callable[[protocol.ServerEvent], str | None], session_id: str,
                 connector: Callable[["McpConnection", contextlib.AsyncExitStack], Any] | None = None):
        self.spec = spec
        self.access = access
        self.config = config
        self._emit = emit
        self._on_item = on_item  # places the mcp_list_tools item; returns its previous_item_id
        self.session_id = session_id
        if connector is None:
            from quillman.pipeline.mcp_http import http_connector

            connector = http_connector
        self._connector = connector
        self.item_id = protocol.new_id("item")
        self.tools: list[ListedTool] = []
        self.failure: errors.QuillmanError | None = None
        self.refusal: errors.QuillmanError | None = None  # a redirect / address the guard refused
        self._client: Any = None
        self._ready = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.lost = False

    def start(self) -> "McpConnection":
        self._task = asyncio.create_task(self._run(), name=f"mcp-{self.spec.label}")
        return self

    async def ready(self) -> bool:
        """Wait for the listing; True if the tools are there."""
        await self._ready.wait()
        return self.failure is None

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task

    def _event(self, event: protocol.ServerEvent) -> None:
        if isinstance(event, (protocol.ConversationItemAdded, protocol.ConversationItemDone)):
            event.previous_item_id = self._on_item(event)
        self._emit(event)

    async def _run(self) -> None:
        label = self.spec.label
        self._event(protocol.ConversationItemAdded(item=protocol.McpListToolsItem(id=self.item_id, server_label=label)))
        self._emit(protocol.McpListToolsInProgress(item_id=self.item_id))
        try:
            async with contextlib.AsyncExitStack() as stack:
                await self._connect_and_list(stack)
                if self.failure is None:
                    await asyncio.Event().wait()  # held open until the session closes (cancel)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the transport broke (the server went away)
            logger.info("[%s] MCP %s: connection lost (%s)", self.session_id, label, type(exc).__name__)
        finally:
            self.lost = True
            if not self._ready.is_set():
                self._fail(errors.McpListToolsFailed(f"listing the tools of MCP server {label!r} was cancelled",
                                                     param=self.spec.param), report=False)

    async def _connect_and_list(self, stack: contextlib.AsyncExitStack) -> None:
        label = self.spec.label
        try:
            async with asyncio.timeout(self.config.connect_timeout_s):
                await self.access.check_address(self.spec.url, f"{self.spec.param}.server_url")
                self._client = await self._connector(self, stack)
                listed = await self._list()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure to connect is reported, never raised
            self._fail(self._listing_error(exc))
            return
        self.tools = listed
        logger.info("[%s] MCP %s: %d tools listed", self.session_id, label, len(listed))
        self._emit(protocol.McpListToolsCompleted(item_id=self.item_id))
        self._event(protocol.ConversationItemDone(item=self._item()))
        self._ready.set()

    def _item(self) -> protocol.McpListToolsItem:
        return protocol.McpListToolsItem(id=self.item_id, server_label=self.spec.label,
                                         tools=[tool.wire() for tool in self.tools])

    def _listing_error(self, exc: BaseException) -> errors.QuillmanError:
        refusal = self.refusal or (exc if isinstance(exc, errors.QuillmanError) else None)
        if refusal is not None:
            return refusal
        if isinstance(exc, TimeoutError):
            message = (f"MCP server {self.spec.label!r} did not list its tools within "
                       f"{self.config.connect_timeout_s:g} s")
        else:
            message = f"could not connect to MCP server {self.spec.label!r} or list its tools"
        logger.info("[%s] MCP %s: listing failed (%s)", self.session_id, self.spec.label, type(exc).__name__)
        return errors.McpListToolsFailed(message, param=self.spec.param)

    def _fail(self, failure: errors.QuillmanError, report: bool = True) -> None:
        self.failure = failure
        self.lost = True
        if report:
            self._emit(protocol.McpListToolsFailed(item_id=self.item_id))
            self._event(protocol.ConversationItemDone(item=self._item()))
            self._emit(protocol.error_event(failure))
        self._ready.set()

    async def _list(self) -> list[ListedTool]:
        from quillman.pipeline.tools import check_schema

        tools: list[ListedTool] = []
        cursor = None
        while True:
            result = await self._client.list_tools(cursor=cursor)
            for tool in result.tools:
                annotations = tool.annotations.model_dump(mode="json", exclude_none=True) if tool.annotations else None
                read_only = bool(tool.annotations and tool.annotations.read_only_hint)
                if not self.spec.offers(tool.name, read_only):
                    continue
                schema = tool.input_schema or {"type": "object", "properties": {}}
                try:
                    check_schema(schema, "input_schema")
                except errors.QuillmanError:
                    logger.info("[%s] MCP %s: tool %r skipped (its input schema is unusable)",
                                self.session_id, self.spec.label, tool.name[:64])
                    continue
                tools.append(ListedTool(server_label=self.spec.label, name=tool.name, engine_name=tool.name,
                                        description=(tool.description or "")[:MAX_DESCRIPTION],
                                        input_schema=schema, read_only=read_only, annotations=annotations))
                if len(tools) >= self.config.max_tools_per_server:
                    return tools
            cursor = getattr(result, "next_cursor", None)
            if not cursor:
                return tools

    async def call(self, name: str, arguments: dict[str, Any]) -> CallResult:
        """Run one tool; never raises but for cancellation (barge-in cancels the request)."""
        timeout_s = self.config.call_timeout_s
        if self._client is None or self.lost:
            return CallResult(error=protocol.McpProtocolError(
                code=-32000, message=f"the connection to MCP server {self.spec.label!r} is closed"))
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s):
                result = await self._client.call_tool(name, arguments, read_timeout_seconds=timeout_s)
        except TimeoutError:
            return CallResult(error=protocol.McpToolExecutionError(
                message=f"the tool did not answer within {timeout_s:g} s"))
        except Exception as exc:  # noqa: BLE001 - any failure is the call's error, not the session's
            return CallResult(error=self._call_error(exc))
        tool_ms = (time.perf_counter() - started) * 1000
        text = _cap(result_text(result), self.config.max_output_chars)
        if result.is_error:
            return CallResult(error=protocol.McpToolExecutionError(message=text or "the tool failed"), tool_ms=tool_ms)
        return CallResult(output=text, tool_ms=tool_ms)

    def _call_error(self, exc: BaseException) -> protocol.McpCallError:
        from mcp.shared.exceptions import MCPError

        if isinstance(exc, MCPError):  # the server's own JSON-RPC error: its message is for the model
            return protocol.McpProtocolError(code=exc.code, message=_cap(exc.error.message, 500))
        status = getattr(getattr(exc, "response", None), "status_code", None)
        logger.info("[%s] MCP %s: call failed (%s)", self.session_id, self.spec.label, type(exc).__name__)
        if isinstance(status, int):
            return protocol.McpHttpError(code=status, message=f"the MCP server answered HTTP {status}")
        return protocol.McpProtocolError(code=-32000, message=f"MCP server {self.spec.label!r} could not be reached")


def result_text(result: Any) -> str:
    """A CallToolResult as the text the model reads: its text blocks; other blocks as JSON."""
    parts: list[str] = []
    for block in result.content or ():
        if getattr(block, "type", None) == "text":
            parts.append(block.text)
        else:  # an image, audio, a resource: described, never its bytes
            kind = getattr(block, "type", "content")
            parts.append(json.dumps({"type": kind, "mime_type": getattr(block, "mime_type", None)}))
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content))
    return "\n".join(parts)


def _cap(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    marker = f" [output cut at {limit} of {len(text)} characters]"
    return text[:max(0, limit - len(marker))] + marker
