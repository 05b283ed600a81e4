"""Who may connect, and the per-session limits: refusals, rate limit, idle timeout, history.

The key and origin checks themselves are tested in test_security_checks.py; here they read a
handshake (a Starlette ``WebSocket`` built from an ASGI scope, no server), and the ingress's
refusal answers it. The limits run on a RealtimeSession with the fake models of conftest.py and
tiny limits.
"""

from __future__ import annotations

import asyncio

import pytest
from starlette.websockets import WebSocket

from quillman import errors
from quillman.config import SessionConfig
from quillman.deployments.ingress import RETRY_AFTER_S, refuse
from quillman.security import KEY_SUBPROTOCOL, check_api_key, check_origin, presented_key
from quillman.pipeline.limits import SessionLimits, TokenBucket

pytestmark = pytest.mark.usefixtures("hang_guard")


def handshake(headers: dict[str, str] | None = None, subprotocols: list[str] | None = None,
              host: str = "127.0.0.1:8000", sent: list[dict] | None = None,
              denial_extension: bool = True) -> WebSocket:
    """The websocket as the ingress sees it before ``accept``; what it sends lands in ``sent``."""
    raw = {"host": host, **(headers or {})}
    scope = {
        "type": "websocket", "path": "/v1/realtime", "query_string": b"",
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in raw.items()],
        "subprotocols": subprotocols or [],
        "extensions": {"websocket.http.response": {}} if denial_extension else {},
    }

    async def receive():  # never called: the checks read the handshake only
        raise AssertionError("receive() during the handshake checks")

    async def send(message):
        if sent is None:
            raise AssertionError("send() during the handshake checks")
        sent.append(message)

    return WebSocket(scope, receive, send)


# --- the checks on a real handshake ------------------------------------------------------------
# quillman.security's checks take a headers mapping (tests/unit/test_security_checks.py); the
# ingress hands them Starlette's Headers, which matches names case-insensitively.


def test_the_checks_read_starlettes_headers_and_subprotocols():
    socket = handshake({"Authorization": "Bearer sk-1", "Origin": "http://127.0.0.1:8000"},
                       ["realtime", KEY_SUBPROTOCOL + "sk-2"])
    assert presented_key(socket.headers, socket.scope["subprotocols"]) == "sk-1"
    assert check_api_key(socket.headers, ["sk-1"], socket.scope["subprotocols"]) is None
    assert check_origin(socket.headers, []) is None
    assert presented_key(handshake(subprotocols=[KEY_SUBPROTOCOL + "sk-2"]).headers,
                         [KEY_SUBPROTOCOL + "sk-2"]) == "sk-2"
    foreign = handshake({"Origin": "http://evil.example"})
    assert isinstance(check_origin(foreign.headers, []), errors.OriginNotAllowed)


# --- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("refusal", "status", "close_code"), [
    (errors.InvalidApiKey("invalid or missing API key"), 401, 1008),
    (errors.OriginNotAllowed("origin not allowed"), 403, 1008),
    (errors.ServerAtCapacity("server at capacity"), 503, 1013),
])
async def test_refusal_is_an_http_answer_with_a_stable_code(refusal, status, close_code):
    """Before accept, the client gets a status it can act on and a JSON error: no session."""
    import json

    sent: list[dict] = []
    await refuse(handshake(sent=sent), refusal)
    start, body = sent
    assert start["type"] == "websocket.http.response.start"
    assert start["status"] == status
    headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    assert headers["content-type"] == "application/json"
    assert ("retry-after" in headers) == (status == 503)
    assert ("www-authenticate" in headers) == (status == 401)
    if status == 503:
        assert int(headers["retry-after"]) == RETRY_AFTER_S
    error = json.loads(body["body"])["error"]
    assert error == {"type": refusal.type, "code": refusal.code, "message": refusal.message}
    assert not any(m["type"] == "websocket.accept" for m in sent)


@pytest.mark.parametrize(("refusal", "close_code"), [
    (errors.InvalidApiKey("no key"), 1008), (errors.OriginNotAllowed("no"), 1008),
    (errors.ServerAtCapacity("full"), 1013),
])
async def test_refusal_without_the_denial_extension_closes_before_accept(refusal, close_code):
    sent: list[dict] = []
    await refuse(handshake(sent=sent, denial_extension=False), refusal)
    assert sent == [{"type": "websocket.close", "code": close_code, "reason": refusal.message}]


def test_refusal_codes_are_stable():
    assert (errors.InvalidApiKey.code, errors.OriginNotAllowed.code, errors.ServerAtCapacity.code) == (
        "invalid_api_key", "origin_not_allowed", "server_at_capacity")


def test_the_default_config_listens_on_loopback_without_keys():
    """Without keys configured, only this machine can reach the server (and it says so)."""
    from pathlib import Path

    import yaml

    config = yaml.safe_load((Path(__file__).resolve().parents[2] / "serve_config.yaml").read_text())
    assert config["http_options"]["host"] == "127.0.0.1"
    server = config["applications"][0]["args"]["server"]
    assert not server.get("api_keys")
    # Each socket is one ongoing request of the Ingress: the session cap must refuse before
    # Serve's own limit would queue a connection (a queue that hangs instead of a refusal).
    ingress = next(d for d in config["applications"][0]["deployments"] if d["name"] == "Ingress")
    assert server["max_sessions_per_replica"] < ingress["max_ongoing_requests"]


# --- rate limit ----------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket():
    clock = Clock()
    bucket = TokenBucket(rate_per_s=10, burst=3, clock=clock)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]  # the burst, then empty
    clock.now += 0.05  # half a token
    assert not bucket.take()
    clock.now += 0.06  # now a whole one
    assert bucket.take()
    assert not bucket.take()
    clock.now += 3600  # refills up to the burst, never beyond
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]


def text_item(text: str) -> dict:
    return {"type": "conversation.item.create",
            "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}}


def tiny_limits(**overrides) -> SessionConfig:
    values = {"max_audio_ahead_s": 3600.0, "model_timeout_s": 10.0, "max_events_per_s": 1e9,
              "event_burst": 10**9, "idle_timeout_s": 3600.0}
    values.update(overrides)
    return SessionConfig(**values)


async def test_rate_limit_drops_events_with_an_error(make_driver, backends):
    d = await make_driver(tiny_limits(max_events_per_s=0.001, event_burst=3))
    for i in range(5):
        await d.send({**text_item(f"message {i}"), "event_id": f"ev{i}"})
    await d.settle()
    errors = d.errors()
    assert [e["code"] for e in errors] == ["rate_limit_exceeded"] * 2
    assert all(e["type"] == "invalid_request_error" for e in errors)
    # The dropped events did nothing: three items were added, not five.
    assert len([e for e in d.of_type("conversation.item.added") if e["item"]["role"] == "user"]) == 3
    assert not d.task.done()  # the session goes on


async def test_rate_limit_refills(make_driver, backends):
    config = tiny_limits(max_events_per_s=50, event_burst=2)
    d = await make_driver(config)
    now = [0.0]
    d.session.connection.limits = SessionLimits(config, clock=lambda: now[0])  # the bucket on a test clock
    for _ in range(3):
        await d.send(text_item("hi"))
    await d.settle()
    assert [e["code"] for e in d.errors()] == ["rate_limit_exceeded"]
    now[0] += 0.1  # 5 tokens' worth, capped at the burst of 2
    await d.send({"type": "response.create"})
    done = await d.wait_for("response.done")
    assert done["response"]["status"] == "completed"
    assert len(d.errors()) == 1


async def test_idle_timeout_closes_the_session(make_driver, backends):
    d = await make_driver(tiny_limits(idle_timeout_s=0.3))
    await asyncio.wait_for(d.task, 5)  # run() returns: the ingress then closes the socket
    errors = d.errors()
    assert [e["code"] for e in errors] == ["idle_timeout"]
    assert d.events[-1]["type"] == "error"  # it is the last thing the client hears


class LoopClock:
    """The running loop's clock, moved on by the test: ``asyncio.timeout`` (the idle timeout)
    reads ``loop.time()``, so its deadline passes when the test says, not after a real wait."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.offset = loop, 0.0
        real = loop.time
        loop.time = lambda: real() + self.offset  # type: ignore[method-assign]

    async def advance(self, seconds: float) -> None:
        self.offset += seconds
        await asyncio.sleep(0)  # a step: the timers now due fire


@pytest.fixture
async def loop_clock():
    loop = asyncio.get_running_loop()
    yield LoopClock(loop)
    del loop.time  # the class's clock again


async def test_activity_keeps_the_session_open(make_driver, backends, loop_clock):
    d = await make_driver(tiny_limits(idle_timeout_s=0.5))
    # An event every 0.4 s for 2.4 s: longer than the timeout in total, never idle that long.
    for i in range(6):
        await loop_clock.advance(0.4)
        d._inbox.put_nowait('{"type": "input_audio_buffer.clear"}')
        await d.wait_for("input_audio_buffer.cleared", count=i + 1)  # received: the timer starts again
    assert not d.task.done()
    assert d.errors() == []
    await loop_clock.advance(0.4)
    assert not d.task.done()  # 0.4 s idle: not yet
    await loop_clock.advance(0.2)
    await asyncio.wait_for(d.task, 5)
    assert [e["code"] for e in d.errors()] == ["idle_timeout"]


async def test_idle_timeout_cancels_running_work(make_driver, backends):
    d = await make_driver(tiny_limits(idle_timeout_s=0.3))
    backends.llm_hang_calls = {0: 1}  # the reply stalls after one token
    await d.send(text_item("hello"))
    await d.send({"type": "response.create"})
    await asyncio.wait_for(d.task, 5)
    call = backends.llm_calls[0]
    assert call.cancelled and call.finalized
    assert [e["code"] for e in d.errors()] == ["idle_timeout"]


# --- turn length ---------------------------------------------------------------------------------


async def test_uncommitted_audio_is_capped_without_vad(make_driver, backends):
    import base64

    d = await make_driver(tiny_limits(max_turn_s=2.0))
    await d.send({"type": "session.update", "session": {"audio": {"input": {"turn_detection": None}}}})
    await d.wait_for("session.updated")
    second = base64.b64encode(b"\x00\x00" * 24000).decode()
    for i in range(4):
        await d.send({"type": "input_audio_buffer.append", "event_id": f"a{i}", "audio": second})
    await d.settle()
    errors = d.errors()
    assert [e["code"] for e in errors] == ["input_audio_buffer_full"]
    assert errors[0]["event_id"] == "a3"
    # Committing empties the buffer; appending works again.
    await d.send({"type": "input_audio_buffer.commit"})
    await d.wait_for("response.done")
    await d.send({"type": "input_audio_buffer.append", "audio": second})
    await d.settle()
    assert len(d.errors()) == 1


# --- history -------------------------------------------------------------------------------------


async def test_history_is_halved_and_the_system_prompt_kept(make_driver, backends):
    d = await make_driver(tiny_limits(max_history_messages=4, instructions="SYSTEM PROMPT", few_shot=[]))
    for i in range(6):
        backends.replies[i] = f"answer {i}."
        done = await d.text_turn(f"question {i}")
        assert done["response"]["status"] == "completed"
    note = {"role": "system", "content": d.session.config.question_note}
    for i, call in enumerate(backends.llm_calls):
        messages = [m for m in call.args["messages"] if m != note]  # the new-question notes
        assert messages[0] == {"role": "system", "content": "SYSTEM PROMPT"}
        assert messages[-1] == {"role": "user", "content": f"question {i}"}
        assert len(messages) - 1 <= 4  # the system prompt is not counted
        assert all(m["role"] != "system" for m in messages[1:])
    last = [m["content"] for m in backends.llm_calls[-1].args["messages"][1:] if m != note]
    # The oldest turns went first; the newest survived.
    assert "question 0" not in last and "answer 0." not in last
    assert "question 5" in last and "answer 4." in last
    assert len(d.session.conversation.items) <= 4


# --- reply length --------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["session", "response"])
@pytest.mark.parametrize("value", [0, -1, -100])
async def test_output_tokens_below_one_are_invalid(make_driver, backends, where, value):
    """llama.cpp reads max_tokens <= 0 as 'until the context is full': never pass it on."""
    d = await make_driver(tiny_limits())
    if where == "session":
        await d.send({"type": "session.update", "event_id": "ev_t", "session": {"max_output_tokens": value}})
    else:
        await d.send(text_item("hi"))
        await d.send({"type": "response.create", "event_id": "ev_t", "response": {"max_output_tokens": value}})
    await d.settle()
    assert [(e["code"], e.get("event_id")) for e in d.errors()] == [("invalid_event", "ev_t")]
    assert "max_output_tokens" in d.errors()[0]["param"]
    assert backends.llm_calls == []


@pytest.mark.parametrize(("session_value", "response_value", "expected"), [
    (None, None, 64),  # the server's llm.max_tokens (LlmConfig default)
    ("inf", None, 64),
    (10, None, 10),  # a client may ask for less ...
    (None, 5, 5),
    (100000, None, 64),  # ... never for more
    (None, 4096, 64),
    (10, "inf", 10),
])
async def test_server_max_tokens_is_a_ceiling(make_driver, backends, session_value, response_value, expected):
    d = await make_driver(tiny_limits())
    if session_value is not None:
        await d.send({"type": "session.update", "session": {"max_output_tokens": session_value}})
        await d.wait_for("session.updated")
    response = {} if response_value is None else {"max_output_tokens": response_value}
    await d.text_turn("hello", **response)
    assert backends.llm_calls[-1].args["params"].max_tokens == expected
