"""Function calling in a session: the GA Realtime events of a call, its output, bad input."""

from __future__ import annotations

import json

import pytest

from quillman.engines.llm.base import ToolCallDelta

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather of a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def call(index: int, call_id: str, name: str, *arguments: str) -> list[ToolCallDelta]:
    return [ToolCallDelta(index=index, call_id=call_id, name=name),
            *(ToolCallDelta(index=index, arguments=part) for part in arguments)]


async def codes(driver) -> list[str]:
    await driver.drain()
    return [e["code"] for e in driver.errors()]


@pytest.fixture
async def driver(make_driver, session_config):
    driver = await make_driver(session_config())
    await driver.send({"type": "session.update", "session": {
        "output_modalities": ["text"], "tools": [WEATHER], "tool_choice": "auto"}})
    return driver


async def test_a_call_is_a_function_call_item_with_its_events(driver, backends):
    backends.replies[0] = ""
    backends.tool_calls[0] = call(0, "call_1", "get_weather", '{"city": ', '"Paris"}')
    start = len(driver.events)
    done = await driver.text_turn("What's the weather in Paris?")
    assert driver.session.settings.tools[0].name == "get_weather"
    request = backends.llm_calls[0].args["request"]
    assert request.tools[0].name == "get_weather" and request.tool_choice == "auto"
    added = driver.of_type("response.output_item.added")[-1]
    assert added["item"] == {"id": added["item"]["id"], "object": "realtime.item", "type": "function_call",
                             "status": "in_progress", "call_id": "call_1", "name": "get_weather", "arguments": ""}
    deltas = [e["delta"] for e in driver.of_type("response.function_call_arguments.delta")]
    assert "".join(deltas) == '{"city": "Paris"}'
    args_done = driver.of_type("response.function_call_arguments.done")[-1]
    assert args_done["name"] == "get_weather" and json.loads(args_done["arguments"]) == {"city": "Paris"}
    assert args_done["call_id"] == "call_1" and args_done["output_index"] == 0
    assert done["response"]["status"] == "completed"
    assert [item["type"] for item in done["response"]["output"]] == ["function_call"]
    assert done["response"]["output"][0]["arguments"] == '{"city": "Paris"}'
    order = driver.types(start)
    order = order[order.index("response.created"):]
    assert order.index("response.function_call_arguments.done") < order.index("response.output_item.done") \
        < order.index("conversation.item.done") < order.index("response.done")


async def test_the_output_goes_into_the_next_prompt(driver, backends):
    backends.replies[0] = ""
    backends.tool_calls[0] = call(0, "call_1", "get_weather", '{"city": "Paris"}')
    await driver.text_turn("What's the weather in Paris?")
    await driver.send({"type": "conversation.item.create",
                       "item": {"type": "function_call_output", "call_id": "call_1", "output": '{"temp_c": 21}'}})
    await driver.send({"type": "response.create"})
    done = await driver.wait_for("response.done", count=2)
    assert done["response"]["status"] == "completed" and driver.errors() == []
    added = [e for e in driver.of_type("conversation.item.added") if e["item"]["type"] == "function_call_output"]
    assert added[0]["item"]["call_id"] == "call_1"
    messages = backends.llm_calls[1].args["messages"]
    assert messages[-2]["tool_calls"][0]["id"] == "call_1"
    assert messages[-1] == {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21}'}
    # Answered once: a second output for it is refused.
    await driver.send({"type": "conversation.item.create",
                       "item": {"type": "function_call_output", "call_id": "call_1", "output": "again"}})
    assert await codes(driver) == ["unknown_call_id"]


async def test_text_then_two_calls_follow_the_same_shapes(driver, backends):
    backends.replies[0] = "Let me check."
    backends.tool_calls[0] = [*call(0, "call_a", "get_weather", '{"city": "Paris"}'),
                              *call(1, "call_b", "get_weather", '{"city": "Rome"}')]
    done = await driver.text_turn("Weather in Paris and Rome?")
    output = done["response"]["output"]
    assert [item["type"] for item in output] == ["message", "function_call", "function_call"]
    assert [item.get("call_id") for item in output[1:]] == ["call_a", "call_b"]
    indexes = [e["output_index"] for e in driver.of_type("response.function_call_arguments.done")]
    assert indexes == [1, 2]


async def test_an_unknown_call_id_is_refused(driver):
    await driver.send({"type": "conversation.item.create",
                       "item": {"type": "function_call_output", "call_id": "call_nope", "output": "x"}})
    assert await codes(driver) == ["unknown_call_id"]


async def test_the_output_of_a_cancelled_responses_call_is_refused(driver, backends):
    backends.replies[0] = ""
    backends.tool_calls[0] = call(0, "call_1", "get_weather", '{"city": "Paris"}')
    backends.llm_hang_calls[0] = 0  # the call is made, then the stream hangs: the client cancels
    await driver.ask("Weather?")
    await driver.wait_for("response.function_call_arguments.delta")
    await driver.send({"type": "response.cancel"})
    done = await driver.wait_for("response.done")
    assert done["response"]["status"] == "cancelled"
    assert done["response"]["output"][0]["status"] == "incomplete"
    # Its arguments were never done: nothing told the client it could run it.
    assert driver.of_type("response.function_call_arguments.done") == []
    await driver.send({"type": "conversation.item.create",
                       "item": {"type": "function_call_output", "call_id": "call_1", "output": "x"}})
    assert await codes(driver) == ["function_call_cancelled"]
    # The session goes on, and the cancelled call is not in the history.
    backends.llm_hang_calls.clear()
    await driver.text_turn("Hello?")
    assert not any(m.get("tool_calls") for m in backends.llm_calls[-1].args["messages"])


async def test_a_call_whose_output_never_comes_does_not_wedge_the_session(driver, backends):
    backends.replies[0] = ""
    backends.tool_calls[0] = call(0, "call_1", "get_weather", '{"city": "Paris"}')
    await driver.text_turn("Weather in Paris?")
    done = await driver.text_turn("Never mind. Tell me a joke.")
    assert done["response"]["status"] == "completed"
    messages = backends.llm_calls[-1].args["messages"]
    # An unanswered call is left out: the prompt stays valid for any chat template or server.
    assert not any(m.get("tool_calls") or m["role"] == "tool" for m in messages)


@pytest.mark.parametrize("tools, code", [
    ([{"type": "function", "name": "bad name!"}], "invalid_tool"),
    ([{"type": "function", "name": "f", "parameters": {"type": "object", "properties": 5}}], "invalid_tool"),
    ([{"type": "function", "name": "f", "parameters": {"type": "string"}}], "invalid_tool"),
    ([{"type": "function", "name": "f"}, {"type": "function", "name": "f"}], "invalid_tool"),
    ([{"type": "function", "name": f"f{i}"} for i in range(33)], "tools_too_large"),
    ([{"type": "function", "name": "f", "description": "x" * 40000}], "tools_too_large"),
])
async def test_bad_tool_lists_are_refused_with_stable_codes(driver, tools, code):
    await driver.send({"type": "session.update", "session": {"tools": tools}})
    assert await codes(driver) == [code]
    assert [t.name for t in driver.session.settings.tools] == ["get_weather"]  # nothing changed


async def test_a_forced_choice_must_name_a_declared_tool(driver, backends):
    await driver.send({"type": "session.update", "session": {"tool_choice": {"type": "function", "name": "nope"}}})
    assert await codes(driver) == ["invalid_tool_choice"]
    await driver.text_turn("Weather?", tool_choice={"type": "function", "name": "get_weather"})
    assert backends.llm_calls[-1].args["request"].tool_choice == "get_weather"
    updated = driver.of_type("session.updated")[-1]["session"]
    assert updated["tools"][0]["name"] == "get_weather" and updated["tool_choice"] == "auto"


async def test_the_filler_is_spoken_while_the_client_runs_the_tool(make_driver, backends, session_config):
    driver = await make_driver(session_config(tool_filler="One moment."))
    await driver.send({"type": "session.update", "session": {"tools": [WEATHER]}})
    backends.replies[0] = ""
    backends.tool_calls[0] = call(0, "call_1", "get_weather", '{"city": "Paris"}')
    done = await driver.text_turn("Weather in Paris?")
    # The filler is the reply's message, before the call (as text the model writes before one).
    assert [item["type"] for item in done["response"]["output"]] == ["message", "function_call"]
    assert backends.tts_calls and "One moment" in backends.tts_calls[0].args["text"]
    assert done["response"]["output"][0]["content"][0]["transcript"] == "One moment."


async def test_a_call_from_a_spoken_turn_can_be_answered(make_driver, backends, session_config, short_speech_24k):
    driver = await make_driver(session_config())
    await driver.send({"type": "session.update", "session": {
        "tools": [WEATHER], "tool_choice": {"type": "function", "name": "get_weather"}}})
    backends.reply = ""
    backends.tool_calls = {i: call(0, f"call_{i}", "get_weather", '{"city": "Paris"}') for i in range(4)}
    await driver.append(short_speech_24k.pcm)
    done = await driver.wait_for("response.done")
    call_id = done["response"]["output"][0]["call_id"]
    await driver.send({"type": "conversation.item.create",
                       "item": {"type": "function_call_output", "call_id": call_id, "output": "sunny"}})
    assert await codes(driver) == []


async def test_a_forced_choice_is_kept_while_its_tool_is(driver):
    await driver.send({"type": "session.update", "session": {"tool_choice": {"type": "function", "name": "get_weather"}}})
    await driver.send({"type": "session.update", "session": {"tools": [WEATHER, {**WEATHER, "name": "other"}]}})
    assert driver.session.settings.tool_choice == "get_weather"
    await driver.send({"type": "session.update", "session": {"tools": []}})
    assert driver.session.settings.tool_choice == "auto" and await codes(driver) == []


# --- a call is usable from its arguments' done event on ---------------------------------------


@pytest.fixture
async def filler_driver(make_driver, backends, session_config):
    """A spoken reply that is a call: the filler plays (TTS held) after the call's arguments."""
    driver = await make_driver(session_config(tool_filler="One moment."))
    await driver.send({"type": "session.update", "session": {"tools": [WEATHER]}})
    backends.replies[0] = ""
    backends.tool_calls[0] = call(0, "call_1", "get_weather", '{"city": "Paris"}')
    backends.tts_hang = True
    await driver.ask("Weather in Paris?")
    await driver.wait_for("response.function_call_arguments.done")
    return driver


async def answer(driver, output: str = "sunny") -> dict:
    await driver.send({"type": "conversation.item.create", "event_id": "ev_out",
                       "item": {"type": "function_call_output", "call_id": "call_1", "output": output}})
    await driver.drain()
    return driver.events[-1]


async def test_an_output_sent_at_arguments_done_is_taken_while_the_filler_plays(filler_driver, backends):
    driver = filler_driver
    call_item = driver.of_type("response.output_item.added")[-1]["item"]
    assert call_item["type"] == "function_call"
    done_item = await answer(driver)
    assert driver.errors() == [] and driver.session.response is not None  # still speaking
    assert done_item["type"] == "conversation.item.done"
    assert done_item["previous_item_id"] == call_item["id"]  # the output follows its call
    backends.tts_hang = False
    backends.tts_release.set()
    first = await driver.wait_for("response.done")
    assert first["response"]["status"] == "completed"
    assert [i["type"] for i in first["response"]["output"]] == ["message", "function_call"]
    backends.replies[1] = "It is sunny in Paris."
    await driver.send({"type": "response.create"})
    await driver.wait_for("response.done", count=2)
    messages = backends.llm_calls[1].args["messages"]
    assert [m["role"] for m in messages[1:]] == ["user", "assistant", "assistant", "tool"]
    assert messages[2]["content"] == "One moment." and messages[3]["tool_calls"][0]["id"] == "call_1"
    assert messages[4] == {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
    driver.assert_client_order()


@pytest.mark.parametrize("answered_first", [True, False])
async def test_a_call_done_before_a_barge_in_stays_complete_and_answerable(filler_driver, backends, answered_first):
    driver = filler_driver
    if answered_first:
        await answer(driver)
    await driver.send({"type": "response.cancel"})  # as speech starting over the filler does
    done = await driver.wait_for("response.done")
    assert done["response"]["status"] == "cancelled"
    message, function_call = done["response"]["output"]
    assert (message["status"], function_call["status"]) == ("incomplete", "completed")
    assert function_call["arguments"] == '{"city": "Paris"}'
    if not answered_first:
        await answer(driver)
    assert driver.errors() == []
    backends.tts_hang = False
    backends.tts_release.set()
    await driver.send({"type": "response.create"})
    await driver.wait_for("response.done", count=2)
    assert backends.llm_calls[1].args["messages"][-1] == {"role": "tool", "tool_call_id": "call_1",
                                                          "content": "sunny"}


async def test_deleting_a_call_or_its_output_keeps_calls_and_prompt_consistent(filler_driver, backends):
    driver = filler_driver
    backends.tts_hang = False
    backends.tts_release.set()
    await driver.wait_for("response.done")
    call_item = next(i for i in driver.of_type("response.done")[0]["response"]["output"] if i["type"] == "function_call")
    output_item = (await answer(driver))["item"]
    # No output: the call may be answered again, and is not in the prompt without one.
    await driver.send({"type": "conversation.item.delete", "item_id": output_item["id"]})
    await driver.send({"type": "response.create"})
    await driver.wait_for("response.done", count=2)
    assert not any(m.get("tool_calls") or m["role"] == "tool" for m in backends.llm_calls[1].args["messages"])
    await answer(driver, "rainy")
    assert driver.errors() == []
    # No call: its output is left out, and another output for it is an unknown call's.
    await driver.send({"type": "conversation.item.delete", "item_id": call_item["id"]})
    await driver.send({"type": "response.create"})
    await driver.wait_for("response.done", count=3)
    assert not any(m.get("tool_calls") or m["role"] == "tool" for m in backends.llm_calls[2].args["messages"])
    await answer(driver)
    assert await codes(driver) == ["unknown_call_id"]
    driver.assert_client_order()


async def test_speech_over_the_filler_leaves_the_done_call_answerable(filler_driver, backends, short_speech_24k):
    driver = filler_driver
    backends.tts_hang = False
    backends.reply = "Okay."
    await driver.append(short_speech_24k.pcm)  # the user talks over "One moment."
    first = await driver.wait_for("response.done")
    assert first["response"]["status_details"]["reason"] == "turn_detected"
    assert [i["status"] for i in first["response"]["output"]] == ["incomplete", "completed"]
    backends.tts_release.set()
    await driver.wait_for("response.done", count=2)  # the reply to what the user said
    await answer(driver)
    assert driver.errors() == []
    driver.assert_client_order()


async def test_an_engine_without_function_calls_refuses_tools_instead_of_dropping_them(make_driver, backends):
    """llm.scheduler "serial" (one llama.cpp context, text only): tools in session.update or
    response.create are refused with unsupported_feature; the session goes on answering."""
    from quillman.config import LlmConfig

    d = await make_driver(llm=LlmConfig(scheduler="serial"))
    tool = {"type": "function", "name": "get_time", "parameters": {"type": "object", "properties": {}}}
    await d.send({"type": "session.update", "event_id": "ev_tools", "session": {"tools": [tool]}})
    await d.send({"type": "response.create", "event_id": "ev_resp", "response": {"tools": [tool]}})
    await d.settle()
    refused = {e["event_id"]: (e["code"], e["param"]) for e in d.errors()}
    assert refused == {"ev_tools": ("unsupported_feature", "session.tools"),
                       "ev_resp": ("unsupported_feature", "response.tools")}, refused
    done = await d.text_turn("hello")
    assert done["response"]["status"] == "completed"
