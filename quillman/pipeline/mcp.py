"""MCP tools: the server calls a remote Model Context Protocol server's tools itself.

A ``session.tools`` (or ``response.tools``) entry ``{"type": "mcp", "server_label", "server_url",
...}`` becomes an :class:`McpServerSpec` (checked against the operator's allowlist when it
arrives, :mod:`~quillman.pipeline.mcp_access`). Each server gets one :class:`McpConnection` per
session, made with the official ``mcp`` SDK (streamable HTTP; SSE for a server that offers only
that), listed once (``mcp_list_tools.*`` and an ``mcp_list_tools`` item), reused by every call, and
closed with the session. Its tools reach the LLM as ordinary engine tools, so their JSON Schemas
constrain the arguments as a function tool's do; the response runs the calls
(:mod:`~quillman.pipeline.response_mcp`).

Secrets: ``headers`` / ``authorization`` live only in the spec's non-repr fields and the HTTP
client; nothing here logs a spec, a header or an exception's text, and the errors the client gets
are fixed sentences (the tool's own error text excepted: the MCP server wrote it for the model).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from quillman import errors, protocol
from quillman.config import McpConfig
from quillman.engines.llm.base import Tool
from quillman.engines.llm.tools import valid_tool_name
from quillman.pipeline.mcp_access import Access, split_url

logger = logging.getLogger(__name__)

LABEL_MAX = 64
MAX_DESCRIPTION = 1024


# --- the tool definition ------------------------------------------------------------------


@dataclass(frozen=True)
class McpServerSpec:
    """One ``{"type": "mcp"}`` tool of a session or response, validated."""

    label: str
    url: str
    param: str  # where it came from, e.g. "session.tools[1]"
    description: str | None = None
    allowed_tools: tuple[str, ...] | None = None  # None: all
    allowed_read_only: bool | None = None  # allowed_tools {read_only: true}: read-only tools only
    allowed_wire: Any = None  # allowed_tools as the client sent it (echoed in session.updated)
    require_approval: Any = "always"  # "always" | "never" | {always: {...}, never: {...}}
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    authorization: str | None = field(default=None, repr=False)

    def same_server(self, other: "McpServerSpec") -> bool:
        """Whether a connection made for ``other`` serves this spec (else: a new one)."""
        return (self.label, self.url, self.headers, self.authorization) == (
            other.label, other.url, other.headers, other.authorization)

    def http_headers(self) -> dict[str, str]:
        headers = dict(self.headers)
        if self.authorization:
            headers["Authorization"] = f"Bearer {self.authorization}"
        return headers

    def offers(self, name: str, read_only: bool) -> bool:
        if self.allowed_tools is not None and name not in self.allowed_tools:
            return False
        return not self.allowed_read_only or read_only

    def needs_approval(self, name: str, read_only: bool) -> bool:
        rule = self.require_approval
        if rule in ("always", None):
            return True
        if rule == "never":
            return False

        def listed(filter_: Any) -> bool:
            if not isinstance(filter_, dict):
                return False
            names = filter_.get("tool_names")
            by_name = names is not None and name in names
            by_read_only = filter_.get("read_only") is True and read_only
            return by_name or by_read_only

        if listed(rule.get("never")):
            return False
        return True  # "always" listed, or not named by either: the safe side

    def wire(self) -> protocol.McpTool:
        return protocol.McpTool(server_label=self.label, server_url=self.url,
                                server_description=self.description, allowed_tools=self.allowed_wire,
                                require_approval=self.require_approval)


def parse_mcp_tool(definition: dict, param: str, access: Access) -> McpServerSpec:
    """A Realtime MCP tool -> spec; refused with a stable code when unusable or not allowed."""
    if not access.enabled:
        raise errors.McpDisabled("MCP tools are not enabled on this server (its operator allows no MCP server)",
                                 param=f"{param}.type")
    if definition.get("connector_id") or definition.get("tunnel_id"):
        raise errors.UnsupportedFeature("MCP connectors and tunnels are not supported; give a server_url",
                                        param=f"{param}.connector_id" if definition.get("connector_id")
                                        else f"{param}.tunnel_id")
    label = definition.get("server_label")
    if not isinstance(label, str) or not valid_tool_name(label) or len(label) > LABEL_MAX:
        raise errors.InvalidMcpTool("an MCP tool needs a server_label of 1-64 letters, digits, '_' or '-'",
                                    param=f"{param}.server_label")
    url = definition.get("server_url")
    if not isinstance(url, str) or not url or len(url) > 2048:
        raise errors.InvalidMcpTool("an MCP tool needs a server_url", param=f"{param}.server_url")
    split_url(url, f"{param}.server_url")
    access.admit(url, f"{param}.server_url")  # disabled, not allowed, a private address literal
    description = definition.get("server_description")
    if description is not None and (not isinstance(description, str) or len(description) > MAX_DESCRIPTION):
        raise errors.InvalidMcpTool(f"server_description must be a string of at most {MAX_DESCRIPTION} "
                                    "characters", param=f"{param}.server_description")
    headers = definition.get("headers") or {}
    if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and _header_safe(k, v) for k, v in headers.items()):
        # The message never repeats them: they are secrets.
        raise errors.InvalidMcpTool("headers must map header names to string values", param=f"{param}.headers")
    authorization = definition.get("authorization")
    if authorization is not None and (not isinstance(authorization, str) or not _header_safe("a", authorization)):
        raise errors.InvalidMcpTool("authorization must be a token string", param=f"{param}.authorization")
    allowed, read_only = _allowed_tools(definition.get("allowed_tools"), f"{param}.allowed_tools")
    approval = definition.get("require_approval")
    approval = "always" if approval is None else approval
    if not (approval in ("always", "never") or (isinstance(approval, dict) and set(approval) <= {"always", "never"}
                                                  and all(_valid_filter(v) for v in approval.values()))):
        raise errors.InvalidMcpTool('require_approval must be "always", "never" or {"always": {...}, "never": {...}}',
                                    param=f"{param}.require_approval")
    return McpServerSpec(label=label, url=url, param=param, description=description, allowed_tools=allowed,
                         allowed_read_only=read_only, allowed_wire=definition.get("allowed_tools"),
                         require_approval=approval, headers=tuple(sorted(headers.items())),
                         authorization=authorization)


# Headers the HTTP client owns: a client's value would change how the request is framed or routed.
_RESERVED_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "upgrade", "te", "trailer",
                     "proxy-authorization", "mcp-session-id", "mcp-protocol-version"}


def _header_safe(name: str, value: str) -> bool:
    return (bool(name) and not any(c in name + value for c in "\r\n\0") and ":" not in name
            and name.strip().lower() not in _RESERVED_HEADERS)


def _valid_filter(value: Any) -> bool:
    if value is None:
        return True
    if not isinstance(value, dict) or not set(value) <= {"tool_names", "read_only"}:
        return False
    names = value.get("tool_names")
    return (names is None or (isinstance(names, list) and all(isinstance(n, str) for n in names))) and \
        value.get("read_only") in (None, True, False)


def _allowed_tools(value: Any, param: str) -> tuple[tuple[str, ...] | None, bool | None]:
    if value is None:
        return None, None
    if isinstance(value, list) and all(isinstance(name, str) for name in value):
        return tuple(value), None
    if isinstance(value, dict) and _valid_filter(value):
        names = value.get("tool_names")
        return (tuple(names) if names is not None else None), value.get("read_only")
    raise errors.InvalidMcpTool("allowed_tools must be a list of tool names or {tool_names, read_only}", param=param)


# --- one connection -----------------------------------------------------------------------


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
                 connector: Callable[["McpConnection"], Any] | None = None):
        self.spec = spec
        self.access = access
        self.config = config
        self._emit = emit
        self._on_item = on_item  # places the mcp_list_tools item; returns its previous_item_id
        self.session_id = session_id
        if connector is None:
            from quillman.pipeline.mcp_http import http_connector as connector
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


# --- approvals ----------------------------------------------------------------------------


class Approvals:
    """``mcp_approval_request`` items waiting for the client's ``mcp_approval_response``."""

    def __init__(self) -> None:
        self._waiting: dict[str, asyncio.Future] = {}

    def expect(self, request_id: str) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        return future

    def check(self, request_id: str) -> None:
        future = self._waiting.get(request_id)
        if future is None or future.done():
            raise errors.UnknownApprovalRequest(
                f"no MCP approval request {request_id[:64]!r} is waiting for an answer",
                param="item.approval_request_id")

    def answer(self, request_id: str, approve: bool, reason: str | None) -> None:
        self.check(request_id)
        self._waiting[request_id].set_result((approve, reason))

    def drop(self, request_id: str) -> None:
        self._waiting.pop(request_id, None)


# --- the session's servers ----------------------------------------------------------------


class McpServers:
    """A session's MCP connections, by server label."""

    def __init__(self, access: Access, config: McpConfig, emit: Callable[[protocol.ServerEvent], None],
                 on_item: Callable[[protocol.ServerEvent], str | None], session_id: str,
                 connector: Callable[..., Any] | None = None):
        self.access = access
        self.config = config
        self._emit = emit
        self._on_item = on_item
        self.session_id = session_id
        self._connector = connector
        self.connections: dict[str, McpConnection] = {}

    def check_count(self, specs: tuple[McpServerSpec, ...], param: str) -> None:
        if len(specs) > self.config.max_servers_per_session:
            raise errors.ToolsTooLarge(f"{len(specs)} MCP servers; at most "
                                       f"{self.config.max_servers_per_session} are accepted", param=param)
        labels = [spec.label for spec in specs]
        if len(set(labels)) != len(labels):
            raise errors.InvalidMcpTool("server_label must be unique among the MCP tools", param=param)

    def connect(self, specs: tuple[McpServerSpec, ...]) -> None:
        """Open the connections ``specs`` need (reusing those that serve them)."""
        for spec in specs:
            current = self.connections.get(spec.label)
            if current is not None and current.spec.same_server(spec):
                current.spec = spec  # same server: new filters apply to later listings' use
                continue
            if current is not None:
                asyncio.ensure_future(current.close())
            self.connections[spec.label] = McpConnection(
                spec, self.access, self.config, self._emit, self._on_item, self.session_id,
                self._connector).start()

    def retain(self, specs: tuple[McpServerSpec, ...]) -> None:
        """The session's tools changed: close connections no spec names any more."""
        keep = {spec.label for spec in specs}
        for label in [label for label in self.connections if label not in keep]:
            asyncio.ensure_future(self.connections.pop(label).close())

    async def tools_for(self, specs: tuple[McpServerSpec, ...], taken: set[str]) -> list[ListedTool]:
        """The tools of ``specs`` (waiting for their listings), named uniquely beside ``taken``."""
        self.connect(specs)
        found: list[ListedTool] = []
        names = set(taken)
        for spec in specs:
            connection = self.connections[spec.label]
            if not await connection.ready():
                continue  # reported when the listing failed; the response goes on without them
            for tool in connection.tools:
                if not spec.offers(tool.name, tool.read_only) or not valid_tool_name(tool.name):
                    continue
                engine_name = tool.name if tool.name not in names else f"{spec.label}__{tool.name}"[:64]
                if engine_name in names:
                    continue
                names.add(engine_name)
                found.append(ListedTool(**{**tool.__dict__, "engine_name": engine_name}))
        return found

    def connection(self, label: str) -> McpConnection | None:
        return self.connections.get(label)

    async def close(self) -> None:
        connections, self.connections = list(self.connections.values()), {}
        await asyncio.gather(*(c.close() for c in connections), return_exceptions=True)
