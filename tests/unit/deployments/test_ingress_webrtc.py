"""The ingress's WebRTC and client-secret routes through FastAPI's test client, without Ray: a
real aiortc caller against ``POST /v1/realtime/calls`` in front of a session on fake models,
secrets minted and redeemed (once, not after expiry), the sideband socket, bad offers. The real
server is tested in tests/e2e/test_webrtc.py."""

from __future__ import annotations

import asyncio
import json
import logging
import types

import pytest
from fastapi.testclient import TestClient
from ray import serve
from starlette.testclient import WebSocketDenialResponse

from quillman.client_secrets import SecretStore
from quillman.config import AppConfig
from quillman.deployments import ingress as ingress_module
from quillman.metrics import SessionMetrics
from quillman.webrtc import network
from quillman.webrtc.call import COUNTS, udp_sockets
from quillman.webrtc.caller import WebRtcCaller

KEY = "unit-test-key"


class Clock:
    now = 1_000_000.0

    def __call__(self):
        return self.now


class LocalSecrets:
    """SharedSecrets without the Ray actor: the same store, in process."""

    def __init__(self, clock):
        self.store = SecretStore(clock=clock)

    async def mint(self, ttl_s, session):
        return self.store.mint(ttl_s, session)

    async def redeem(self, secret):
        return self.store.redeem(secret)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def server(monkeypatch, backends, clock):
    def make(keys=(), **config) -> TestClient:
        cls = ingress_module.Ingress.func_or_class.__mro__[1]
        ingress = object.__new__(cls)
        ingress.config = AppConfig.model_validate({"webrtc": {"connect_timeout_s": 3}, **config})
        ingress.api_keys = list(keys)
        ingress.open_sockets = 0
        ingress.sessions, ingress.calls, ingress._call_tasks = {}, {}, set()
        ingress._voices = [ingress.config.session.voice]
        ingress.backends, ingress.metrics, ingress.end_of_turn = backends, SessionMetrics(), None
        ingress.rtc_config = network.rtc_configuration(ingress.config.webrtc)
        ingress.secrets = LocalSecrets(clock)
        context = types.SimpleNamespace(servable_object=ingress, app_name="quillman")
        monkeypatch.setattr(serve, "get_replica_context", lambda: context)
        client = TestClient(ingress_module.app, base_url="http://127.0.0.1:8000")
        client.ingress = ingress
        return client
    return make


@pytest.fixture
def no_leaks():
    before = (COUNTS["peer_connections"], COUNTS["calls"], udp_sockets())
    yield
    assert (COUNTS["peer_connections"], COUNTS["calls"], udp_sockets()) == before


async def dial(client: TestClient, bearer: str | None = None, session: dict | None = None):
    """A caller whose offer goes through the test client; (caller, HTTP response)."""
    caller = WebRtcCaller("http://unused", session=session)
    sdp = await caller.offer()
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    files = {"sdp": (None, sdp, "application/sdp")}
    if session is not None:
        files["session"] = (None, json.dumps(session), "application/json")
    response = await asyncio.to_thread(client.post, "/v1/realtime/calls", files=files, headers=headers)
    if response.status_code == 201:
        await caller.accept(response.text, response.headers["location"].rsplit("/", 1)[-1])
    return caller, response


async def calls_closed(client: TestClient, timeout_s: float = 10.0) -> None:
    """Until the ingress has closed every call: their tasks, awaited on the server's loop (the
    test client's portal thread)."""
    async def closed() -> None:
        async with asyncio.timeout(timeout_s):
            while client.ingress._call_tasks:
                await asyncio.wait(set(client.ingress._call_tasks))
    await asyncio.to_thread(client.portal.call, closed)
    assert not client.ingress.calls, "the call was not closed"


async def ended(client: TestClient, caller: WebRtcCaller):
    await caller.close()
    await calls_closed(client)


async def test_a_call_is_answered_and_ends_with_the_caller(server, no_leaks):
    with server() as client:
        caller, response = await dial(client, session={"instructions": "Be brief."})
        assert response.status_code == 201 and response.headers["content-type"].startswith("application/sdp")
        assert response.headers["location"] == f"/v1/realtime/calls/{caller.call_id}"
        created = await caller.wait_for("session.created", 10)
        assert created["session"]["instructions"] == "Be brief."
        assert client.ingress.open_sockets == 1
        await ended(client, caller)
        assert client.ingress.open_sockets == 0


async def test_a_secret_opens_one_call_and_carries_its_session(server, clock, no_leaks, caplog):
    caplog.set_level(logging.DEBUG)
    with server(keys=[KEY]) as client:
        minted = client.post("/v1/realtime/client_secrets", headers={"Authorization": f"Bearer {KEY}"},
                             json={"expires_after": {"anchor": "created_at", "seconds": 60},
                                   "session": {"type": "realtime", "instructions": "Speak like a pirate."}})
        assert minted.status_code == 200, minted.text
        body = minted.json()
        secret = body["value"]
        assert secret.startswith("ek_") and body["expires_at"] == int(clock.now) + 60
        assert body["session"]["instructions"] == "Speak like a pirate."
        caller, response = await dial(client, bearer=secret)
        assert response.status_code == 201
        created = await caller.wait_for("session.created", 10)
        assert created["session"]["instructions"] == "Speak like a pirate."
        again, refused = await dial(client, bearer=secret)
        assert (refused.status_code, refused.json()["error"]["code"]) == (401, "client_secret_already_used")
        await again.close()
        await ended(client, caller)
    assert secret not in caplog.text and secret[3:] not in caplog.text


async def test_secrets_expire_and_unknown_ones_are_refused(server, clock, no_leaks):
    with server(keys=[KEY]) as client:
        secret = client.post("/v1/realtime/client_secrets", headers={"Authorization": f"Bearer {KEY}"},
                             json={"expires_after": {"seconds": 10}}).json()["value"]
        clock.now += 11
        for presented, code in [(secret, "client_secret_expired"), ("ek_made-up", "invalid_client_secret"),
                                (None, "invalid_api_key")]:
            caller, response = await dial(client, bearer=presented)
            assert (response.status_code, response.json()["error"]["code"]) == (401, code)
            await caller.close()
        assert client.ingress.open_sockets == 0


@pytest.mark.parametrize("body, headers, code", [
    ({}, {}, "invalid_api_key"),
    ({"expires_after": {"seconds": 5}}, {"Authorization": f"Bearer {KEY}"}, "invalid_request"),
    ({"expires_after": {"seconds": 60, "anchor": "now"}}, {"Authorization": f"Bearer {KEY}"}, "invalid_request"),
    ({"session": {"output_modalities": ["video"]}}, {"Authorization": f"Bearer {KEY}"}, None),
])
def test_bad_mint_requests(server, body, headers, code):
    with server(keys=[KEY]) as client:
        response = client.post("/v1/realtime/client_secrets", json=body, headers=headers)
        assert response.status_code in (400, 401)
        if code is not None:
            assert response.json()["error"]["code"] == code


def test_a_secret_cannot_mint_secrets(server):
    with server(keys=[KEY]) as client:
        secret = client.post("/v1/realtime/client_secrets", headers={"Authorization": f"Bearer {KEY}"},
                             json={}).json()["value"]
        response = client.post("/v1/realtime/client_secrets", headers={"Authorization": f"Bearer {secret}"}, json={})
        assert (response.status_code, response.json()["error"]["code"]) == (401, "client_secret_not_allowed")


def test_the_page_endpoint_is_off_by_default_and_same_origin_when_on(server):
    with server(keys=[KEY]) as client:
        response = client.post("/web/client_secret", headers={"Origin": "http://127.0.0.1:8000"})
        assert response.status_code == 204 and not response.content  # no secret: the page goes without
    with server(keys=[KEY], client_secrets={"web_page_endpoint": True}) as client:
        own = client.post("/web/client_secret", headers={"Origin": "http://127.0.0.1:8000"})
        assert own.status_code == 200 and own.json()["value"].startswith("ek_")
        foreign = client.post("/web/client_secret", headers={"Origin": "https://evil.example"})
        assert (foreign.status_code, foreign.json()["error"]["code"]) == (403, "origin_not_allowed")
        assert client.post("/web/client_secret").status_code == 403  # not a page


def test_a_secret_opens_one_websocket(server):
    with server(keys=[KEY]) as client:
        secret = client.post("/v1/realtime/client_secrets", headers={"Authorization": f"Bearer {KEY}"},
                             json={}).json()["value"]
        with client.websocket_connect("/v1/realtime", subprotocols=["realtime", f"openai-insecure-api-key.{secret}"]) as ws:
            assert json.loads(ws.receive_text())["type"] == "session.created"
        with pytest.raises(WebSocketDenialResponse) as refused:
            with client.websocket_connect("/v1/realtime", subprotocols=[f"openai-insecure-api-key.{secret}"]) as ws:
                ws.receive_text()
        assert refused.value.status_code == 401
        assert refused.value.json()["error"]["code"] == "client_secret_already_used"


async def test_bad_offers_leave_nothing_behind(server, no_leaks):
    with server() as client:
        for body, content_type, code in [
            ("nonsense", "application/sdp", "invalid_sdp"),
            ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 RTP/AVP 96\r\n", "application/sdp",
             "offer_without_audio"),
            ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n", "application/sdp",
             "invalid_sdp"),
            ("{}", "application/json", "invalid_request"),
        ]:
            response = await asyncio.to_thread(client.post, "/v1/realtime/calls", content=body,
                                               headers={"Content-Type": content_type})
            assert (response.status_code, response.json()["error"]["code"]) == (400, code)
        caller, response = await dial(client, session={"output_modalities": ["video"]})
        assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"
        await caller.close()
        assert client.ingress.open_sockets == 0


async def test_a_call_that_never_connects_is_closed(server, no_leaks):
    with server() as client:
        caller = WebRtcCaller("http://unused")
        sdp = await caller.offer()
        response = await asyncio.to_thread(client.post, "/v1/realtime/calls", content=sdp,
                                           headers={"Content-Type": "application/sdp"})
        assert response.status_code == 201  # answered; the caller never applies the answer
        await calls_closed(client)  # after webrtc.connect_timeout_s
        assert client.ingress.open_sockets == 0
        await caller.close()


async def test_the_sideband_sees_and_steers_the_call(server, no_leaks):
    with server() as client:
        caller, _ = await dial(client)
        await caller.wait_for("session.created", 10)

        def sideband():
            with client.websocket_connect(f"/v1/realtime?call_id={caller.call_id}") as ws:
                ws.send_text(json.dumps({"type": "session.update", "session": {"instructions": "From the side."}}))
                return json.loads(ws.receive_text())

        assert (await asyncio.to_thread(sideband))["type"] == "session.updated"
        updated = await caller.wait_for("session.updated", 10)
        assert updated["session"]["instructions"] == "From the side."
        with pytest.raises(WebSocketDenialResponse) as unknown:
            await asyncio.to_thread(lambda: client.websocket_connect("/v1/realtime?call_id=rtc_nope").__enter__())
        assert (unknown.value.status_code, unknown.value.json()["error"]["code"]) == (404, "call_not_found")
        hang = await asyncio.to_thread(client.post, f"/v1/realtime/calls/{caller.call_id}/hangup")
        assert hang.status_code == 200
        await ended(client, caller)
