"""/twilio/voice and the media-stream handshake through FastAPI's test client, without Ray:
TwiML, Twilio signatures, and refusal when API keys are set without a Twilio token."""

from __future__ import annotations

import types

import pytest
from fastapi.testclient import TestClient
from ray import serve
from starlette.websockets import WebSocketDisconnect

from quillman.config import AppConfig
from quillman.deployments import ingress as ingress_module
from quillman.telephony.signature import TwilioAccess, twilio_signature

TOKEN = "twilio-test-token"
PUBLIC = "https://calls.example.test"
FORM = {"CallSid": "CA123", "From": "+15550001111", "To": "+15550002222"}


@pytest.fixture
def client_for(monkeypatch):
    def make(token=None, keys=(), public_url=PUBLIC) -> TestClient:
        cls = ingress_module.Ingress.func_or_class.__mro__[1]
        ingress = object.__new__(cls)
        ingress.config = AppConfig.model_validate({"telephony": {"public_url": public_url}})
        ingress.api_keys = list(keys)
        ingress.twilio = TwilioAccess(token, api_keys_set=bool(keys))
        ingress.open_sockets = 0
        context = types.SimpleNamespace(servable_object=ingress, app_name="quillman")
        monkeypatch.setattr(serve, "get_replica_context", lambda: context)
        return TestClient(ingress_module.app)
    return make


def test_the_voice_webhook_answers_twiml_streaming_to_the_public_url(client_for):
    signature = twilio_signature(TOKEN, PUBLIC + "/twilio/voice", FORM)
    response = client_for(TOKEN).post("/twilio/voice", data=FORM, headers={"X-Twilio-Signature": signature})
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/xml")
    assert '<Response><Connect><Stream url="wss://calls.example.test/twilio/media-stream" /></Connect></Response>' \
        in response.text


def test_without_a_public_url_the_stream_url_comes_from_the_request(client_for):
    response = client_for(public_url=None).post("/twilio/voice", data=FORM,
                                                headers={"X-Forwarded-Proto": "https", "Host": "tunnel.test"})
    assert 'url="wss://tunnel.test/twilio/media-stream"' in response.text


@pytest.mark.parametrize("headers", [{}, {"X-Twilio-Signature": "bogus"}])
def test_an_unsigned_or_badly_signed_webhook_is_refused(client_for, headers):
    response = client_for(TOKEN).post("/twilio/voice", data=FORM, headers=headers)
    assert response.status_code == 403 and response.json()["error"]["code"] == "invalid_twilio_signature"


def test_api_keys_without_a_twilio_token_close_the_twilio_door(client_for):
    client = client_for(keys=["k"])
    response = client.post("/twilio/voice", data=FORM, headers={"Authorization": "Bearer k"})
    assert response.status_code == 403 and response.json()["error"]["code"] == "twilio_disabled"
    with pytest.raises(WebSocketDisconnect):
        with client.websocket_connect("/twilio/media-stream") as ws:
            ws.receive_text()


def test_the_media_stream_handshake_needs_a_valid_signature(client_for):
    client = client_for(TOKEN)
    with pytest.raises(WebSocketDisconnect):
        with client.websocket_connect("/twilio/media-stream", headers={"X-Twilio-Signature": "bogus"}) as ws:
            ws.receive_text()


def test_the_startup_warning_says_why_twilio_is_refused():
    warning = TwilioAccess(None, api_keys_set=True).startup_warning("TWILIO_AUTH_TOKEN")
    assert "API keys" in warning and "TWILIO_AUTH_TOKEN" in warning
