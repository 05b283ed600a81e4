"""The ingress's HTTP routes through FastAPI's test client, without Ray.

Serve turns the Ingress's methods into routes of the module-level ``app`` whose ``self`` is
``serve.get_replica_context().servable_object``; here that is an Ingress built around fake
DeploymentHandles. What a real server answers is tested in tests/e2e/test_security.py.
"""

from __future__ import annotations

import asyncio
import logging
import types

import pytest
from fastapi.testclient import TestClient
from ray import serve
from starlette.testclient import WebSocketDenialResponse

from quillman.config import AppConfig
from quillman.deployments import ingress as ingress_module
from quillman.deployments.health import DeploymentState, DeploymentWatch
from quillman.metrics import SessionMetrics

pytestmark = pytest.mark.usefixtures("hang_guard")

KEY = "unit-test-key"
NAMES = ("Transcriber", "LanguageModel", "Speaker")
UNAUTHORIZED_CODE = "invalid_api_key"
RAY_TEXT = ("ray::ServeReplica:quillman:Speaker (pid=4242, ip=10.1.2.3, actor_id=deadbeef0123) "
            "Traceback (most recent call last): ActorDiedError")


class FakeResponse:
    """A DeploymentResponse: awaitable once, cancellable."""

    def __init__(self, result=None, error: BaseException | None = None, delay_s: float = 0.0):
        self.result, self.error, self.delay_s = result, error, delay_s
        self.cancelled = False

    async def _run(self):
        await asyncio.sleep(self.delay_s)  # the replica's time to answer (3600: never)
        if self.error is not None:
            raise self.error
        return self.result

    def __await__(self):
        return self._run().__await__()

    def cancel(self):
        self.cancelled = True


class FakeHandle:
    def __init__(self, name: str, warmup=None, voices=None):
        self.name = name
        self.calls: list[str] = []
        self.responses: list[FakeResponse] = []
        self._warmup = warmup or (lambda: FakeResponse({"load_s": 1.0, "warm_ms": 2.0, "model": name}))
        self._voices = voices or (lambda: FakeResponse(["joe"]))
        self.warmup = types.SimpleNamespace(remote=self._call("warmup", self._warmup))
        self.voices = types.SimpleNamespace(remote=self._call("voices", self._voices))
        self.ping = types.SimpleNamespace(remote=self._call("ping", lambda: FakeResponse("ok")))

    def _call(self, method, make):
        def remote(*args):
            self.calls.append(method)
            response = make()
            self.responses.append(response)
            return response
        return remote


def make_ingress(keys=(), handles=None, states=None):
    cls = ingress_module.Ingress.func_or_class.__mro__[1]  # the class as written, under Serve's wrapper
    assert cls.__name__ == "Ingress"
    ingress = object.__new__(cls)
    ingress.config = AppConfig()
    ingress.api_keys = list(keys)
    ingress.handles = handles or {name: FakeHandle(name) for name in NAMES}
    ingress._voices = None
    ingress.sessions = {}
    ingress.calls = {}  # WebRTC calls (tests/unit/deployments/test_ingress_webrtc.py)
    ingress.metrics = SessionMetrics()
    ingress.deployment_watch = DeploymentWatch(lambda: dict(states or {}), max_age_s=0.0)
    return ingress


@pytest.fixture
def serve_as(monkeypatch):
    """``serve_as(ingress)``: a test client whose requests reach ``ingress``."""
    def client_for(ingress) -> TestClient:
        context = types.SimpleNamespace(servable_object=ingress, app_name="quillman")
        monkeypatch.setattr(serve, "get_replica_context", lambda: context)
        return TestClient(ingress_module.app)
    return client_for


def assert_unauthorized(response):
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    error = response.json()["error"]
    assert error["code"] == UNAUTHORIZED_CODE and error["type"] == "invalid_request_error"
    assert "Authorization: Bearer <key>" in error["message"]
    assert KEY not in response.text


PROTECTED = ["/prewarm", "/docs", "/redoc", "/openapi.json"]
OPEN = ["/healthz", "/voices", "/", "/app.js"]


# --- what needs a key ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", PROTECTED)
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}],
                         ids=["none", "wrong", "no-scheme"])
def test_with_keys_prewarm_and_the_api_docs_need_one(serve_as, path, headers):
    ingress = make_ingress(keys=[KEY])
    assert_unauthorized(serve_as(ingress).get(path, headers=headers))
    assert all(handle.calls == [] for handle in ingress.handles.values())  # no model was asked


@pytest.mark.parametrize("path", PROTECTED)
def test_with_keys_a_valid_bearer_key_opens_them(serve_as, path):
    response = serve_as(make_ingress(keys=["other", KEY])).get(path, headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 200, response.text


def test_the_key_subprotocol_header_is_not_a_key_for_http(serve_as):
    client = serve_as(make_ingress(keys=[KEY]))
    assert_unauthorized(client.get("/prewarm", headers={"Sec-WebSocket-Protocol": f"openai-insecure-api-key.{KEY}"}))


@pytest.mark.parametrize("path", OPEN)
def test_with_keys_health_voices_and_the_web_client_stay_open(serve_as, path):
    response = serve_as(make_ingress(keys=[KEY])).get(path)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("path", PROTECTED + OPEN)
def test_without_keys_everything_is_open(serve_as, path):
    response = serve_as(make_ingress()).get(path)
    assert response.status_code == 200, response.text


def test_the_docs_are_the_same_as_fastapis(serve_as):
    client = serve_as(make_ingress())
    schema = client.get("/openapi.json").json()
    assert schema["info"]["title"] == "QuiLLMan"
    assert {"/prewarm", "/healthz", "/voices"} <= set(schema["paths"])
    assert not {"/docs", "/redoc", "/openapi.json"} & set(schema["paths"])
    docs = client.get("/docs")
    assert docs.headers["content-type"].startswith("text/html")
    assert "SwaggerUIBundle" in docs.text and "'/openapi.json'" in docs.text
    assert "/openapi.json" in client.get("/redoc").text


# Every route that needs a key, HTTP and websocket: one check refuses them all the same way.
KEYED_HTTP = [("GET", path) for path in ["/prewarm", "/stats", *PROTECTED[1:]]] + [
    ("POST", "/v1/realtime/client_secrets"), ("POST", "/v1/realtime/calls/rtc_unknown/hangup")]
KEYED_SOCKETS = ["/v1/realtime", "/pipeline", "/v1/realtime?call_id=rtc_unknown"]
NO_OR_WRONG_KEY = pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}], ids=["none", "wrong"])


@NO_OR_WRONG_KEY
@pytest.mark.parametrize("method, path", KEYED_HTTP, ids=[path for _, path in KEYED_HTTP])
def test_every_keyed_http_route_refuses_a_missing_or_wrong_key_alike(serve_as, method, path, headers):
    ingress = make_ingress(keys=[KEY])
    assert_unauthorized(serve_as(ingress).request(method, path, headers=headers))
    assert all(handle.calls == [] for handle in ingress.handles.values())


@NO_OR_WRONG_KEY
@pytest.mark.parametrize("path", KEYED_SOCKETS)
def test_every_keyed_websocket_refuses_a_missing_or_wrong_key_alike(serve_as, path, headers):
    with pytest.raises(WebSocketDenialResponse) as refused:
        with serve_as(make_ingress(keys=[KEY])).websocket_connect(path, headers=headers):
            pass
    assert_unauthorized(refused.value)
    assert "websocket subprotocol" in refused.value.json()["error"]["message"]  # it can send one


# --- /prewarm ------------------------------------------------------------------------------------


def test_prewarm_reports_each_deployment(serve_as):
    body = serve_as(make_ingress()).get("/prewarm").json()
    assert body["status"] == "ready"
    assert body["deployments"]["Speaker"] == {"status": "ready", "load_s": 1.0, "warm_ms": 2.0, "model": "Speaker"}


def test_prewarm_answers_503_at_once_for_a_deployment_serve_marked_failed(serve_as):
    handles = {name: FakeHandle(name) for name in NAMES}
    handles["LanguageModel"] = FakeHandle("LanguageModel", warmup=lambda: FakeResponse(delay_s=3600))
    states = {"LanguageModel": DeploymentState("DEPLOY_FAILED", f"The deployment failed to start. {RAY_TEXT}")}
    response = serve_as(make_ingress(handles=handles, states=states)).get("/prewarm")
    assert response.status_code == 503
    entry = response.json()["deployments"]["LanguageModel"]
    assert entry["status"] == "failed" and entry["serve_status"] == "DEPLOY_FAILED"
    for internal in ("pid=", "10.1.2.3", "deadbeef"):
        assert internal not in response.text


@pytest.mark.parametrize("where", ["remote", "voices"])
def test_an_exception_in_prewarm_is_a_503_without_ray_internals(serve_as, caplog, where):
    """Never a 500 with Ray's text: a plain message to the client, the details to the log."""
    def boom(*args):
        raise RuntimeError(RAY_TEXT)

    handles = {name: FakeHandle(name) for name in NAMES}
    if where == "remote":
        handles["Speaker"].warmup.remote = boom
    else:
        handles["Speaker"].voices.remote = boom
    ingress = make_ingress(handles=handles)
    with caplog.at_level(logging.ERROR, logger="quillman.deployments.ingress"):
        response = serve_as(ingress).get("/prewarm")
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["status"] == "error"
    assert body["error"] == "the warm-up could not run; the server log has the details"
    for internal in ("pid", "4242", "10.1.2.3", "actor_id", "deadbeef", "Traceback", "ray::"):
        assert internal not in response.text
    assert any("/prewarm failed" in r.getMessage() and r.exc_info for r in caplog.records)
    if where == "remote":  # the warm-ups already asked for are given up on
        assert [r.cancelled for name in ("Transcriber", "LanguageModel") for r in handles[name].responses] == [True, True]


def test_a_failed_warm_up_is_reported_plainly(serve_as):
    handles = {name: FakeHandle(name) for name in NAMES}
    handles["Transcriber"] = FakeHandle("Transcriber", warmup=lambda: FakeResponse(error=RuntimeError(RAY_TEXT)))
    response = serve_as(make_ingress(handles=handles)).get("/prewarm")
    assert response.status_code == 503
    assert response.json()["deployments"]["Transcriber"]["status"] == "error"
    assert "10.1.2.3" not in response.text and "pid" not in response.text
