"""Which MCP servers a session may reach: the operator's allowlist (``mcp.allowed_servers``).

The server, not the client, makes the HTTP requests to a tool's ``server_url``, so a client could
otherwise use it to reach what only the server can (its loopback, the cluster's private network,
a cloud metadata address): server-side request forgery. Three checks:

- :meth:`Access.admit` (at ``session.update``, no I/O): the URL is http(s) without credentials and
  matches an entry; an address literal must be public or named by that entry.
- :meth:`Access.check_address` (at connect time, after DNS): every address the host resolves to
  must be public, or inside the address / network of the entry that admitted the URL. A host
  *name* in the allowlist never admits a private address (DNS is not the operator's to trust).
- The MCP connection's HTTP client runs both for every request it sends and every redirect it is
  given (``quillman.pipeline.mcp_http``), so a redirect or a changed DNS answer cannot lead elsewhere.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from quillman import errors

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Entry:
    """One allowlist entry. ``host`` is a lowercased name (``*.example.com``: any subdomain) or
    None for an address entry, whose ``network`` is the address (a /32 or /128) or network."""

    text: str
    scheme: str | None = None
    host: str | None = None
    port: int | None = None
    path: str | None = None  # a URL prefix's path: the URL's path must start with it
    network: IpNetwork | None = None

    def matches(self, scheme: str, host: str, port: int, path: str) -> bool:
        if self.scheme is not None and scheme != self.scheme:
            return False
        if self.port is not None and port != self.port:
            return False
        if self.path and not (path == self.path or path.startswith(self.path.rstrip("/") + "/")):
            return False
        if self.network is not None:
            address = _address(host)
            return address is not None and address in self.network
        if self.host is not None and self.host.startswith("*."):
            return host.endswith(self.host[1:]) and host != self.host[2:]
        return host == self.host


def parse_entry(text: str) -> Entry:
    """An allowlist entry; ValueError naming it when it is none of the accepted forms."""
    raw = text.strip()
    if not raw:
        raise ValueError("mcp.allowed_servers has an empty entry")
    try:
        if "://" in raw:
            url = urlsplit(raw)
            if url.scheme not in DEFAULT_PORTS or not url.hostname or url.username or url.query:
                raise ValueError
            host = url.hostname.lower()
            address = _address(host)
            return Entry(raw, scheme=url.scheme, host=None if address else host, port=url.port or DEFAULT_PORTS[url.scheme],
                         path=url.path or None, network=ipaddress.ip_network(address) if address else None)
        if "/" in raw:  # a CIDR network
            return Entry(raw, network=ipaddress.ip_network(raw, strict=False))
        address = _address(raw.strip("[]"))
        if address is not None:
            return Entry(raw, network=ipaddress.ip_network(address))
        if raw.startswith("[") and "]:" in raw:  # [v6]:port
            host, _, port = raw[1:].partition("]:")
        else:
            host, _, port = raw.rpartition(":") if raw.count(":") == 1 else (raw, "", "")
        address = _address(host.strip("[]"))
        if address is not None:
            return Entry(raw, network=ipaddress.ip_network(address), port=int(port) if port else None)
        if not host or not all(part.isalnum() or "-" in part or part == "*" for part in host.split(".")):
            raise ValueError
        return Entry(raw, host=host.lower(), port=int(port) if port else None)
    except ValueError:
        raise ValueError(f"mcp.allowed_servers entry {raw!r} is not a URL prefix, host, host:port, "
                         "IP address or CIDR network") from None


def _address(host: str) -> IpAddress | None:
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped or address  # ::ffff:127.0.0.1 is 127.0.0.1


def is_public(address: IpAddress) -> bool:
    """Reachable on the public internet: not private, loopback, link-local, multicast, reserved."""
    return address.is_global and not address.is_multicast


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str


def split_url(url: str, param: str) -> Target:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise errors.InvalidMcpTool("server_url is not a valid URL", param=param) from None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise errors.InvalidMcpTool("server_url must be an http:// or https:// URL", param=param)
    if parts.username or parts.password:
        # Credentials in a URL end up in logs and caches; they go in headers / authorization.
        raise errors.InvalidMcpTool("server_url must not hold credentials; use headers or authorization",
                                    param=param)
    return Target(parts.scheme, parts.hostname.lower(), port or DEFAULT_PORTS[parts.scheme], parts.path or "/")


class Access:
    def __init__(self, allowed: list[str], resolve_timeout_s: float = 5.0):
        self.entries = [parse_entry(entry) for entry in allowed]
        self.resolve_timeout_s = resolve_timeout_s

    @property
    def enabled(self) -> bool:
        return bool(self.entries)

    def admit(self, url: str, param: str) -> Entry:
        """The entry that admits ``url``, or the refusal (no I/O: DNS comes at connect time)."""
        if not self.enabled:
            raise errors.McpDisabled("MCP tools are not enabled on this server (its operator allows no "
                                     "MCP server)", param=param)
        target = split_url(url, param)
        entry = next((e for e in self.entries if e.matches(target.scheme, target.host, target.port, target.path)),
                     None)
        if entry is None:
            raise errors.McpServerNotAllowed(f"MCP server {target.host!r} is not in this server's allowlist",
                                             param=param)
        address = _address(target.host)
        if address is not None:
            self._check(address, entry, target.host, param)
        return entry

    async def check_address(self, url: str, param: str) -> list[str]:
        """Resolve the URL's host; refuse it unless every address is allowed. The addresses."""
        entry = self.admit(url, param)
        target = split_url(url, param)
        addresses = await self.resolve(target.host, target.port, param)
        for address in addresses:
            self._check(address, entry, target.host, param)
        return [str(address) for address in addresses]

    async def resolve(self, host: str, port: int, param: str) -> list[IpAddress]:
        literal = _address(host)
        if literal is not None:
            return [literal]
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.resolve_timeout_s):
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, TimeoutError):
            raise errors.McpListToolsFailed(f"MCP server host {host!r} could not be resolved", param=param) from None
        found = {_address(info[4][0].split("%")[0]) for info in infos}
        return [address for address in found if address is not None]

    @staticmethod
    def _check(address: IpAddress, entry: Entry, host: str, param: str) -> None:
        if is_public(address) or (entry.network is not None and address in entry.network and (
                entry.network.is_private or entry.network.num_addresses == 1)):
            return  # (a network that spans public space too, 0.0.0.0/0, names no inside address)
        raise errors.McpPrivateAddress(
            f"MCP server {host!r} is (or resolves to) a private, loopback or link-local address that "
            "this server's allowlist does not name", param=param)
