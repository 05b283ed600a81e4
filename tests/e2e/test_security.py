"""Who may connect to the real server: API keys, origins, the session cap, the listening address.

These tests run against the keyed server (port 8001, tests/conftest.py) started with API keys
(``QUILLMAN_API_KEYS``; it also serves the browser's WebRTC page test), so that the rest of the suite can use the usual keyless server.

Refusals happen before the socket is accepted: the upgrade request gets an HTTP answer with a
JSON ``error`` body: 401 ``invalid_api_key``, 403 ``origin_not_allowed``, 503
``server_at_capacity`` with ``Retry-After``. No session is created for a refused socket.
With keys, ``/prewarm``, ``/stats`` and the API docs (``/docs``, ``/openapi.json``) need one too (Bearer
header, the same 401 body); ``/healthz``, ``/voices`` and the web client stay open.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import httpx
import pytest
import websockets
import yaml
from websockets.exceptions import InvalidStatus

from quillman_bench.server_process import TEST_API_KEY

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
API_KEY = TEST_API_KEY  # the keyed server of tests/conftest.py


@pytest.fixture(scope="module")
def server_url(keyed_server) -> str:
    """The real graph (serve_config.yaml) with API keys required (tests/conftest.py)."""
    return keyed_server[0].url


@pytest.fixture(scope="module")
def ws_url(server_url: str) -> str:
    return server_url.replace("http://", "ws://") + "/v1/realtime"
KEY_SUBPROTOCOL = "openai-insecure-api-key."


def bearer(key: str | None = API_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


async def open_session(url: str, **kwargs) -> websockets.ClientConnection:
    """Connect and read ``session.created``: the socket was accepted and a session runs."""
    ws = await websockets.connect(url, open_timeout=30, max_size=None, **kwargs)
    event = json.loads(await asyncio.wait_for(ws.recv(), 30))
    assert event["type"] == "session.created", event
    return ws


async def refused(url: str, **kwargs) -> tuple[int, str | None]:
    """(HTTP status, error code of the JSON body) of a handshake that must fail."""
    with pytest.raises(InvalidStatus) as info:
        ws = await websockets.connect(url, open_timeout=30, **kwargs)
        await ws.close()
    response = info.value.response
    try:
        code = json.loads(bytes(response.body))["error"]["code"]
    except (ValueError, KeyError, TypeError):
        code = None
    return response.status_code, code


UNAUTHORIZED = (401, "invalid_api_key")
FORBIDDEN_ORIGIN = (403, "origin_not_allowed")


def ingress_sessions(server_url: str) -> int:
    body = httpx.get(f"{server_url}/healthz", timeout=30).json()
    return body["deployments"]["Ingress"]["sessions"]


async def wait_sessions(server_url: str, expected: int, timeout_s: float = 20) -> int:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while (count := await asyncio.to_thread(ingress_sessions, server_url)) != expected and loop.time() < deadline:
        await asyncio.sleep(0.2)
    return count


# --- API keys ------------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer wrong-key"},
    {"Authorization": f"Basic {API_KEY}"},
    {"Authorization": f"Bearer {API_KEY}x"},
    {"Authorization": f"Bearer {(API_KEY or '')[:-1]}"},
    {"X-Api-Key": API_KEY or ""},
], ids=["none", "wrong", "basic", "longer", "prefix", "other-header"])
async def test_missing_or_wrong_key_is_refused(ws_url, server_url, headers):
    before = await asyncio.to_thread(ingress_sessions, server_url)
    assert await refused(ws_url, additional_headers=headers) == UNAUTHORIZED
    assert await asyncio.to_thread(ingress_sessions, server_url) == before  # no session was created


async def test_key_in_the_query_string_is_not_accepted(ws_url):
    # Query strings end up in proxy and access logs: keys are not taken from there.
    assert await refused(f"{ws_url}?api_key={API_KEY}&key={API_KEY}") == UNAUTHORIZED


async def test_wrong_key_in_subprotocol_is_refused(ws_url):
    assert await refused(ws_url, subprotocols=["realtime", KEY_SUBPROTOCOL + "wrong"]) == UNAUTHORIZED


async def test_bearer_key_is_accepted(ws_url):
    ws = await open_session(ws_url, additional_headers=bearer())
    await ws.close()


@pytest.mark.parametrize("offered", [["realtime"], []], ids=["with-realtime", "key-only"])
async def test_subprotocol_key_is_accepted(ws_url, offered):
    """What browsers (which can't set headers) and OpenAI's JS SDK send."""
    ws = await open_session(ws_url, subprotocols=[*offered, KEY_SUBPROTOCOL + API_KEY])
    # The server picks "realtime" when offered, never echoes the key back.
    assert ws.subprotocol == ("realtime" if offered else None)
    await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
    assert json.loads(await asyncio.wait_for(ws.recv(), 30))["type"] == "input_audio_buffer.cleared"
    await ws.close()


async def test_the_pipeline_alias_is_guarded_too(server_url):
    url = server_url.replace("http://", "ws://") + "/pipeline"
    assert await refused(url) == UNAUTHORIZED
    ws = await open_session(url, additional_headers=bearer())
    await ws.close()


# --- HTTP routes -----------------------------------------------------------------------------------

PROTECTED_ROUTES = ["/prewarm", "/stats", "/docs", "/openapi.json"]


@pytest.mark.parametrize("path", PROTECTED_ROUTES)
@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Bearer wrong-key"}, {"Authorization": f"Basic {API_KEY}"},
], ids=["none", "wrong", "basic"])
async def test_prewarm_and_the_api_docs_need_a_key(server_url, path, headers):
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.get(server_url + path, headers=headers)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/json"
    assert response.headers["www-authenticate"] == "Bearer"
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_api_key")
    assert "Authorization: Bearer <key>" in error["message"]


async def test_the_http_refusal_has_the_websockets_error_body(server_url, ws_url):
    with pytest.raises(InvalidStatus) as info:
        await websockets.connect(ws_url, open_timeout=30)
    socket_error = json.loads(bytes(info.value.response.body))["error"]
    async with httpx.AsyncClient(timeout=30) as client:
        http_error = (await client.get(f"{server_url}/prewarm")).json()["error"]
    assert set(http_error) == set(socket_error) == {"type", "code", "message"}
    assert (http_error["type"], http_error["code"]) == (socket_error["type"], socket_error["code"])


async def test_the_api_docs_with_a_key(server_url):
    async with httpx.AsyncClient(timeout=30, headers=bearer()) as client:
        schema = await client.get(f"{server_url}/openapi.json")
        docs = await client.get(f"{server_url}/docs")
        stats = await client.get(f"{server_url}/stats")
    assert stats.status_code == 200 and stats.json() == {"LanguageModel": {}}  # llama.cpp reports none
    assert schema.status_code == 200
    assert {"/prewarm", "/healthz", "/voices"} <= set(schema.json()["paths"])
    assert docs.status_code == 200 and "SwaggerUIBundle" in docs.text


async def test_prewarm_with_a_key_warms_every_model(server_url):
    async with httpx.AsyncClient(timeout=300, headers=bearer()) as client:
        response = await client.get(f"{server_url}/prewarm")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ready"
    assert set(body["deployments"]) == {"Transcriber", "LanguageModel", "Speaker"}


@pytest.mark.parametrize("path", ["/healthz", "/voices", "/", "/app.js"])
async def test_health_voices_and_the_web_client_need_no_key(server_url, path):
    """Health probes carry no key, and the page must load to ask for one."""
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.get(server_url + path)
    assert response.status_code == 200, response.text


# --- origins -------------------------------------------------------------------------------------


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1:1",
                                    "http://127.0.0.1.evil.example"])
async def test_foreign_browser_origin_is_refused(ws_url, origin):
    """A page elsewhere must not use a visitor's browser to reach a server on localhost."""
    assert await refused(ws_url, additional_headers=bearer(), origin=origin) == FORBIDDEN_ORIGIN


async def test_own_origin_is_accepted(ws_url, server_url):
    """The server's own web client (same host and port) connects."""
    ws = await open_session(ws_url, additional_headers=bearer(), origin=server_url)
    await ws.close()


async def test_no_origin_is_accepted(ws_url):
    """Not a browser (SDKs, the CLI): the API key is the control."""
    ws = await open_session(ws_url, additional_headers=bearer())
    await ws.close()


# --- capacity ------------------------------------------------------------------------------------


def session_cap() -> int:
    """Sessions the server holds: $QUILLMAN_TEST_MAX_SESSIONS, else what serve_config.yaml says."""
    if os.environ.get("QUILLMAN_TEST_MAX_SESSIONS"):
        return int(os.environ["QUILLMAN_TEST_MAX_SESSIONS"])
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    app = config["applications"][0]
    per_replica = app["args"].get("server", {}).get("max_sessions_per_replica", 64)
    replicas = next(d.get("num_replicas", 1) for d in app["deployments"] if d["name"] == "Ingress")
    return int(per_replica) * int(replicas)


async def test_sessions_beyond_the_cap_are_refused_not_queued(ws_url, server_url):
    cap = session_cap()
    if cap > 128:
        pytest.skip(f"session cap {cap} is too many sockets for a test")
    assert await wait_sessions(server_url, 0) == 0, "sessions left over from another test"
    sockets: list[websockets.ClientConnection] = []
    try:
        for start in range(0, cap, 16):  # in batches: the handshakes overlap, the cap still holds
            sockets += await asyncio.gather(*(open_session(ws_url, additional_headers=bearer())
                                              for _ in range(min(16, cap - start))))
        assert await asyncio.to_thread(ingress_sessions, server_url) == cap
        # One more: refused at once (not left waiting in a queue), told to come back later.
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(InvalidStatus) as info:
            await websockets.connect(ws_url, open_timeout=30, additional_headers=bearer())
        assert loop.time() - start < 25
        response = info.value.response
        assert response.status_code == 503
        assert int(response.headers["Retry-After"]) > 0
        assert json.loads(bytes(response.body))["error"]["code"] == "server_at_capacity"
        # The refused socket took no slot, and the full sessions still work.
        assert await asyncio.to_thread(ingress_sessions, server_url) == cap
        await sockets[0].send(json.dumps({"type": "input_audio_buffer.clear"}))
        assert json.loads(await asyncio.wait_for(sockets[0].recv(), 30))["type"] == "input_audio_buffer.cleared"
        # A slot that frees up is taken again.
        await sockets.pop().close()
        assert await wait_sessions(server_url, cap - 1) == cap - 1
        sockets.append(await open_session(ws_url, additional_headers=bearer()))
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    assert await wait_sessions(server_url, 0) == 0


# --- ephemeral client secrets (ek_...) ------------------------------------------------------------


async def test_a_client_secret_opens_one_socket_and_one_call_only(server_url, ws_url):
    """Minted with the key (the shared Ray actor holds it), used once; reused, unknown or used
    to mint: refused with stable codes. The WebRTC side: tests/e2e/test_webrtc.py."""
    from quillman.webrtc.caller import CallRefused, WebRtcCaller

    async with httpx.AsyncClient(timeout=60) as http:
        async def mint(key=API_KEY, **body):
            return await http.post(f"{server_url}/v1/realtime/client_secrets", json=body, headers=bearer(key))

        minted = await mint(expires_after={"anchor": "created_at", "seconds": 60},
                            session={"type": "realtime", "instructions": "Be brief."})
        assert minted.status_code == 200, minted.text
        secret = minted.json()["value"]
        assert secret.startswith("ek_") and minted.json()["session"]["instructions"] == "Be brief."
        ws = await open_session(ws_url, subprotocols=["realtime", KEY_SUBPROTOCOL + secret])
        await ws.close()
        assert await refused(ws_url, subprotocols=[KEY_SUBPROTOCOL + secret]) == (401, "client_secret_already_used")
        assert await refused(ws_url, subprotocols=[KEY_SUBPROTOCOL + "ek_unknown"]) == (401, "invalid_client_secret")
        assert (await mint(key=secret)).json()["error"]["code"] == "client_secret_not_allowed"
        assert (await mint(key=None)).status_code == 401

        call_secret = (await mint()).json()["value"]
        caller = WebRtcCaller(server_url, key=call_secret)
        await caller.connect()
        await caller.close()
        again = WebRtcCaller(server_url, key=call_secret)
        with pytest.raises(CallRefused) as info:
            await again.connect()
        assert (info.value.status, info.value.code) == (401, "client_secret_already_used")


# --- where it listens -----------------------------------------------------------------------------


def listening_addresses(port: int) -> set[str]:
    """Local addresses of the sockets listening on ``port`` (this machine, /proc/net)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            address, port_hex = fields[1].rsplit(":", 1)
            if fields[3] == "0A" and int(port_hex, 16) == port:
                found.add(".".join(str(b) for b in bytes.fromhex(address)[::-1]) if len(address) == 8
                          else f"[{address}]")
    return found


def test_listens_on_loopback_only(server_url):
    """serve_config.yaml binds the HTTP port to 127.0.0.1: nothing off this machine reaches it."""
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    assert config["http_options"]["host"] == "127.0.0.1"
    port = int(server_url.rsplit(":", 1)[1])
    addresses = listening_addresses(port)
    if not addresses:
        pytest.skip("the server is not on this machine")
    assert addresses == {"127.0.0.1"}, addresses
