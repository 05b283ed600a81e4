"""A response's output on its own: the gate, item order and indices, calls, usage, response.done."""

from __future__ import annotations

import json

import numpy as np
import pytest

from quillman import protocol
from quillman.config import SessionConfig
from quillman.engines.llm.base import ToolCallDelta, Usage
from quillman.pipeline.mcp_connection import ListedTool
from quillman.pipeline.response_output import ResponseOutput, TokenUsage
from quillman.pipeline.settings import ResponseSettings
from quillman.pipeline.timings import Timings

WEATHER = ListedTool(server_label="weather", name="forecast", engine_name="weather__forecast",
                     description="", input_schema={"type": "object"}, read_only=True)


class Recorder:
    def __init__(self, held: bool = False, audio: bool = True, metadata: dict | None = None):
        self.events: list[dict] = []
        self.placed: list[str] = []
        settings = ResponseSettings(instructions="", output_audio=audio, voice="joe", output_rate_hz=24000,
                                    max_output_tokens=50, temperature=0.3, top_p=0.8, pipeline=SessionConfig(),
                                    metadata=metadata)
        self.output = ResponseOutput("resp_1", "item_msg", settings, Timings(origin=0.0), self.record,
                                     self.on_item, held=held)

    def record(self, event: protocol.ServerEvent) -> None:
        self.events.append(json.loads(protocol.serialize(event)))

    def on_item(self, event: protocol.ServerEvent) -> str | None:
        previous = self.placed[-1] if self.placed else None
        if isinstance(event, protocol.ConversationItemAdded):
            self.placed.append(event.item.id)
        return previous

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]

    def done(self) -> dict:
        return [e for e in self.events if e["type"] == "response.done"][-1]["response"]


def test_held_events_go_out_in_order_when_released():
    r = Recorder(held=True)
    r.output.open()
    r.output.open()  # response.created once
    r.output.text_delta("Hi.")
    assert r.output.holding and r.events == []
    r.output.release()
    assert not r.output.holding
    assert r.types() == ["response.created", "response.output_item.added", "conversation.item.added",
                         "response.content_part.added", "response.output_audio_transcript.delta"]
    r.output.text_delta(" More.")  # live from now on
    assert r.types()[-1] == "response.output_audio_transcript.delta"
    assert r.output.placed == ["item_msg"] and r.output.text == "Hi. More."


def test_conversation_events_carry_the_previous_item_the_session_gives():
    r = Recorder()
    r.output.text_delta("One moment.")
    r.output.tool_call_delta(ToolCallDelta(index=0, call_id="call_1", name="lookup", arguments="{}"), None)
    r.output.close("completed", None)
    added = [e for e in r.events if e["type"] == "conversation.item.added"]
    assert [e["previous_item_id"] for e in added] == [None, "item_msg"]


def test_a_function_call_is_complete_once_the_model_goes_on_and_incomplete_if_cut():
    r = Recorder()
    r.output.tool_call_delta(ToolCallDelta(index=0, call_id="call_1", name="lookup", arguments='{"q":'), None)
    r.output.tool_call_delta(ToolCallDelta(index=0, arguments=' "x"}'), None)
    assert not r.output.opens_call(ToolCallDelta(index=0)) and r.output.opens_call(ToolCallDelta(index=1))
    r.output.close_open_calls()
    r.output.tool_call_delta(ToolCallDelta(index=1, call_id="call_2", name="lookup", arguments='{"q'), None)
    assert r.output.round_made_function_calls
    r.output.close("cancelled", protocol.StatusDetails(type="cancelled", reason="client_cancelled"))
    args_done = [e for e in r.events if e["type"] == "response.function_call_arguments.done"]
    assert [(e["call_id"], e["arguments"]) for e in args_done] == [("call_1", '{"q": "x"}')]
    body = r.done()
    assert [(i["call_id"], i["status"]) for i in body["output"]] == [("call_1", "completed"), ("call_2", "incomplete")]
    assert "response.content_part.added" not in r.types()  # a reply of calls only has no message


def test_mcp_calls_end_with_their_result_or_failure_and_approvals_take_an_index():
    r = Recorder()
    r.output.text_delta("Let me look.")
    r.output.tool_call_delta(ToolCallDelta(index=0, name="weather__forecast", arguments='{"city": "Paris"}'), WEATHER)
    r.output.close_open_calls()
    call = r.output.mcp_calls[0]
    assert call.arguments_done and r.types()[-1] == "response.mcp_call_arguments.done"
    r.output.request_approval(call, "mcpr_1")
    r.output.mcp_call_running(call)
    call.output = "Sunny"
    r.output.end_mcp_call(call)
    r.output.tool_call_delta(ToolCallDelta(index=1, name="weather__forecast"), WEATHER)
    r.output.close("cancelled", None)  # the second never ran
    assert r.output.current_item("mcpr_1").type == "mcp_approval_request"
    assert [e["type"] for e in r.events if e["type"].startswith("response.mcp_call.")] == [
        "response.mcp_call.in_progress", "response.mcp_call.completed", "response.mcp_call.failed"]
    body = r.done()
    assert [item["type"] for item in body["output"]] == ["message", "mcp_call", "mcp_approval_request", "mcp_call"]
    assert body["output"][1]["output"] == "Sunny" and body["output"][3]["error"] is not None


def test_usage_adds_each_rounds_engine_count():
    usage = TokenUsage()
    usage.output += 3  # counted by deltas until the engine's count
    usage.engine_count(Usage(input_tokens=10, output_tokens=5, cached_tokens=4))
    usage.next_round()
    usage.output += 1
    usage.engine_count(Usage(input_tokens=20, output_tokens=2, cached_tokens=15))
    wire = usage.wire()
    assert (wire.input_tokens, wire.output_tokens, wire.total_tokens) == (30, 7, 37)
    assert wire.input_token_details.cached_tokens == 19


@pytest.mark.parametrize("audio", [True, False])
def test_response_done_lists_the_message_with_audio_seconds_and_metadata(audio):
    r = Recorder(audio=audio, metadata={"topic": "time"})
    r.output.open()
    r.output.metadata = {**r.output.metadata, "turn_decision": "text"}
    r.output.text_delta("It is noon.")
    if audio:
        r.output.audio_delta(np.zeros(2400, np.int16))
    r.output.close("completed", None)
    body = r.done()
    assert body["output"][0]["status"] == "completed" and body["audio_s"] == (0.1 if audio else 0.0)
    assert body["metadata"]["topic"] == "time" and body["metadata"]["turn_decision"] == "text"
    done_kind = "response.output_audio_transcript.done" if audio else "response.output_text.done"
    assert done_kind in r.types()
