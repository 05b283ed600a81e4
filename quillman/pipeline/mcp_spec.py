"""MCP tool definitions: a ``{"type": "mcp"}`` tool entry, validated into an :class:`McpServerSpec`.

A ``session.tools`` (or ``response.tools``) entry ``{"type": "mcp", "server_label", "server_url",
...}`` becomes an :class:`McpServerSpec` (checked against the operator's allowlist when it
arrives, :mod:`~quillman.pipeline.mcp_access`); the spec decides which of the server's tools are
offered (``allowed_tools``) and which need the client's approval (``require_approval``).

Secrets: ``headers`` / ``authorization`` live only in the spec's non-repr fields and the HTTP
client (:mod:`~quillman.pipeline.mcp_http`); the errors here never repeat them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from quillman import errors, protocol
from quillman.engines.llm.tools import valid_tool_name
from quillman.pipeline.mcp_access import Access, split_url

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
