"""The MCP allowlist: entries, URL checks, DNS answers, redirects and the pinned connection."""

from __future__ import annotations

import ipaddress

import pytest

from quillman import errors
from quillman.config import McpConfig
from quillman.pipeline.mcp_connection import McpConnection
from quillman.pipeline.mcp_spec import parse_mcp_tool
from quillman.pipeline.mcp_http import _Guard, _GuardedBackend, _GuardedTransport
from quillman.pipeline.mcp_access import Access, parse_entry

P = "session.tools[0].server_url"


@pytest.mark.parametrize("entry", ["https://mcp.example.com/mcp", "mcp.example.com", "*.example.com",
                                   "127.0.0.1:8931", "10.0.0.0/8", "::1", "[::1]:80", "http://127.0.0.1:9/x"])
def test_entries_parse(entry):
    assert parse_entry(entry).text == entry


@pytest.mark.parametrize("entry", ["", "ftp://x.example.com", "http://user:pw@x.example.com", "a b", "x_y.com"])
def test_bad_entries_are_refused_at_startup(entry):
    with pytest.raises(ValueError):
        McpConfig(allowed_servers=[entry])


@pytest.mark.parametrize("allowed, url, code", [
    ([], "https://mcp.example.com/mcp", "mcp_disabled"),
    (["https://mcp.example.com/mcp"], "https://mcp.example.com/mcp/v1", None),
    (["https://mcp.example.com/mcp"], "https://mcp.example.com/mcpx", "mcp_server_not_allowed"),
    (["https://mcp.example.com/mcp"], "http://mcp.example.com/mcp", "mcp_server_not_allowed"),
    (["https://mcp.example.com/mcp"], "https://mcp.example.com:8443/mcp", "mcp_server_not_allowed"),
    (["*.example.com"], "https://a.b.example.com/", None),
    (["*.example.com"], "https://example.com/", "mcp_server_not_allowed"),
    (["*.example.com"], "https://evil-example.com/", "mcp_server_not_allowed"),
    (["mcp.example.com"], "https://MCP.example.com/x", None),
    (["127.0.0.1:8931"], "http://127.0.0.1:8931/mcp", None),
    (["127.0.0.1:8931"], "http://127.0.0.1:8932/mcp", "mcp_server_not_allowed"),
    (["10.0.0.0/8"], "http://10.1.2.3/mcp", None),
    (["10.0.0.0/8"], "http://192.168.1.1/mcp", "mcp_server_not_allowed"),
    (["0.0.0.0/0"], "http://192.168.1.1/mcp", "mcp_server_private_address"),  # "all" is not "the inside"
    (["0.0.0.0/0"], "http://8.8.8.8/mcp", None),
    (["::1"], "http://[::1]/mcp", None),
    (["127.0.0.1"], "http://[::ffff:127.0.0.1]/mcp", None),
    (["mcp.example.com"], "file:///etc/passwd", "invalid_mcp_tool"),
])
def test_admit(allowed, url, code):
    access = Access(allowed)
    if code is None:
        access.admit(url, P)
        return
    with pytest.raises(errors.QuillmanError) as refused:
        access.admit(url, P)
    assert refused.value.code == code and refused.value.param == P


def fake_dns(access: Access, answers: dict[str, list[str]]) -> None:
    async def resolve(host, port, param):
        return [ipaddress.ip_address(a) for a in answers[host]]
    access.resolve = resolve


@pytest.mark.parametrize("answer, code", [(["93.184.216.34"], None), (["127.0.0.1"], "mcp_server_private_address"),
                                          (["93.184.216.34", "10.0.0.5"], "mcp_server_private_address"),
                                          (["169.254.169.254"], "mcp_server_private_address"),
                                          (["fe80::1"], "mcp_server_private_address")])
async def test_a_name_is_checked_after_dns(answer, code):
    access = Access(["mcp.example.com"])
    fake_dns(access, {"mcp.example.com": answer})
    if code is None:
        assert await access.check_address("https://mcp.example.com/mcp", P) == answer
        return
    with pytest.raises(errors.QuillmanError) as refused:
        await access.check_address("https://mcp.example.com/mcp", P)
    assert refused.value.code == code


def connection(access: Access, url: str) -> McpConnection:
    spec = parse_mcp_tool({"type": "mcp", "server_label": "w", "server_url": url}, "session.tools[0]", access)
    return McpConnection(spec, access, McpConfig(), lambda e: None, lambda e: None, "sess")


class Recorder:
    def __init__(self):
        self.hosts = []

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        self.hosts.append(host)
        return "stream"


async def test_the_connection_goes_to_the_checked_address_and_refuses_a_changed_answer():
    access = Access(["mcp.example.com"])
    conn = connection(access, "https://mcp.example.com/mcp")
    inner = Recorder()
    backend = _GuardedBackend(inner, _Guard(conn))
    fake_dns(access, {"mcp.example.com": ["93.184.216.34"]})
    assert await backend.connect_tcp("mcp.example.com", 443) == "stream"
    assert inner.hosts == ["93.184.216.34"]  # pinned: no second DNS answer between check and connect
    fake_dns(access, {"mcp.example.com": ["127.0.0.1"]})  # DNS rebinding
    with pytest.raises(errors.McpPrivateAddress):
        await backend.connect_tcp("mcp.example.com", 443)
    assert inner.hosts == ["93.184.216.34"] and conn.refusal.code == "mcp_server_private_address"


class FakeResponse:
    def __init__(self, location: str):
        import httpx2

        self.is_redirect = True
        self.headers = {"location": location}
        self.request = httpx2.Request("POST", "https://mcp.example.com/mcp")


@pytest.mark.parametrize("location, code", [("http://169.254.169.254/latest", "mcp_server_not_allowed"),
                                            ("https://internal.example.com/mcp", "mcp_server_not_allowed"),
                                            ("/other", None)])
async def test_a_redirect_elsewhere_is_refused(location, code):
    access = Access(["mcp.example.com"])
    fake_dns(access, {"mcp.example.com": ["93.184.216.34"]})
    conn = connection(access, "https://mcp.example.com/mcp")
    await _Guard(conn).on_response(FakeResponse(location))
    assert (conn.refusal.code if conn.refusal else None) == code


def test_the_sdk_transport_connects_through_the_guard():
    conn = connection(Access(["mcp.example.com"]), "https://mcp.example.com/mcp")
    transport = _GuardedTransport(_Guard(conn))
    assert isinstance(transport._pool._network_backend, _GuardedBackend)  # noqa: SLF001
