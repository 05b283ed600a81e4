"""Session settings: apply() validates the whole update first, refuses what isn't implemented."""

from __future__ import annotations

import json

import pytest

from quillman import errors, protocol
from quillman.config import LlmConfig, SessionConfig, VadConfig
from quillman.engines.llm.base import Capabilities
from quillman.engines.loader import language_model_capabilities
from quillman.pipeline.settings import SessionSettings, response_settings


def initial() -> SessionSettings:
    return SessionSettings.initial(SessionConfig(), VadConfig(), ["joe"])


def update(**session) -> protocol.SessionUpdate:
    return protocol.SessionUpdate.model_validate(session)


def test_a_refused_update_changes_nothing():
    settings = initial()
    bad = update(instructions="new", audio={"input": {"format": {"type": "audio/pcm", "rate": 12345}}})
    with pytest.raises(errors.UnsupportedAudioFormat):
        settings.apply(bad, "joe")
    assert settings.instructions == SessionConfig().instructions  # frozen: nothing to undo


@pytest.mark.parametrize("session, param", [
    ({"tools": [{"type": "mcp", "server_label": "x"}]}, "session.tools[0].type"),
])
def test_unimplemented_features_are_refused_not_ignored(session, param):
    # MCP tools on a server whose operator enabled none (test_mcp_tools.py has the rest).
    with pytest.raises(errors.UnsupportedFeature) as refused:
        initial().apply(update(**session), "joe")
    assert refused.value.code == "mcp_disabled" and refused.value.param == param


def test_the_empty_values_clients_always_send_are_accepted():
    settings = initial().apply(update(tools=[], tool_choice="auto", audio={"input": {"noise_reduction": None}}), "joe")
    assert settings.turn_detection == VadConfig()


def test_turn_detection_merges_over_the_current_options():
    settings = initial().apply(update(audio={"input": {"turn_detection": {
        "type": "server_vad", "silence_duration_ms": 150, "create_response": False}}}), "joe")
    assert settings.turn_detection.silence_duration_ms == 150
    assert settings.turn_detection.pause_ms == 150  # a pause never outlasts the end of turn
    assert settings.turn_detection.threshold == VadConfig().threshold
    assert settings.create_response is False
    off = settings.apply(update(audio={"input": {"turn_detection": None}}), "joe")
    assert off.turn_detection is None


def test_semantic_vad_keeps_the_vad_options_and_reports_its_eagerness():
    td = {"type": "semantic_vad", "eagerness": "high", "create_response": True, "interrupt_response": False}
    settings = initial().apply(update(audio={"input": {"turn_detection": td}}), "joe")
    assert settings.turn_detection.type == "semantic_vad" and settings.turn_detection.eagerness == "high"
    assert settings.turn_detection.silence_duration_ms == VadConfig().silence_duration_ms
    wire = settings.session_object("s").model_dump()["audio"]["input"]["turn_detection"]
    assert wire == td
    back = settings.apply(update(audio={"input": {"turn_detection": {"type": "server_vad"}}}), "joe")
    assert back.session_object("s").model_dump()["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    assert back.turn_detection.type == "server_vad"


def test_an_unknown_eagerness_is_invalid():
    with pytest.raises(ValueError):
        update(audio={"input": {"turn_detection": {"type": "semantic_vad", "eagerness": "eager"}}})


def test_unknown_voices_fall_back_to_the_default():
    settings = initial().apply(update(audio={"output": {"voice": "alloy"}}), "joe")
    assert settings.voice == "joe"


def test_session_object_round_trips_the_settings():
    settings = initial().apply(update(audio={"output": {"format": {"type": "audio/pcm", "rate": 16000}}}), "joe")
    wire = settings.session_object("sess_1").model_dump()
    assert wire["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 16000}
    assert wire["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    assert wire["tools"] == []


@pytest.mark.parametrize("session_tokens, response_tokens, expected", [
    (None, None, 64), (10, None, 10), (None, 5, 5), (None, 100000, 64), (10, "inf", 10)])
def test_the_servers_max_tokens_is_a_ceiling(session_tokens, response_tokens, expected):
    settings = initial()
    if session_tokens:
        settings = settings.apply(update(max_output_tokens=session_tokens), "joe")
    options = protocol.ResponseOptions(max_output_tokens=response_tokens) if response_tokens else None
    assert response_settings(settings, options, SessionConfig(), LlmConfig(max_tokens=64),
                             Capabilities(tools=True)).max_output_tokens == expected


def test_response_tools_without_a_name_are_refused():
    with pytest.raises(errors.InvalidTool):
        response_settings(initial(), protocol.ResponseOptions(tools=[{"type": "function"}]), SessionConfig(), LlmConfig(),
                          Capabilities(tools=True))


@pytest.mark.parametrize("field, value", [
    ("threshold", 0.0), ("threshold", 1.0), ("prefix_padding_ms", -1), ("prefix_padding_ms", 2001),
    ("silence_duration_ms", 99), ("silence_duration_ms", 5001),
])
def test_a_client_cannot_exceed_the_configs_vad_bounds(field, value):
    """One source per bound (quillman.config): the wire refuses what VadConfig forbids, and
    apply() validates the merged options again (an update built without validation too)."""
    frame = {"type": "session.update", "event_id": "ev_1", "session": {
        "audio": {"input": {"turn_detection": {"type": "server_vad", field: value}}}}}
    with pytest.raises(errors.InvalidEvent) as refused:
        protocol.parse_client_event(json.dumps(frame))
    assert refused.value.param == f"session.audio.input.turn_detection.{field}"
    with pytest.raises(ValueError):
        VadConfig(**{field: value})
    unchecked = protocol.SessionUpdate.model_construct(audio=protocol.SessionAudio.model_construct(
        input=protocol.AudioInput.model_construct(
            turn_detection=protocol.TurnDetection.model_construct(type="server_vad", **{field: value}))))
    with pytest.raises(errors.InvalidEvent) as bypass:
        initial().apply(unchecked, "joe")
    assert bypass.value.param == f"session.audio.input.turn_detection.{field}"
    assert initial().turn_detection == VadConfig()


@pytest.mark.parametrize("llm, tools", [
    (LlmConfig(), True),  # the batched llama.cpp engine: grammar-constrained calls
    (LlmConfig(scheduler="serial"), False),  # one context, text only
    (LlmConfig(backend="vllm"), False),
    (LlmConfig(backend="openai", base_url="http://127.0.0.1:1/v1"), True),
])
def test_function_calls_are_refused_where_the_engine_cannot_make_them(llm, tools):
    """Asked of the engine's capabilities, not the backend's name; refused, never dropped."""
    assert language_model_capabilities(llm).tools is tools
    options = protocol.ResponseOptions(tools=[{"type": "function", "name": "f", "parameters": {}}])
    if tools:
        assert response_settings(initial(), options, SessionConfig(), llm, language_model_capabilities(llm)).tools
    else:
        with pytest.raises(errors.UnsupportedFeature) as refused:
            response_settings(initial(), options, SessionConfig(), llm, language_model_capabilities(llm))
        assert refused.value.param == "response.tools"
