"""A session's MCP state: its connections, by server label, and the approval requests its calls wait on.

MCP tools, end to end: a tool entry becomes a spec (:mod:`~quillman.pipeline.mcp_spec`); each
server gets one connection per session (:mod:`~quillman.pipeline.mcp_connection`), which
:class:`McpServers` opens, reuses while the server stays the same, and closes when the session's
tools drop it or the session ends. Its tools reach the LLM as ordinary engine tools, named
uniquely among a response's, so their JSON Schemas constrain the arguments as a function tool's
do; the response runs the calls (:mod:`~quillman.pipeline.response_mcp`), after an
``mcp_approval_request`` answered through :class:`Approvals` where the spec requires one.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from quillman import errors, protocol
from quillman.config import McpConfig
from quillman.engines.llm.tools import valid_tool_name
from quillman.pipeline.mcp_access import Access
from quillman.pipeline.mcp_connection import ListedTool, McpConnection
from quillman.pipeline.mcp_spec import McpServerSpec


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
