"""quillman.security: API keys and origins as plain functions of a headers mapping.

Headers are plain dicts with lowercase names (what Starlette's ``Headers`` looks like to the
checks); no FastAPI, no websocket, no server.
"""

from __future__ import annotations

import hmac

import pytest

from quillman import errors, protocol, security
from quillman.config import ServerConfig
from quillman.security import (
    KEY_SUBPROTOCOL,
    check_api_key,
    check_origin,
    configured_keys,
    key_is_valid,
    origin_is_allowed,
    presented_key,
)

HOST = {"host": "127.0.0.1:8000"}


# --- the presented key ---------------------------------------------------------------------------


@pytest.mark.parametrize(("headers", "subprotocols", "expected"), [
    ({}, [], None),
    ({"authorization": "Bearer sk-123"}, [], "sk-123"),
    ({"authorization": "bearer  sk-123 "}, [], "sk-123"),  # scheme is case-insensitive, spaces trimmed
    ({"authorization": "Basic dXNlcjpwdw=="}, [], None),  # not a bearer token
    ({"authorization": "Bearer"}, [], None),
    ({}, ["realtime", KEY_SUBPROTOCOL + "sk-456"], "sk-456"),  # what browsers and OpenAI's JS SDK send
    ({}, ["realtime"], None),
    ({}, ["openai-insecure-api-key"], None),  # the prefix without the dot
    # Both present: the header wins.
    ({"authorization": "Bearer from-header"}, [KEY_SUBPROTOCOL + "from-protocol"], "from-header"),
])
def test_presented_key_comes_from_the_bearer_header_or_the_key_subprotocol(headers, subprotocols, expected):
    assert presented_key(headers, subprotocols) == expected


def test_presented_key_without_subprotocols_reads_only_the_header():
    assert presented_key({"authorization": "Bearer k"}) == "k"
    assert presented_key({"x-api-key": "k"}) is None


# --- comparing keys ------------------------------------------------------------------------------


def test_key_is_valid_only_for_an_exact_match_of_a_configured_key():
    keys = ["alpha-key", "beta-key"]
    assert key_is_valid("alpha-key", keys)
    assert key_is_valid("beta-key", keys)
    for wrong in [None, "", "alpha", "alpha-key ", "ALPHA-KEY", "beta-keyX", "alpha-key\x00"]:
        assert not key_is_valid(wrong, keys), wrong
    assert not key_is_valid("anything", [])
    # Non-ASCII keys compare as bytes (hmac.compare_digest refuses non-ASCII str).
    assert key_is_valid("clé-ü", ["clé-ü"])
    assert not key_is_valid("clé-u", ["clé-ü"])


def test_key_comparison_is_constant_time_over_every_key(monkeypatch):
    """No early exit: the time taken does not tell which key (or how much of one) matched."""
    calls = []
    real = hmac.compare_digest

    def counting(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(security.hmac, "compare_digest", counting)
    assert key_is_valid("k1", ["k1", "k2", "k3"])
    assert len(calls) == 3
    calls.clear()
    assert not key_is_valid("nope", ["k1", "k2", "k3"])
    assert len(calls) == 3


# --- configured keys -----------------------------------------------------------------------------


def test_configured_keys_come_from_config_and_the_env_var_skipping_blank_entries():
    assert configured_keys(ServerConfig(), environ={}) == []
    assert configured_keys(ServerConfig(api_keys=["a"]), environ={}) == ["a"]
    environ = {"QUILLMAN_API_KEYS": " b , c,,"}
    assert configured_keys(ServerConfig(api_keys=["a"]), environ) == ["a", "b", "c"]
    assert configured_keys(ServerConfig(), environ) == ["b", "c"]
    assert configured_keys(ServerConfig(), {"QUILLMAN_API_KEYS": " , "}) == []  # blanks: auth stays off
    assert configured_keys(ServerConfig(api_keys_env="OTHER_KEYS"), {"OTHER_KEYS": "d"}) == ["d"]


def test_configured_keys_read_the_process_environment_by_default(monkeypatch):
    monkeypatch.setenv("QUILLMAN_API_KEYS", "from-env")
    assert configured_keys(ServerConfig()) == ["from-env"]
    monkeypatch.delenv("QUILLMAN_API_KEYS")
    assert configured_keys(ServerConfig()) == []


# --- the key check -------------------------------------------------------------------------------


def test_check_api_key_passes_everything_when_no_keys_are_configured():
    assert check_api_key({}, []) is None
    assert check_api_key({"authorization": "Bearer whatever"}, [], ["realtime"]) is None


@pytest.mark.parametrize(("headers", "subprotocols"), [
    ({"authorization": "Bearer k2"}, None),  # an HTTP route
    ({"authorization": "Bearer k2"}, []),  # a websocket with the header
    ({}, ["realtime", KEY_SUBPROTOCOL + "k1"]),  # a browser websocket
])
def test_check_api_key_accepts_a_valid_key(headers, subprotocols):
    assert check_api_key(headers, ["k1", "k2"], subprotocols) is None


def test_check_api_key_refuses_a_missing_or_wrong_key_with_invalid_api_key():
    for headers in [{}, {"authorization": "Bearer wrong"}, {"authorization": "Basic k1"}, {"x-api-key": "k1"}]:
        refusal = check_api_key(headers, ["k1"], [])
        assert isinstance(refusal, errors.InvalidApiKey), headers
        assert (refusal.code, refusal.http_status) == ("invalid_api_key", 401)


def test_the_key_subprotocol_counts_only_on_websockets():
    """An HTTP route passes no subprotocols: a key offered that way is not looked at."""
    offered = [KEY_SUBPROTOCOL + "k1"]
    assert check_api_key({}, ["k1"], offered) is None
    assert check_api_key({}, ["k1"], None) is not None


def test_the_refusal_says_how_to_send_a_key_for_http_and_for_websockets():
    http = check_api_key({}, ["k1"])
    socket = check_api_key({}, ["k1"], [])
    assert "Authorization: Bearer <key>" in http.message and KEY_SUBPROTOCOL not in http.message
    assert "Authorization: Bearer <key>" in socket.message and f"{KEY_SUBPROTOCOL}<key>" in socket.message
    assert "k1" not in http.message + socket.message  # never the configured key


def test_a_bare_key_subprotocol_is_refused():
    """``openai-insecure-api-key.`` presents an empty key; config validation keeps empty keys out."""
    assert presented_key({}, [KEY_SUBPROTOCOL]) == ""
    assert check_api_key({}, ["k1"], [KEY_SUBPROTOCOL]) is not None


# --- origins -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("origin", "allowed", "expected"), [
    (None, [], True),  # not a browser: the API key is the control
    ("http://127.0.0.1:8000", [], True),  # the server's own web client
    ("http://evil.example", [], False),
    ("http://127.0.0.1:8001", [], False),  # another port is another origin
    ("http://127.0.0.1:8000.evil.example", [], False),
    ("null", [], False),  # sandboxed iframes, file:// pages
    ("https://app.example.com", ["https://app.example.com"], True),
    ("https://app.example.com.evil.example", ["https://app.example.com"], False),
    ("http://app.example.com", ["https://app.example.com"], False),  # scheme matters
    ("https://anything.example", ["*"], True),
])
def test_origin_is_allowed_for_the_servers_own_pages_and_the_allow_list(origin, allowed, expected):
    headers = dict(HOST) if origin is None else {**HOST, "origin": origin}
    assert origin_is_allowed(headers, allowed) is expected
    refusal = check_origin(headers, allowed)
    assert (refusal is None) is expected
    if refusal is not None:
        assert (refusal.code, refusal.http_status) == ("origin_not_allowed", 403)


def test_an_origin_without_a_host_header_is_foreign():
    assert not origin_is_allowed({"origin": "http://127.0.0.1:8000"}, [])


# --- the error body ------------------------------------------------------------------------------


@pytest.mark.parametrize("refusal", [
    errors.InvalidApiKey("no key"), errors.OriginNotAllowed("no"), errors.ServerAtCapacity("full"),
])
def test_error_body_is_the_realtime_error_shape(refusal):
    assert protocol.http_error_body(refusal) == {"error": {"type": refusal.type, "code": refusal.code,
                                                           "message": refusal.message}}
