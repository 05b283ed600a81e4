"""Client event parsing (every error code of parse_client_event) and server event builders."""

from __future__ import annotations

import json

import numpy as np
import pydantic
import pytest

from quillman import errors, protocol


def parse(event: dict | str):
    return protocol.parse_client_event(event if isinstance(event, (str, bytes)) else json.dumps(event))


def parse_error(event: dict | str) -> errors.QuillmanError:
    with pytest.raises(errors.QuillmanError) as info:
        parse(event)
    return info.value


# --- valid events ------------------------------------------------------------------------------


def test_session_update_ga_example():
    # The example of PROTOCOL.md §2, verbatim.
    event = parse({"type": "session.update", "event_id": "ev1", "session": {
        "type": "realtime", "instructions": "Be brief.", "output_modalities": ["audio"],
        "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000},
                            "transcription": {"model": "whisper-1"},
                            "turn_detection": {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                                               "silence_duration_ms": 500, "create_response": True,
                                               "interrupt_response": True}},
                  "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy"}}}})
    assert isinstance(event, protocol.SessionUpdateEvent)
    assert event.event_id == "ev1"
    td = event.session.audio.input.turn_detection
    assert (td.threshold, td.silence_duration_ms, td.interrupt_response) == (0.5, 500, True)
    assert event.session.audio.output.voice == "alloy"


def test_turn_detection_null_is_distinguished_from_absent():
    null = parse({"type": "session.update", "session": {"audio": {"input": {"turn_detection": None}}}})
    assert "turn_detection" in null.session.audio.input.model_fields_set
    assert null.session.audio.input.turn_detection is None
    absent = parse({"type": "session.update", "session": {"audio": {"input": {}}}})
    assert "turn_detection" not in absent.session.audio.input.model_fields_set


@pytest.mark.parametrize("event, cls", [
    ({"type": "input_audio_buffer.append", "audio": "AAA="}, protocol.InputAudioBufferAppend),
    ({"type": "input_audio_buffer.commit"}, protocol.InputAudioBufferCommit),
    ({"type": "input_audio_buffer.clear"}, protocol.InputAudioBufferClear),
    ({"type": "response.create"}, protocol.ResponseCreate),
    ({"type": "response.create", "response": {"instructions": "x", "output_modalities": ["text"],
                                              "metadata": {"k": "v"}, "conversation": "none"}},
     protocol.ResponseCreate),
    ({"type": "response.cancel"}, protocol.ResponseCancel),
    ({"type": "response.cancel", "response_id": "resp_1"}, protocol.ResponseCancel),
    ({"type": "conversation.item.truncate", "item_id": "item_1", "content_index": 0, "audio_end_ms": 1500},
     protocol.ConversationItemTruncate),
    ({"type": "conversation.item.create", "previous_item_id": None,
      "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}},
     protocol.ConversationItemCreate),
    ({"type": "conversation.item.create", "previous_item_id": "root",
      "item": {"type": "function_call_output", "call_id": "call_1", "output": "{}"}},
     protocol.ConversationItemCreate),
    ({"type": "conversation.item.delete", "item_id": "item_1"}, protocol.ConversationItemDelete),
    ({"type": "conversation.item.retrieve", "item_id": "item_1"}, protocol.ConversationItemRetrieve),
])
def test_valid_client_events(event, cls):
    assert isinstance(parse(event), cls)


def test_unknown_fields_are_ignored():
    event = parse({"type": "response.create", "tools": [], "tracing": "auto",
                   "response": {"tools": [{"type": "function"}], "tool_choice": "auto"}})
    assert isinstance(event, protocol.ResponseCreate)


def test_conversation_item_text():
    event = parse({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user",
        "content": [{"type": "input_text", "text": "hello"}, {"type": "input_audio", "transcript": "there"}]}})
    assert event.item.text() == "hello there"


def test_bytes_frames_are_accepted():
    assert isinstance(protocol.parse_client_event(b'{"type":"input_audio_buffer.clear"}'),
                      protocol.InputAudioBufferClear)


# --- every parse error ------------------------------------------------------------------------


@pytest.mark.parametrize("frame", ["{not json", "", "nul", '{"type": "response.create"', b"\xff\xfe"])
def test_invalid_json(frame):
    exc = parse_error(frame)
    assert isinstance(exc, errors.InvalidJson)
    assert exc.code == "invalid_json" and exc.type == "invalid_request_error"


@pytest.mark.parametrize("frame", ["[]", "42", '"response.create"', "null"])
def test_json_that_is_not_an_object(frame):
    assert parse_error(frame).code == "invalid_json"


@pytest.mark.parametrize("event", [{}, {"type": 5}, {"type": None}, {"event_id": "e1"}])
def test_missing_or_non_string_type(event):
    exc = parse_error(event)
    assert exc.code == "invalid_event"
    assert exc.param == "type"


def test_unknown_event_type_echoes_event_id():
    exc = parse_error({"type": "session.fly", "event_id": "ev_42"})
    assert exc.code == "unknown_event_type"
    assert exc.event_id == "ev_42"
    assert "session.fly" in exc.message


def test_beta_event_name_is_unknown():
    assert parse_error({"type": "response.audio.delta"}).code == "unknown_event_type"


def test_unknown_event_type_message_is_bounded():
    exc = parse_error({"type": "x" * 10000})
    assert exc.code == "unknown_event_type"
    assert len(exc.message) < 200


@pytest.mark.parametrize("event_type", ["transcription_session.update"])
def test_unsupported_realtime_events(event_type):
    exc = parse_error({"type": event_type, "event_id": "ev_7", "item_id": "item_1",
                       "content_index": 0, "audio_end_ms": 100})
    assert exc.code == "unsupported_event"
    assert exc.event_id == "ev_7"


def test_output_audio_buffer_clear_parses():
    """A WebRTC client event; a websocket session refuses it (unsupported_event) itself."""
    event = protocol.parse_client_event(json.dumps({"type": "output_audio_buffer.clear", "event_id": "e1"}))
    assert isinstance(event, protocol.OutputAudioBufferClear) and event.event_id == "e1"


def test_output_audio_delta_keeps_its_samples_off_the_wire():
    pcm = np.arange(4, dtype=np.int16)
    event = protocol.OutputAudioDelta.of(pcm, "audio/pcm", 24000, response_id="r", item_id="i", output_index=0)
    assert event.rate_hz == 24000 and event.pcm is pcm
    assert set(json.loads(protocol.serialize(event))) == {
        "event_id", "type", "response_id", "item_id", "output_index", "content_index", "delta"}


@pytest.mark.parametrize("event, param", [
    ({"type": "input_audio_buffer.append"}, "audio"),
    ({"type": "input_audio_buffer.append", "audio": 5}, "audio"),
    ({"type": "conversation.item.create"}, "item"),
    ({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": []}},
     "item.content"),
    ({"type": "conversation.item.create", "item": {"type": "message", "role": "robot",
                                                   "content": [{"type": "input_text", "text": "x"}]}},
     "item.role"),
    ({"type": "conversation.item.create", "item": {"type": "function_call", "role": "user",
                                                   "content": [{"type": "input_text", "text": "x"}]}},
     "item.type"),
    ({"type": "session.update"}, "session"),
    ({"type": "session.update", "session": "realtime"}, "session"),
    ({"type": "response.cancel", "response_id": 7}, "response_id"),
    ({"type": "response.create", "response": {"output_modalities": ["video"]}}, "response.output_modalities.0"),
    ({"type": "conversation.item.truncate", "audio_end_ms": 100}, "item_id"),
    ({"type": "conversation.item.delete"}, "item_id"),
    ({"type": "conversation.item.retrieve", "item_id": 5}, "item_id"),
    ({"type": "conversation.item.create", "previous_item_id": 3,
      "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "x"}]}},
     "previous_item_id"),
    ({"type": "conversation.item.truncate", "item_id": "item_1", "audio_end_ms": -5}, "audio_end_ms"),
])
def test_invalid_event_names_the_bad_field(event, param):
    exc = parse_error({**event, "event_id": "ev_9"})
    assert exc.code == "invalid_event"
    assert exc.event_id == "ev_9"
    assert exc.param == param, exc.message
    assert param.split(".")[0] in exc.message


@pytest.mark.parametrize("turn_detection, param", [
    ({"type": "server_vad", "threshold": 1.5}, "threshold"),
    ({"type": "server_vad", "silence_duration_ms": 10}, "silence_duration_ms"),
    ({"type": "server_vad", "prefix_padding_ms": -1}, "prefix_padding_ms"),
    ({"type": "bogus_vad"}, "type"),
])
def test_invalid_turn_detection(turn_detection, param):
    exc = parse_error({"type": "session.update",
                       "session": {"audio": {"input": {"turn_detection": turn_detection}}}})
    assert exc.code == "invalid_event"
    assert exc.param == f"session.audio.input.turn_detection.{param}"


def test_invalid_audio_format_type_is_an_invalid_event():
    exc = parse_error({"type": "session.update",
                       "session": {"audio": {"input": {"format": {"type": "audio/mp3"}}}}})
    assert exc.code == "invalid_event"


def test_unsupported_formats_parse_and_are_refused_by_the_session():
    # pcmu / odd rates are valid protocol; the session refuses them (unsupported_audio_format).
    event = parse({"type": "session.update", "session": {"audio": {"input": {"format": {"type": "audio/pcmu"}}}}})
    assert event.session.audio.input.format.type == "audio/pcmu"


def test_non_string_event_id_is_invalid():
    exc = parse_error({"type": "response.create", "event_id": 5})
    assert exc.code == "invalid_event"
    assert exc.param == "event_id"


def test_every_error_code_is_stable():
    assert {cls.code for cls in [
        errors.InvalidJson, errors.UnknownEventType, errors.InvalidEvent, errors.UnsupportedEvent,
        errors.InvalidBase64, errors.InvalidAudioLength, errors.UnsupportedAudioFormat,
        errors.FrameTooLarge, errors.AudioBufferOverflow, errors.CommitEmpty,
        errors.ResponseAlreadyActive, errors.ResponseCancelNotActive, errors.ModelError,
    ]} == {
        "invalid_json", "unknown_event_type", "invalid_event", "unsupported_event", "invalid_base64",
        "invalid_audio_length", "unsupported_audio_format", "frame_too_large",
        "input_audio_buffer_overflow", "input_audio_buffer_commit_empty",
        "conversation_already_has_active_response", "response_cancel_not_active", "model_error",
    }
    assert errors.ModelError.type == "server_error"
    assert errors.CommitEmpty.type == "invalid_request_error"


# --- server events ----------------------------------------------------------------------------


def test_server_events_have_ids_types_and_serialize_once():
    event = protocol.InputAudioBufferCleared()
    wire = json.loads(protocol.serialize(event))
    assert wire["type"] == "input_audio_buffer.cleared"
    assert wire["event_id"].startswith("event_")
    assert protocol.InputAudioBufferCleared().event_id != event.event_id


def test_new_ids_are_unique():
    assert len({protocol.new_id("item") for _ in range(1000)}) == 1000


def wire(model) -> dict:
    return json.loads(model.model_dump_json())


def test_error_event_shape():
    event = protocol.error_event(errors.InvalidEvent("bad", param="audio", event_id="ev_1"))
    assert event.type == "error"
    assert wire(event)["error"] == {"type": "invalid_request_error", "code": "invalid_event", "message": "bad",
                                    "param": "audio", "event_id": "ev_1"}
    bare = protocol.error_event(errors.InvalidJson("nope"))
    assert wire(bare)["error"] == {"type": "invalid_request_error", "code": "invalid_json", "message": "nope"}


def test_items_and_parts():
    assistant = wire(protocol.assistant_item("item_1", "Hi.", "completed", audio=True))
    assert assistant["role"] == "assistant" and assistant["object"] == "realtime.item"
    assert assistant["content"] == [{"type": "output_audio", "transcript": "Hi."}]
    assert wire(protocol.assistant_item("item_1", "Hi.", "completed", audio=False))["content"] == [
        {"type": "output_text", "text": "Hi."}]
    # In content_part events the part type is "audio" (PROTOCOL.md §4), not "output_audio".
    assert wire(protocol.content_part("Hi.", audio=True)) == {"type": "audio", "transcript": "Hi."}
    assert wire(protocol.content_part("Hi.", audio=False)) == {"type": "text", "text": "Hi."}
    user = wire(protocol.user_audio_item("item_2", None, "in_progress"))
    assert user["status"] == "in_progress" and user["content"][0]["type"] == "input_audio"
    assert wire(protocol.text_item("item_3", "user", "yo"))["content"] == [{"type": "input_text", "text": "yo"}]
    assert wire(protocol.text_item("item_4", "assistant", "ok"))["content"] == [{"type": "output_text", "text": "ok"}]


def test_server_event_models_refuse_fields_they_do_not_define():
    with pytest.raises(pydantic.ValidationError):
        protocol.SpeechStartedEvent(audio_start_ms=0, item_id="i", surprise=1)


def test_timings_leave_out_stages_that_did_not_happen():
    timings = protocol.ResponseTimings(first_token_ms=12.5)
    assert wire(timings) == {"first_token_ms": 12.5, "speculative": 0.0}
    assert set(protocol.STAGES) <= set(protocol.ResponseTimings.model_fields)


def test_json_depth_is_measured_without_parsing():
    assert protocol.json_depth('{"a": [1, {"b": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}]}') <= 3
    deep = '{"type": "session.update", "session": ' + '{"a": ' * 5000 + "1" + "}" * 5000 + "}"
    assert protocol.json_depth(deep) == 5001
    with pytest.raises(errors.InvalidJson, match="nests deeper"):
        protocol.parse_client_event(deep)
    escaped = '{"type": "x", "s": "\\\" [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}'
    assert protocol.json_depth(escaped) == 1


def test_item_events_are_the_sdks_shapes():
    """Every item event the server emits validates strictly as the openai SDK's GA type."""
    from openai.types.realtime import realtime_server_event as sdk
    from pydantic import TypeAdapter

    call = protocol.FunctionCallItem(id="item_c", call_id="call_1", name="f", arguments='{"a": 1}')
    output = protocol.FunctionCallOutputItem(id="item_o", call_id="call_1", output="ok")
    events = [
        protocol.InputAudioBufferCommitted(item_id="item_u", previous_item_id=None),
        protocol.ConversationItemAdded(item=protocol.user_audio_item("item_u", None, "in_progress")),
        protocol.ConversationItemDone(item=protocol.user_audio_item("item_u", "hi"), previous_item_id="item_0"),
        protocol.ConversationItemAdded(item=protocol.assistant_item("item_a", "", "in_progress", audio=True),
                                       previous_item_id="item_u"),
        protocol.ConversationItemDone(item=call, previous_item_id="item_a"),
        protocol.ConversationItemDone(item=output, previous_item_id="item_c"),
        protocol.ConversationItemAdded(item=protocol.text_item("item_s", "system", "Be brief."),
                                       previous_item_id=None),
        protocol.ConversationItemDeleted(item_id="item_u"),
        protocol.ConversationItemRetrieved(item=protocol.user_audio_item("item_u", "hi")),
        protocol.ConversationItemRetrieved(item=call),
        protocol.error_event(errors.ItemRetrieveInvalidItemId("no such item", param="item_id", event_id="ev_1")),
    ]
    adapter = TypeAdapter(sdk.RealtimeServerEvent)
    for event in events:
        data = wire(event)
        parsed = adapter.validate_python(data)  # strict: a wrong field fails here
        assert parsed.type == data["type"]
        assert parsed.model_dump(exclude_unset=True) == data
    retrieved = adapter.validate_python(wire(events[8]))
    assert retrieved.item.content[0].transcript == "hi"


def test_unknown_item_codes_are_the_hosted_apis():
    assert [cls.code for cls in (errors.ItemCreateInvalidPreviousItemId, errors.ItemDeleteInvalidItemId,
                                 errors.ItemRetrieveInvalidItemId, errors.ItemTruncateInvalidItemId)] == [
        "item_create_invalid_previous_item_id", "item_delete_invalid_item_id",
        "item_retrieve_invalid_item_id", "item_truncate_invalid_item_id"]
    assert errors.ItemDeleteInvalidItemId.type == "invalid_request_error"


def test_sdk_client_events_parse():
    """What the SDK sends for these events parses here."""
    from openai.types.realtime import (ConversationItemCreateEvent, ConversationItemDeleteEvent,
                                       ConversationItemRetrieveEvent)

    sent = [ConversationItemDeleteEvent(type="conversation.item.delete", item_id="item_1", event_id="e1"),
            ConversationItemRetrieveEvent(type="conversation.item.retrieve", item_id="item_1"),
            ConversationItemCreateEvent(type="conversation.item.create", previous_item_id="root", item={
                "type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]})]
    parsed = [parse(event.model_dump_json(exclude_none=True)) for event in sent]
    assert [type(p) for p in parsed] == [protocol.ConversationItemDelete, protocol.ConversationItemRetrieve,
                                         protocol.ConversationItemCreate]
    assert parsed[0].item_id == "item_1" and parsed[0].event_id == "e1" and parsed[2].previous_item_id == "root"
