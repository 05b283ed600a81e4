"""Fuzzing the protocol and the session with Hypothesis: bad input never crashes anything.

- ``parse_client_event`` on random text, bytes, JSON and mangled events returns an event or
  raises a :class:`~quillman.errors.QuillmanError` with a known code, nothing else.
- A RealtimeSession (fake models, real Silero VAD) fed random sequences of frames: good ones,
  random JSON, wrong types, huge strings, invalid base64, NaN-like and extreme pcm, zero- and
  odd-length audio, events out of order. ``handle_frame`` never raises; every frame the parser
  refuses gets exactly one ``error`` event with that code (the right ``event_id`` echoed),
  every other frame at most one, with a known code; afterwards the same session still answers
  a normal text turn.

Run with ``-s`` to see how many inputs of each kind were tried; ``QUILLMAN_FUZZ_SCALE=20`` for a
deeper run than CI's.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import json
import math
import os
import struct
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quillman import errors, protocol

# CI-sized by default (the file runs in ~15 s); QUILLMAN_FUZZ_SCALE=20 runs 20 times as many examples.
SCALE = float(os.environ.get("QUILLMAN_FUZZ_SCALE", "1"))
# No example database (a failure prints its reproduce blob). Hypothesis still caches constants in
# .hypothesis/, which .gitignore should list.
SETTINGS = settings(max_examples=int(200 * SCALE), deadline=None, database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# A fresh session per example costs tens of ms: fewer examples where each runs one.
SETTINGS_SESSION = settings(SETTINGS, max_examples=int(150 * SCALE))
SETTINGS_TARGETED = settings(SETTINGS, max_examples=int(120 * SCALE))
MAX_FRAME_BYTES = 64 * 1024  # small, so huge frames hit the limit without costing much


def _load_unit_fakes():
    """tests/unit/conftest.py as a plain module: its FakeBackends and SessionDriver, reused.

    (Hypothesis runs many examples per test, each with a fresh session and fresh fakes, so the
    function-scoped fixtures don't fit; the classes are the same ones the fixtures build.)
    """
    spec = importlib.util.spec_from_file_location("_quillman_unit_fakes", Path(__file__).parents[1] / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


fakes = _load_unit_fakes()


def _all_codes(cls: type[errors.QuillmanError]) -> set[str]:
    codes = {cls.code}
    for sub in cls.__subclasses__():
        codes |= _all_codes(sub)
    return codes


KNOWN_CODES = _all_codes(errors.QuillmanError)
# Codes a client event can cause (model failures are the response's business, not the frame's).
REQUEST_CODES = _all_codes(errors.InvalidRequest)

TRIED: Counter[str] = Counter()  # kind of input -> how many were tried, over the whole module


@pytest.fixture(scope="module", autouse=True)
def _report_tried():
    yield
    total = sum(TRIED.values())
    kinds = ", ".join(f"{kind} {n}" for kind, n in TRIED.most_common())
    print(f"\nfuzz: {total} inputs tried ({len(TRIED)} kinds): {kinds}")


# --- strategies ----------------------------------------------------------------------------------

CLIENT_TYPES = sorted({"session.update", "input_audio_buffer.append", "input_audio_buffer.commit",
                       "input_audio_buffer.clear", "conversation.item.create", "response.create",
                       "response.cancel", "conversation.item.truncate", "conversation.item.delete",
                       "conversation.item.retrieve", "output_audio_buffer.clear",
                       "transcription_session.update", "response.audio.delta", "session.created"})

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.text(max_size=12), children, max_size=4)),
    max_leaves=12,
)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def pcm_bytes(samples: np.ndarray) -> bytes:
    return np.asarray(samples, dtype="<i2").tobytes()


NAN_LIKE = [
    struct.pack("<f", math.nan) * 240,  # float32 NaN bit patterns read as pcm16
    struct.pack("<f", math.inf) * 240 + struct.pack("<f", -math.inf) * 240,
    struct.pack("<d", math.nan) * 120,
    pcm_bytes(np.full(4800, 32767)),  # full scale
    pcm_bytes(np.full(4800, -32768)),
    pcm_bytes(np.tile([32767, -32768], 2400)),  # full-scale square wave at Nyquist
    b"\xff\xff" * 480,
]

# (kind, base64 text) of audio payloads; the kind names what is being tried.
audio_payloads = st.one_of(
    st.just(("zero-length audio", "")),
    st.binary(min_size=1, max_size=401).filter(lambda b: len(b) % 2 == 1).map(
        lambda b: ("odd-length audio", b64(b))),
    st.binary(min_size=2, max_size=4800).filter(lambda b: len(b) % 2 == 0).map(
        lambda b: ("random pcm", b64(b))),
    st.sampled_from(NAN_LIKE).map(lambda b: ("NaN-like/extreme pcm", b64(b))),
    st.text(min_size=1, max_size=60).filter(lambda s: not _is_base64(s)).map(
        lambda s: ("invalid base64", s)),
    st.sampled_from(["====", "A", "AB=", "AAA", "@@@@", "QQ==QQ==", "AAAA\n", " AAAA", "AA AA",
                     "data:audio/pcm;base64,AAAA", "AAAA" * 3 + "="]).map(lambda s: ("invalid base64", s)),
)


def _is_base64(text: str) -> bool:
    try:
        base64.b64decode(text, validate=True)
        return True
    except ValueError:
        return False


def event_id() -> st.SearchStrategy:
    return st.one_of(st.none(), st.text(max_size=20).map(lambda s: "ev_" + s), json_values)


def _with_id(event: dict, eid: Any) -> dict:
    if eid is not None:
        event["event_id"] = eid
    return event


valid_sessions = st.fixed_dictionaries({}, optional={
    "type": st.just("realtime"),
    "instructions": st.text(max_size=50),
    "output_modalities": st.sampled_from([["audio"], ["text"]]),
    "max_output_tokens": st.one_of(st.integers(1, 200), st.just("inf")),
    "audio": st.fixed_dictionaries({}, optional={
        "input": st.fixed_dictionaries({}, optional={
            "format": st.fixed_dictionaries({"type": st.sampled_from(["audio/pcm", "audio/pcmu"]),
                                             "rate": st.sampled_from([8000, 16000, 24000, 44100, 12345, 0, -1])}),
            "turn_detection": st.one_of(st.none(), st.fixed_dictionaries(
                {"type": st.just("server_vad")},
                optional={"silence_duration_ms": st.integers(100, 1000),
                          "create_response": st.booleans(), "interrupt_response": st.booleans()})),
        }),
        "output": st.fixed_dictionaries({}, optional={
            "voice": st.sampled_from(["joe", "alloy", "nope"]),
            "format": st.fixed_dictionaries({"type": st.just("audio/pcm"),
                                             "rate": st.sampled_from([16000, 24000, 48000])}),
        }),
    }),
})

text_items = st.fixed_dictionaries({
    "type": st.just("message"),
    "role": st.sampled_from(["user", "user", "assistant", "system"]),
    "content": st.lists(st.fixed_dictionaries({"type": st.just("input_text"), "text": st.text(max_size=30)}),
                        min_size=1, max_size=2),
})


@st.composite
def valid_events(draw) -> tuple[str, dict]:
    """Well-formed client events (which may still be refused in context: commit with nothing)."""
    kind = draw(st.sampled_from(["append", "append", "update", "commit", "clear", "item", "create",
                                 "cancel"]))
    eid = draw(st.one_of(st.none(), st.text(max_size=10).map(lambda s: "ev_" + s)))
    if kind == "append":
        samples = draw(st.integers(0, 4800))
        pcm = draw(st.sampled_from(["silence", "noise", "tone"]))
        rng = np.random.default_rng(samples)
        data = {"silence": np.zeros(samples), "noise": rng.integers(-20000, 20000, samples),
                "tone": 12000 * np.sin(np.arange(samples) * 0.07)}[pcm]
        return "valid append", _with_id({"type": "input_audio_buffer.append", "audio": b64(pcm_bytes(data))}, eid)
    if kind == "update":
        return "session.update", _with_id({"type": "session.update", "session": draw(valid_sessions)}, eid)
    if kind == "commit":
        return "out-of-order commit", _with_id({"type": "input_audio_buffer.commit"}, eid)
    if kind == "clear":
        return "clear", _with_id({"type": "input_audio_buffer.clear"}, eid)
    if kind == "item":
        return "item.create", _with_id({"type": "conversation.item.create", "item": draw(text_items)}, eid)
    if kind == "create":
        response = draw(st.one_of(st.none(), st.fixed_dictionaries({}, optional={
            "output_modalities": st.sampled_from([["audio"], ["text"]]),
            "instructions": st.text(max_size=20), "max_output_tokens": st.integers(1, 50),
            "metadata": st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2)})))
        return "response.create", _with_id({"type": "response.create", **({"response": response} if response else {})}, eid)
    response_id = draw(st.one_of(st.none(), st.just("resp_nope")))
    return "out-of-order cancel", _with_id(
        {"type": "response.cancel", **({"response_id": response_id} if response_id else {})}, eid)


def _set_path(event: dict, path: list[str], value: Any) -> dict:
    node = event
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    node[path[-1]] = value
    return event


FIELD_PATHS = [["type"], ["event_id"], ["audio"], ["session"], ["session", "audio"],
               ["session", "audio", "input", "format", "rate"], ["session", "audio", "input", "turn_detection"],
               ["session", "max_output_tokens"], ["session", "output_modalities"], ["session", "instructions"],
               ["session", "audio", "output", "speed"], ["item"], ["item", "content"], ["item", "role"],
               ["response"], ["response", "metadata"], ["response", "max_output_tokens"], ["response_id"]]


@st.composite
def wrong_types(draw) -> tuple[str, dict]:
    """A valid event with one field (maybe nested, maybe missing before) set to any JSON value."""
    _, event = draw(valid_events())
    path = draw(st.sampled_from(FIELD_PATHS))
    return "wrong type/value", _set_path(json.loads(json.dumps(event)), path, draw(json_values))


@st.composite
def bad_audio(draw) -> tuple[str, dict]:
    kind, payload = draw(audio_payloads)
    return kind, _with_id({"type": "input_audio_buffer.append", "audio": payload}, draw(event_id()))


@st.composite
def huge(draw) -> tuple[str, str]:
    size = draw(st.sampled_from([MAX_FRAME_BYTES - 200, MAX_FRAME_BYTES + 1, 200_000, 2_000_000]))
    where = draw(st.sampled_from(["audio", "instructions", "event_id", "type", "text", "junk"]))
    blob = "A" * size
    event = {
        "audio": {"type": "input_audio_buffer.append", "audio": blob},
        "instructions": {"type": "session.update", "session": {"instructions": blob}},
        "event_id": {"type": "response.cancel", "event_id": blob},
        "type": {"type": blob},
        "text": {"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": blob}]}},
    }.get(where)
    return "huge string", blob if event is None else json.dumps(event)


@st.composite
def random_events(draw) -> tuple[str, dict]:
    """Event-shaped garbage: a (maybe real) type with random fields."""
    event = draw(st.dictionaries(st.sampled_from(["audio", "session", "item", "response", "response_id",
                                                  "previous_item_id", "extra"]), json_values, max_size=3))
    event["type"] = draw(st.one_of(st.sampled_from(CLIENT_TYPES), json_values))
    eid = draw(event_id())
    return "random event", _with_id(event, eid)


raw_frames = st.one_of(
    st.text(max_size=80).map(lambda s: ("random text", s)),
    st.binary(max_size=80).map(lambda b: ("random bytes", b)),
    json_values.map(lambda v: ("random JSON", json.dumps(v))),
    st.sampled_from(["", " ", "null", "[]", "{}", "{", '{"type": null}', '{"type": ""}', '"type"',
                     "NaN", "1e999", '{"type": "session.update", "session": NaN}', "\x00",
                     '{"type": "input_audio_buffer.append", "audio": "AAAA", "type": "x"}']).map(
        lambda s: ("edge-case JSON", s)),
)


def as_frame(item: tuple[str, Any]) -> tuple[str, str | bytes]:
    kind, value = item
    return kind, value if isinstance(value, (str, bytes)) else json.dumps(value)


frames = st.one_of(
    valid_events().map(as_frame), valid_events().map(as_frame),
    wrong_types().map(as_frame), bad_audio().map(as_frame), random_events().map(as_frame),
    raw_frames, huge(),
)


# --- the parser ----------------------------------------------------------------------------------


def expected_parse_code(frame: str | bytes) -> str | None:
    try:
        protocol.parse_client_event(frame)
    except errors.QuillmanError as exc:
        return exc.code
    return None


@SETTINGS
@given(frames)
def test_parser_returns_an_event_or_a_known_error(item):
    kind, frame = item
    TRIED[f"parser: {kind}"] += 1
    try:
        event = protocol.parse_client_event(frame)
    except errors.QuillmanError as exc:
        assert exc.code in KNOWN_CODES
        assert exc.message and len(exc.message) < 2000  # bounded, even for huge input
        assert exc.event_id is None or isinstance(exc.event_id, str)
        json.loads(protocol.serialize(protocol.error_event(exc)))
        return
    assert event.type in {"session.update", "input_audio_buffer.append", "input_audio_buffer.commit",
                          "input_audio_buffer.clear", "conversation.item.create", "response.create",
                          "response.cancel", "output_audio_buffer.clear"}  # (WebRTC only: the session says)


# --- the session ---------------------------------------------------------------------------------


def fuzz_config() -> Any:
    return fakes.fast_session_config(max_frame_bytes=MAX_FRAME_BYTES, model_timeout_s=5.0)


async def run_frames(items: list[tuple[str, str | bytes]]) -> None:
    backends = fakes.FakeBackends()
    driver = fakes.SessionDriver(backends, fuzz_config())
    session = driver.session
    put_log: list[dict[str, Any]] = []
    original_emit = session.connection.emit  # every event, errors included, goes out through it

    def emit(event: protocol.ServerEvent) -> None:
        put_log.append(json.loads(protocol.serialize(event)))
        original_emit(event)

    session.connection.emit = emit
    await driver.start()
    try:
        for kind, frame in items:
            TRIED[kind] += 1
            too_large = len(frame) > MAX_FRAME_BYTES
            parse_code = "frame_too_large" if too_large else expected_parse_code(frame)
            before = len(put_log)
            await session.handle_frame(frame)  # must not raise, whatever the frame
            replies = [e["error"] for e in put_log[before:]
                       if e["type"] == "error" and e["error"]["code"] != errors.ModelError.code]
            if parse_code is not None:
                assert [r["code"] for r in replies] == [parse_code], (kind, frame[:200], replies)
            else:
                assert len(replies) <= 1, (kind, frame[:200], replies)
                assert all(r["code"] in REQUEST_CODES for r in replies), replies
            for reply in replies:
                assert reply["type"] == "invalid_request_error" and reply["message"]
                sent_id = _event_id_of(frame)
                if sent_id is not None and not too_large:
                    assert reply.get("event_id") == sent_id, (reply, sent_id)
            assert not driver.task.done(), "the session ended"
            await asyncio.sleep(0)
        # Whatever happened, the same session still holds a normal conversation.
        await settle_idle(driver)
        assert not driver.task.done()
        done = await driver.text_turn("are you still there?")
        assert done["response"]["status"] == "completed", done["response"]
        # Every event that reached the client survived JSON (the driver round-trips each).
        assert driver.events and driver.events[0]["type"] == "session.created"
        assert all(e["error"]["code"] in KNOWN_CODES for e in driver.of_type("error"))
    finally:
        await driver.stop()


def _event_id_of(frame: str | bytes) -> str | None:
    try:
        data = json.loads(frame)
    except (ValueError, UnicodeDecodeError):
        return None
    value = data.get("event_id") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


async def settle_idle(driver, timeout_s: float = 5.0) -> None:
    """Abandon any half-spoken turn and let running responses end (the fakes are quick)."""
    session = driver.session
    await driver.send({"type": "input_audio_buffer.clear"})
    await driver.send({"type": "session.update", "session": {"output_modalities": ["audio"]}})
    await fakes.until(lambda: session.response is None and session.turns.turn is None, timeout_s,
                f"an idle session (last events {driver.types()[-10:]})")


@SETTINGS_SESSION
@given(st.lists(frames, min_size=1, max_size=12))
def test_session_survives_any_sequence_of_frames(items):
    asyncio.run(asyncio.wait_for(run_frames(items), 20))


# --- targeted: each bad input in a fresh session gets exactly its code ------------------------------


@st.composite
def targeted(draw) -> tuple[str, str, str]:
    """(kind, frame, expected code) for inputs whose error is known without context."""
    choice = draw(st.sampled_from(["base64", "odd", "commit", "cancel", "cancel-id", "too-large",
                                   "unsupported", "unknown", "format"]))
    eid = "ev_" + draw(st.text(alphabet="abcdef0123456789", min_size=1, max_size=8))
    if choice == "base64":
        _, payload = draw(audio_payloads.filter(lambda p: p[0] == "invalid base64"))
        return "invalid base64", json.dumps({"type": "input_audio_buffer.append", "audio": payload,
                                             "event_id": eid}), "invalid_base64"
    if choice == "odd":
        raw = draw(st.binary(min_size=1, max_size=999).filter(lambda b: len(b) % 2 == 1))
        return "odd-length audio", json.dumps({"type": "input_audio_buffer.append", "audio": b64(raw),
                                               "event_id": eid}), "invalid_audio_length"
    if choice == "commit":
        return "commit with empty buffer", json.dumps({"type": "input_audio_buffer.commit", "event_id": eid}), \
            "input_audio_buffer_commit_empty"
    if choice in ("cancel", "cancel-id"):
        event = {"type": "response.cancel", "event_id": eid}
        if choice == "cancel-id":
            event["response_id"] = draw(st.text(max_size=20))
        return "cancel with no response", json.dumps(event), "response_cancel_not_active"
    if choice == "too-large":
        size = draw(st.integers(MAX_FRAME_BYTES + 1, 4 * MAX_FRAME_BYTES))
        return "huge string", json.dumps({"type": "input_audio_buffer.append", "audio": "A" * size}), \
            "frame_too_large"
    if choice == "unsupported":
        return "unsupported event", json.dumps({"type": draw(st.sampled_from(
            ["output_audio_buffer.clear", "transcription_session.update"])),
            "event_id": eid}), "unsupported_event"
    if choice == "unknown":
        name = draw(st.text(max_size=30).filter(lambda s: s not in CLIENT_TYPES))
        return "unknown event type", json.dumps({"type": name, "event_id": eid}), "unknown_event_type"
    rate = draw(st.integers(-10**6, 10**6).filter(lambda r: r not in protocol.SUPPORTED_RATES_HZ))
    return "unsupported audio format", json.dumps({"type": "session.update", "event_id": eid, "session": {
        "audio": {"input": {"format": {"type": "audio/pcm", "rate": rate}}}}}), "unsupported_audio_format"


async def one_bad_frame(kind: str, frame: str, code: str) -> None:
    backends = fakes.FakeBackends()
    driver = fakes.SessionDriver(backends, fuzz_config())
    await driver.start()
    try:
        TRIED[kind] += 1
        await driver.send(frame)
        await driver.settle()
        errs = driver.errors()
        assert [e["code"] for e in errs] == [code], (frame[:200], errs)
        if code != "frame_too_large":
            assert errs[0].get("event_id") == json.loads(frame).get("event_id")
        assert backends.asr_calls == [] and backends.llm_calls == []  # nothing started
        done = await driver.text_turn("hello")
        assert done["response"]["status"] == "completed"
        assert len(driver.errors()) == 1
    finally:
        await driver.stop()


@SETTINGS_TARGETED
@given(targeted())
def test_each_bad_input_gets_its_code_and_the_session_goes_on(case):
    asyncio.run(asyncio.wait_for(one_bad_frame(*case), 20))


def test_nan_like_pcm_reaches_a_normal_turn():
    """Extreme sample values and NaN bit patterns are just loud audio: a committed turn of them
    gets a response (no error), and ASR sees finite float audio."""

    async def scenario() -> None:
        backends = fakes.FakeBackends()
        driver = fakes.SessionDriver(backends, fuzz_config())
        await driver.start()
        try:
            await driver.send({"type": "session.update", "session": {"audio": {"input": {"turn_detection": None}}}})
            for raw in NAN_LIKE:
                await driver.send({"type": "input_audio_buffer.append", "audio": b64(raw)})
            await driver.send({"type": "input_audio_buffer.commit"})
            done = await driver.wait_for("response.done")
            assert done["response"]["status"] == "completed"
            assert driver.errors() == []
            pcm = np.concatenate([c.args["pcm"] for c in backends.asr_calls])
            assert len(pcm) > 0 and np.all(np.isfinite(pcm)) and np.max(np.abs(pcm)) <= 1.5
        finally:
            await driver.stop()
        TRIED["NaN-like/extreme pcm"] += len(NAN_LIKE)

    asyncio.run(asyncio.wait_for(scenario(), 20))
