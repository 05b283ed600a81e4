"""MCP tools in a session (fake LLM, the real SDK client against an in-process MCP server): the
GA events and items, approvals, misbehaving tools, limits, refusals, cancellation, secrets."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
from openai.types.realtime import RealtimeServerEvent
from pydantic import TypeAdapter

from quillman.config import McpConfig
from quillman.engines.llm.base import ToolCallDelta
from quillman_bench.mcp_server import build_server

URL = "http://127.0.0.1:18999/mcp"
SECRET = "sk-do-not-leak-0123456789"
SERVER_EVENT = TypeAdapter(RealtimeServerEvent)


def mcp_tool(**overrides) -> dict:
    return {"type": "mcp", "server_label": "weather", "server_url": URL, "require_approval": "never",
            "allowed_tools": ["get_weather", "get_population"], "authorization": SECRET,
            "headers": {"X-Api-Key": SECRET}, **overrides}


def call(index: int, name: str, arguments: str) -> list[ToolCallDelta]:
    return [ToolCallDelta(index=index, call_id=f"call_{index}", name=name), ToolCallDelta(index=index, arguments=arguments)]


class InProcess:
    """Connects the SDK's Client to the test server in-process (no HTTP); counts connections."""

    def __init__(self) -> None:
        self.opened = 0
        self.closed = 0

    async def __call__(self, connection, stack: contextlib.AsyncExitStack):
        from mcp import Client

        client = await stack.enter_async_context(Client(build_server()))
        self.opened += 1
        stack.callback(self._closed)
        return client

    def _closed(self) -> None:
        self.closed += 1


@pytest.fixture
def connector() -> InProcess:
    return InProcess()


@pytest.fixture
def mcp_driver(make_driver, session_config, connector):
    async def make(tool: dict | None = None, config: McpConfig | None = None, **session) -> object:
        driver = await make_driver(session_config(**session), mcp=config or McpConfig(
            allowed_servers=["http://127.0.0.1:18999"], call_timeout_s=0.5, approval_timeout_s=0.5,
            max_output_chars=200), mcp_connector=connector)
        await driver.send({"type": "session.update", "session": {
            "output_modalities": ["text"], "tools": [tool or mcp_tool()],
            "tool_choice": {"type": "mcp", "server_label": "weather", "name": (tool or {}).get("_name", "get_weather")}}})
        await driver.wait_for("mcp_list_tools.completed", fail_on_request_error=True)
        return driver
    return make


def strict(driver) -> None:
    """Every event validates against the openai SDK's server event union."""
    for event in driver.events:
        SERVER_EVENT.validate_python(event)


async def test_a_forced_mcp_call_lists_calls_and_answers_from_the_output(mcp_driver, backends, connector):
    driver = await mcp_driver()
    listed = [e for e in driver.of_type("conversation.item.done") if e["item"]["type"] == "mcp_list_tools"][0]
    assert [t["name"] for t in listed["item"]["tools"]] == ["get_weather", "get_population"]
    assert listed["item"]["tools"][0]["input_schema"]["properties"]["city"]
    backends.replies = {0: "", 1: "It is sunny in Paris."}
    backends.tool_calls[0] = call(0, "get_weather", '{"city": "Paris"}')
    start = len(driver.events)
    done = await driver.text_turn("What's the weather in Paris?")
    assert done["response"]["status"] == "completed", done
    request = backends.llm_calls[0].args["request"]
    assert request.tool_choice == "get_weather" and {t.name for t in request.tools} == {"get_weather", "get_population"}
    output = done["response"]["output"]
    assert [item["type"] for item in output] == ["mcp_call", "message"]
    assert output[0]["output"] == "The weather in Paris is sunny and 18 degrees." and "error" not in output[0]
    assert output[0]["server_label"] == "weather" and output[0]["name"] == "get_weather"
    # The answer's generation saw the call and its output, and could not be forced again.
    follow = backends.llm_calls[1].args["request"]
    assert follow.messages[-1] == {"role": "tool", "tool_call_id": output[0]["id"],
                                   "content": "The weather in Paris is sunny and 18 degrees."}
    assert follow.tool_choice == "auto"
    order = [t for t in driver.types(start) if t.startswith("response.")]
    assert order[:6] == ["response.created", "response.output_item.added", "response.mcp_call_arguments.delta",
                         "response.mcp_call_arguments.done", "response.mcp_call.in_progress",
                         "response.mcp_call.completed"]
    assert order[-1] == "response.done"
    strict(driver)
    # The conversation holds the call with its output: the next turn's prompt has both.
    backends.replies[2] = "Yes."
    await driver.text_turn("Thanks!")
    messages = backends.llm_calls[2].args["messages"]
    assert any(m.get("tool_call_id") == output[0]["id"] for m in messages)
    assert connector.opened == 1  # one connection, reused
    driver.assert_client_order()


async def test_approval_approved_runs_the_call(mcp_driver, backends):
    driver = await mcp_driver(mcp_tool(require_approval="always"))
    backends.replies = {0: "", 1: "It is sunny."}
    backends.tool_calls[0] = call(0, "get_weather", '{"city": "Paris"}')
    await driver.ask("Weather in Paris?")
    request = (await driver.wait_for("response.output_item.done"))["item"]
    assert request["type"] == "mcp_approval_request" and request["name"] == "get_weather"
    assert not driver.of_type("response.mcp_call.in_progress")  # waits for the answer
    await driver.send({"type": "conversation.item.create", "item": {
        "type": "mcp_approval_response", "approval_request_id": request["id"], "approve": True}})
    done = await driver.wait_for("response.done")
    mcp_call = next(item for item in done["response"]["output"] if item["type"] == "mcp_call")
    assert mcp_call["approval_request_id"] == request["id"] and "sunny" in mcp_call["output"]
    assert [i["type"] for i in done["response"]["output"]] == ["mcp_call", "mcp_approval_request", "message"]
    strict(driver)
    # Answered once: a second answer is refused.
    await driver.send({"type": "conversation.item.create", "item": {
        "type": "mcp_approval_response", "approval_request_id": request["id"], "approve": True}})
    await driver.drain()
    assert driver.errors()[-1]["code"] == "unknown_approval_request"


@pytest.mark.parametrize("answer", ["deny", "timeout"])
async def test_approval_denied_or_unanswered_refuses_the_call(mcp_driver, backends, answer):
    driver = await mcp_driver(mcp_tool(require_approval={"always": {"tool_names": ["get_weather"]}}))
    backends.replies = {0: "", 1: "I could not check."}
    backends.tool_calls[0] = call(0, "get_weather", '{"city": "Paris"}')
    await driver.ask("Weather in Paris?")
    request = (await driver.wait_for("response.output_item.done"))["item"]
    if answer == "deny":
        await driver.send({"type": "conversation.item.create", "item": {
            "type": "mcp_approval_response", "approval_request_id": request["id"], "approve": False,
            "reason": "not now"}})
    done = await driver.wait_for("response.done")
    mcp_call = done["response"]["output"][0]
    assert mcp_call["type"] == "mcp_call" and "output" not in mcp_call
    assert "not approve" in mcp_call["error"]["message"]
    assert not driver.of_type("response.mcp_call.in_progress") and driver.of_type("response.mcp_call.failed")
    assert done["response"]["status"] == "completed" and done["response"]["output"][-1]["type"] == "message"
    assert "not approve" in backends.llm_calls[1].args["messages"][-1]["content"]
    strict(driver)


@pytest.mark.parametrize("tool, error", [
    ("broken_weather", "tool_execution_error"),
    ("slow_weather", "tool_execution_error"),
])
async def test_a_failing_or_hanging_tool_ends_its_call_with_an_error(mcp_driver, backends, tool, error):
    driver = await mcp_driver(mcp_tool(allowed_tools=[tool], _name=tool))
    backends.replies = {0: "", 1: "Sorry, I could not get it."}
    backends.tool_calls[0] = call(0, tool, '{"city": "Paris"}')
    done = await driver.text_turn("Weather in Paris?")
    mcp_call = done["response"]["output"][0]
    assert mcp_call["error"]["type"] == error and "output" not in mcp_call
    if tool == "slow_weather":
        assert "within 0.5 s" in mcp_call["error"]["message"]
    assert done["response"]["status"] == "completed"
    assert backends.llm_calls[1].args["messages"][-1]["content"].startswith("Error: ")
    strict(driver)


async def test_too_much_output_is_cut_to_the_cap(mcp_driver, backends):
    driver = await mcp_driver(mcp_tool(allowed_tools=["huge_weather"], _name="huge_weather"))
    backends.replies = {0: "", 1: "Sunny."}
    backends.tool_calls[0] = call(0, "huge_weather", '{"city": "Paris"}')
    done = await driver.text_turn("Weather in Paris?")
    output = done["response"]["output"][0]["output"]
    assert len(output) <= 200 and "output cut at 200" in output
    assert len(backends.llm_calls[1].args["messages"][-1]["content"]) <= 200


async def test_calls_per_response_are_capped(mcp_driver, backends):
    driver = await mcp_driver(config=McpConfig(allowed_servers=["127.0.0.1"], max_calls_per_response=1))
    backends.replies = {0: "", 1: "Done."}
    backends.tool_calls[0] = [*call(0, "get_weather", '{"city": "Paris"}'), *call(1, "get_weather", '{"city": "Rome"}')]
    done = await driver.text_turn("Weather in Paris and Rome?")
    first, second = done["response"]["output"][:2]
    assert "output" in first and "at most 1 MCP calls" in second["error"]["message"]
    assert backends.llm_calls[1].args["request"].tool_choice == "none"


async def slow_call_in_progress(mcp_driver, backends):
    """A session whose response is waiting in a call of ``slow_weather`` (30 s allowed)."""
    driver = await mcp_driver(mcp_tool(allowed_tools=["slow_weather"], _name="slow_weather"),
                              config=McpConfig(allowed_servers=["127.0.0.1"], call_timeout_s=30))
    backends.replies = {0: ""}
    backends.tool_calls[0] = call(0, "slow_weather", '{"city": "Paris"}')
    await driver.ask("Weather?")
    await driver.wait_for("response.mcp_call.in_progress")
    return driver


async def test_barge_in_cancels_the_running_call(mcp_driver, backends):
    driver = await slow_call_in_progress(mcp_driver, backends)
    await driver.send({"type": "response.cancel"})
    done = await driver.wait_for("response.done")
    assert done["response"]["status"] == "cancelled"
    assert "ended before" in done["response"]["output"][0]["error"]["message"]
    strict(driver)


async def test_closing_the_session_closes_its_connections(mcp_driver, connector):
    driver = await mcp_driver()
    assert connector.opened == 1 and connector.closed == 0
    await driver.stop()
    assert connector.closed == 1


async def test_secrets_never_reach_the_events(mcp_driver, backends, caplog):
    caplog.set_level("DEBUG")
    driver = await mcp_driver()
    backends.replies = {0: "", 1: "Sunny."}
    backends.tool_calls[0] = call(0, "get_weather", '{"city": "Paris"}')
    await driver.text_turn("Weather in Paris?")
    session = driver.of_type("session.updated")[-1]["session"]
    assert session["tools"][0]["server_label"] == "weather" and "headers" not in session["tools"][0]
    assert SECRET not in json.dumps(driver.events) and SECRET not in caplog.text
    assert SECRET not in repr(driver.session.settings)


@pytest.mark.parametrize("config, tool, code, param", [
    (McpConfig(), {}, "mcp_disabled", "session.tools[0].type"),
    (None, {"server_url": "https://evil.example.com/mcp"}, "mcp_server_not_allowed", "session.tools[0].server_url"),
    (McpConfig(allowed_servers=["*.example.com"]), {"server_url": "http://10.0.0.7/mcp"}, "mcp_server_not_allowed",
     "session.tools[0].server_url"),
    (McpConfig(allowed_servers=["10.0.0.0/8", "169.254.169.254:80"]), {"server_url": "http://169.254.169.254:81/x"},
     "mcp_server_not_allowed", "session.tools[0].server_url"),
    (McpConfig(allowed_servers=["localhost", "mcp.test"]), {"server_url": "http://[::ffff:127.0.0.1]/mcp"},
     "mcp_server_not_allowed", "session.tools[0].server_url"),
    (None, {"server_url": "http://user:pw@127.0.0.1:18999/mcp"}, "invalid_mcp_tool", "session.tools[0].server_url"),
    (None, {"server_label": "bad label"}, "invalid_mcp_tool", "session.tools[0].server_label"),
    (None, {"connector_id": "connector_gmail"}, "unsupported_feature", "session.tools[0].connector_id"),
    (None, {"require_approval": "sometimes"}, "invalid_mcp_tool", "session.tools[0].require_approval"),
    (None, {"headers": {"Host": "internal.example"}}, "invalid_mcp_tool", "session.tools[0].headers"),
    (None, {"headers": {"X-A": "1\r\nX-B: 2"}}, "invalid_mcp_tool", "session.tools[0].headers"),
])
async def test_refused_tools_change_nothing(make_driver, session_config, connector, config, tool, code, param):
    driver = await make_driver(session_config(), mcp=config or McpConfig(allowed_servers=["http://127.0.0.1:18999"]),
                               mcp_connector=connector)
    await driver.send({"type": "session.update", "session": {"tools": [mcp_tool(**tool)]}})
    await driver.drain()
    [error] = driver.errors()
    assert (error["code"], error["param"]) == (code, param)
    assert driver.session.settings.mcp == () and connector.opened == 0
    assert SECRET not in json.dumps(driver.events)


async def test_a_name_that_resolves_to_loopback_is_refused_after_dns(make_driver, session_config, connector):
    driver = await make_driver(session_config(), mcp=McpConfig(allowed_servers=["localhost"]), mcp_connector=connector)
    await driver.send({"type": "session.update", "session": {
        "tools": [mcp_tool(server_url="http://localhost:18999/mcp")]}})
    failed = await driver.wait_for("mcp_list_tools.failed")
    [error] = driver.errors()
    assert error["code"] == "mcp_server_private_address" and error["param"] == "session.tools[0].server_url"
    assert connector.opened == 0
    listing = [e for e in driver.of_type("conversation.item.done") if e["item"]["id"] == failed["item_id"]]
    assert listing[0]["item"]["tools"] == []
    # A turn still gets its answer, without the tools.
    done = await driver.text_turn("Hello?")
    assert done["response"]["status"] == "completed"
    strict(driver)


async def test_unknown_approval_ids_are_refused(mcp_driver):
    driver = await mcp_driver()
    await driver.send({"type": "conversation.item.create", "item": {
        "type": "mcp_approval_response", "approval_request_id": "mcpr_nope", "approve": True}})
    await driver.drain()
    assert [(e["code"], e["param"]) for e in driver.errors()] == [("unknown_approval_request", "item.approval_request_id")]


async def test_a_speculation_runs_no_call_before_the_turn_ends(mcp_driver, backends):
    # (response-level) a response held behind its gate waits before calling anything.
    from quillman.pipeline.response import Response

    driver = await mcp_driver()
    response = driver.session.responses.new_response(None, speculative=True, options=None, origin=0.0)
    assert isinstance(response, Response) and not response._seen.is_set()  # noqa: SLF001
    response.open_gate(0.0)
    assert response._seen.is_set()  # noqa: SLF001
    await asyncio.sleep(0)


async def test_a_malformed_approval_response_is_an_invalid_event(mcp_driver):
    driver = await mcp_driver()
    await driver.send({"type": "conversation.item.create", "item": {
        "type": "mcp_approval_response", "approval_request_id": "mcpr_x", "approve": "maybe"}})
    await driver.drain()
    assert [(e["code"], e["param"]) for e in driver.errors()] == [("invalid_event", "item.approve")]


async def test_mcp_tools_given_for_one_response_only(make_driver, session_config, backends, connector):
    driver = await make_driver(session_config(), mcp=McpConfig(allowed_servers=["127.0.0.1"]), mcp_connector=connector)
    backends.replies = {0: "", 1: "Sunny."}
    backends.tool_calls[0] = call(0, "get_population", '{"city": "Paris"}')
    done = await driver.text_turn("How many people live in Paris?", output_modalities=["text"],
                                  tools=[mcp_tool()], tool_choice={"type": "mcp", "server_label": "weather"})
    assert done["response"]["output"][0]["output"].startswith("About 2 million")
    assert backends.llm_calls[0].args["request"].tool_choice == "required"  # any of that server's tools
    assert driver.session.settings.mcp == ()  # the session's tools are unchanged
    strict(driver)


def test_engines_that_cannot_run_tools_refuse_mcp():
    from quillman import errors, protocol
    from quillman.config import LlmConfig, SessionConfig, VadConfig
    from quillman.pipeline.mcp_access import Access
    from quillman.engines.loader import language_model_capabilities
    from quillman.pipeline.settings import SessionSettings, response_settings

    access = Access(["127.0.0.1"])
    settings = SessionSettings.initial(SessionConfig(), VadConfig(), ["joe"]).apply(
        protocol.SessionUpdate(tools=[mcp_tool()]), "joe", access)
    for llm in (LlmConfig(backend="vllm"), LlmConfig(scheduler="serial")):
        with pytest.raises(errors.UnsupportedFeature) as refused:
            response_settings(settings, None, SessionConfig(), llm, language_model_capabilities(llm), access)
        assert refused.value.param == "response.tools"


async def test_the_filler_and_the_answer_are_one_spoken_message(mcp_driver, backends):
    driver = await mcp_driver(tool_filler="One moment.")
    await driver.send({"type": "session.update", "session": {"output_modalities": ["audio"]}})
    backends.replies = {0: "", 1: "It is sunny."}
    backends.tool_calls[0] = call(0, "get_weather", '{"city": "Paris"}')
    done = await driver.text_turn("Weather in Paris?")
    message, mcp_call = done["response"]["output"]
    assert mcp_call["type"] == "mcp_call" and "sunny" in mcp_call["output"]
    assert message["content"][0]["transcript"] == "One moment. It is sunny."
    spoken = [c.args["text"] for c in backends.tts_calls]
    assert spoken[0] == "One moment." and "It is sunny." in spoken[-1]  # the filler went out first
    strict(driver)


async def test_a_disconnect_during_a_call_cancels_it_and_closes_the_connection(mcp_driver, backends, connector):
    driver = await slow_call_in_progress(mcp_driver, backends)
    await driver.stop()  # the client goes away: no hang, nothing left running
    assert connector.closed == 1 and not driver.session.mcp.connections
    assert driver.session.response is None or driver.session.response.task.done()
