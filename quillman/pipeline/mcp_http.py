"""MCP over HTTP: the SDK's transports (streamable HTTP, SSE) on an HTTP client that enforces the
operator's allowlist on the wire (:mod:`~quillman.pipeline.mcp_access`): every request's URL,
every redirect's target, and every TCP connection, which goes to the address that was checked.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

from quillman import errors
from quillman.pipeline.mcp_access import Entry, split_url

if TYPE_CHECKING:
    from quillman.pipeline.mcp_connection import McpConnection

logger = logging.getLogger(__name__)


async def http_connector(connection: "McpConnection", stack: contextlib.AsyncExitStack) -> Any:
    """Connect with the SDK: streamable HTTP, or SSE for a URL ending in /sse (or a server that
    refuses streamable HTTP). Every request and redirect passes the access checks."""
    from mcp import Client
    from mcp.client.sse import sse_client
    from mcp.client.streamable_http import streamable_http_client

    spec = connection.spec

    def factory(headers: dict[str, str] | None = None, timeout: Any = None, auth: Any = None) -> Any:
        return guarded_client(connection, timeout)

    path = split_url(spec.url, spec.param).path.rstrip("/")
    attempts = ["sse"] if path.endswith("/sse") else ["streamable_http", "sse"]
    last: BaseException | None = None
    for kind in attempts:
        inner = contextlib.AsyncExitStack()
        try:
            if kind == "sse":
                transport = sse_client(spec.url, timeout=connection.config.connect_timeout_s,
                                       sse_read_timeout=24 * 3600, httpx_client_factory=factory)
            else:
                http = await inner.enter_async_context(guarded_client(connection))
                transport = streamable_http_client(spec.url, http_client=http)
            client = await inner.enter_async_context(Client(transport, mode="legacy"))
        except Exception as exc:  # noqa: BLE001 - try the next transport, else report
            await inner.aclose()
            last = exc
            if connection.refusal is not None:
                raise connection.refusal from None
            continue
        stack.push_async_callback(inner.aclose)
        return client
    assert last is not None
    raise last


def guarded_client(connection: "McpConnection", timeout: Any = None) -> Any:
    import httpx2

    guard = _Guard(connection)
    return httpx2.AsyncClient(
        headers=connection.spec.http_headers(),
        timeout=timeout or httpx2.Timeout(connection.config.connect_timeout_s, read=24 * 3600),
        transport=_GuardedTransport(guard),
        trust_env=False,  # no proxy from the environment: the guard sees the real peer
        event_hooks={"request": [guard.on_request], "response": [guard.on_response]},
    )


class _Guard:
    """The access checks on the wire: each request's URL (after DNS), each redirect's target, and
    each TCP connection, which goes to the address that was checked (no second DNS answer)."""

    def __init__(self, connection: "McpConnection"):
        self.connection = connection
        self.access = connection.access
        self.param = f"{connection.spec.param}.server_url"
        self.entry: Entry = self.access.admit(connection.spec.url, self.param)

    def _refuse(self, exc: errors.QuillmanError) -> None:
        if self.connection.refusal is None:
            self.connection.refusal = exc
        raise exc

    async def on_request(self, request: Any) -> None:
        try:
            self.entry = self.access.admit(str(request.url), self.param)
        except errors.QuillmanError as exc:
            self._refuse(exc)

    async def on_response(self, response: Any) -> None:
        if not response.is_redirect:
            return
        location = response.headers.get("location", "")
        target = str(response.request.url.join(location))
        try:
            await self.access.check_address(target, self.param)
        except errors.QuillmanError as exc:
            refusal = type(exc)(f"MCP server {self.connection.spec.label!r} redirected to a server that is not "
                                f"allowed: {exc.message}", param=self.param)
            if self.connection.refusal is None:
                self.connection.refusal = refusal
            # The SDK does not follow a redirect that leaves the origin; refused or not, the
            # request fails, and the connection reports this refusal.

    async def connect_address(self, host: str, port: int) -> str:
        addresses = await self.access.resolve(host, port, self.param)
        try:
            for address in addresses:
                self.access._check(address, self.entry, host, self.param)  # noqa: SLF001 - one rule
        except errors.QuillmanError as exc:
            self._refuse(exc)
        if not addresses:
            self._refuse(errors.McpListToolsFailed(f"MCP server host {host!r} has no address", param=self.param))
        return str(addresses[0])


def _GuardedTransport(guard: _Guard) -> Any:
    import httpx2

    transport = httpx2.AsyncHTTPTransport(trust_env=False)
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if backend is not None:  # httpcore2's pool: connect to the checked address
        pool._network_backend = _GuardedBackend(backend, guard)  # noqa: SLF001
    else:  # another httpx2 layout: the request and redirect checks still run, DNS is not pinned
        logger.warning("MCP: cannot pin connections to the checked address with this httpx2 version")
    return transport


class _GuardedBackend:
    def __init__(self, inner: Any, guard: _Guard):
        self._inner = inner
        self._guard = guard

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None, socket_options: Any = None) -> Any:
        address = await self._guard.connect_address(host, port)
        return await self._inner.connect_tcp(address, port, timeout=timeout, local_address=local_address,
                                             socket_options=socket_options)

    def __getattr__(self, name: str) -> Any:  # connect_unix_socket, sleep
        return getattr(self._inner, name)
