"""MCP tools end to end: the real graph with MCP enabled, the official openai SDK over a real
socket with espeak speech, and a real MCP server (the SDK's MCPServer) on 127.0.0.1.

Every server event of every test is validated strictly against the SDK's ``RealtimeServerEvent``;
the secrets sent in ``headers`` / ``authorization`` must appear in no event and no server log line.
"""

from __future__ import annotations

import asyncio
import json
import re

import pytest
import yaml
from openai.types.realtime import RealtimeServerEvent
from pydantic import TypeAdapter

from quillman_bench.mcp_server import McpServerProcess
from quillman_bench.speech import spoken_question
from quillman_bench.server_process import ROOT, serve_run
from sdk import Reply, speak
from sdk import sdk_client as client

pytestmark = pytest.mark.e2e

PORT = 8006
SECRET = "mcp-secret-7f3a9c1e5b"
SERVER_EVENT = TypeAdapter(RealtimeServerEvent)
SPEECH = {"format": {"type": "audio/pcm", "rate": 24000},
          "turn_detection": {"type": "server_vad", "silence_duration_ms": 500}}


@pytest.fixture(scope="module")
def mcp_app(mcp_server, tmp_path_factory):
    """The default CPU graph with MCP on: loopback allowed by address, "localhost" only by name
    (so it is refused after DNS), short limits so the misbehaving tools are quick."""
    folder = tmp_path_factory.mktemp("mcp-app")
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    config["applications"][0]["args"]["mcp"] = {
        "allowed_servers": ["127.0.0.1", "localhost"], "call_timeout_s": 3, "approval_timeout_s": 20,
        "max_output_chars": 600, "max_calls_per_response": 2}
    config["applications"][0]["args"]["session"]["tool_filler"] = "One moment."
    path = folder / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    log = folder / "serve.log"
    with serve_run(path, port=PORT, log_path=log) as server:
        yield server.url, log
    assert SECRET not in log.read_text(errors="replace"), "a secret reached the server log"


def tool(url: str, **overrides) -> dict:
    return {"type": "mcp", "server_label": "weather", "server_url": url, "require_approval": "never",
            "allowed_tools": ["get_weather", "get_population"], "server_description": "Weather and city facts.",
            "headers": {"X-Api-Key": SECRET}, "authorization": SECRET, **overrides}


class Session:
    """One SDK connection; every raw frame is kept and strictly validated."""

    def __init__(self, connection):
        self.connection = connection
        self.events: list[dict] = []

    async def next(self, *types: str, timeout: float = 120) -> dict:
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.connection.recv_bytes()
                assert SECRET.encode() not in raw, "a secret reached an event"
                event = json.loads(raw)
                SERVER_EVENT.validate_python(event)  # strict: the SDK's own models
                self.events.append(event)
                if not types or event["type"] in types:
                    return event

    async def update(self, **session) -> dict:
        await self.connection.session.update(session={"type": "realtime", **session})
        return await self.next("session.updated", "error")

    async def listed(self) -> dict:
        """The listing's completed event, then its item (with the tools)."""
        event = await self.next("mcp_list_tools.completed", "mcp_list_tools.failed", "error")
        assert event["type"] == "mcp_list_tools.completed", event
        while True:
            done = await self.next("conversation.item.done")
            if done["item"]["id"] == event["item_id"]:
                return done["item"]

    async def text_turn(self, text: str, **response) -> tuple[dict, str, int]:
        """A user text item and a response, until that response is done."""
        await self.connection.conversation.item.create(item={
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]})
        await self.connection.response.create(**({"response": response} if response else {}))
        return await self.until_done()

    async def until_done(self) -> tuple[dict, str, int]:
        reply = Reply()
        while not reply.see(await self.next()):
            pass
        return reply.response, reply.transcript, reply.audio_bytes

    def of_type(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["type"] == kind]


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def uses_output(reply: str, output: str) -> bool:
    """The reply repeats something only the tool knew (its sky or temperature)."""
    facts = words(output) - {"the", "weather", "in", "is", "and", "about", "people", "live"} - words(
        "What is the weather in Paris")
    return bool(facts & words(reply))


async def spoken_turn(session: Session, question: str, approve: bool | None = None) -> tuple[dict, str, int]:
    stop = asyncio.Event()
    mic = asyncio.create_task(speak(session.connection, spoken_question(question), stop))
    try:
        if approve is not None:
            request = await session.next("response.output_item.done")
            while request["item"]["type"] != "mcp_approval_request":
                request = await session.next("response.output_item.done")
            await session.connection.conversation.item.create(item={
                "type": "mcp_approval_response", "approval_request_id": request["item"]["id"],
                "approve": approve, **({} if approve else {"reason": "not now"})})
        return await session.until_done()
    finally:
        stop.set()
        await mic


FORCED = {"type": "mcp", "server_label": "weather", "name": "get_weather"}


@pytest.mark.parametrize("approval", [None, True, False], ids=["no-approval", "approved", "denied"])
async def test_a_spoken_question_with_a_forced_mcp_tool(mcp_app, mcp_server, approval):
    url, _ = mcp_app
    require = "never" if approval is None else "always"
    async with client(url).realtime.connect(model="quillman") as connection:
        session = Session(connection)
        updated = await session.update(output_modalities=["audio"], audio={"input": SPEECH},
                                       tools=[tool(mcp_server.url(), require_approval=require)], tool_choice=FORCED)
        assert updated["type"] == "session.updated", updated
        shown = updated["session"]["tools"][0]
        assert shown["server_label"] == "weather" and "headers" not in shown and "authorization" not in shown
        listing = await session.listed()
        assert {t["name"] for t in listing["tools"]} == {"get_weather", "get_population"}

        response, transcript, audio = await spoken_turn(session, "What is the weather in Paris?", approval)
        assert response["status"] == "completed", response
        kinds = [item["type"] for item in response["output"]]
        mcp_call = next(item for item in response["output"] if item["type"] == "mcp_call")
        assert mcp_call["name"] == "get_weather" and json.loads(mcp_call["arguments"])["city"]
        assert session.of_type("response.mcp_call_arguments.done")
        assert audio > 24000 * 2 * 0.3 and transcript.strip()  # the reply is spoken
        if approval is False:
            assert "mcp_approval_request" in kinds and "not approve" in mcp_call["error"]["message"]
            assert not session.of_type("response.mcp_call.in_progress")
            return
        assert "weather in" in mcp_call["output"].lower() and "error" not in mcp_call
        assert session.of_type("response.mcp_call.in_progress") and session.of_type("response.mcp_call.completed")
        if approval:
            assert mcp_call["approval_request_id"] and "mcp_approval_request" in kinds
        assert uses_output(transcript, mcp_call["output"]), (transcript, mcp_call["output"])
        assert response["timings"]["mcp_call_ms"] > 0


async def test_headers_and_authorization_reach_the_mcp_server(mcp_app, mcp_server):
    url, _ = mcp_app
    async with client(url).realtime.connect(model="quillman") as connection:
        session = Session(connection)
        await session.update(output_modalities=["text"], tools=[tool(mcp_server.url(), allowed_tools=["check_credentials"])],
                             tool_choice={"type": "mcp", "server_label": "weather", "name": "check_credentials"})
        await session.listed()
        response, _, _ = await session.text_turn("Check Paris.")
        assert response["output"][0]["output"] == "credentials: both present, they match"


@pytest.mark.parametrize("name, error", [("broken_weather", "tool_execution_error"),
                                         ("slow_weather", "tool_execution_error"),
                                         ("huge_weather", None)])
async def test_misbehaving_tools_end_their_call_not_the_turn(mcp_app, mcp_server, name, error):
    url, _ = mcp_app
    async with client(url).realtime.connect(model="quillman") as connection:
        session = Session(connection)
        await session.update(output_modalities=["text"], tools=[tool(mcp_server.url(), allowed_tools=[name])],
                             tool_choice={"type": "mcp", "server_label": "weather", "name": name})
        await session.listed()
        response, transcript, _ = await session.text_turn("Weather in Paris?")
        assert response["status"] == "completed" and transcript.strip()
        mcp_call = response["output"][0]
        assert mcp_call["type"] == "mcp_call"
        if error:
            assert mcp_call["error"]["type"] == error and "output" not in mcp_call
            assert session.of_type("response.mcp_call.failed")
        else:
            assert len(mcp_call["output"]) <= 600 and "output cut at 600" in mcp_call["output"]


async def test_an_mcp_server_that_goes_away_mid_session(mcp_app):
    url, _ = mcp_app
    doomed = McpServerProcess()
    try:
        async with client(url).realtime.connect(model="quillman") as connection:
            session = Session(connection)
            await session.update(output_modalities=["text"], tools=[tool(doomed.url())], tool_choice=FORCED)
            await session.listed()
            doomed.stop()
            response, transcript, _ = await session.text_turn("Weather in Paris?")
            assert response["status"] == "completed" and transcript.strip()
            mcp_call = response["output"][0]
            assert mcp_call["type"] == "mcp_call" and mcp_call["error"]["type"] in ("protocol_error", "http_error")
            # The session goes on: a plain turn is answered.
            response, _, _ = await session.text_turn("Hello!", tool_choice="none")
            assert response["status"] == "completed"
    finally:
        doomed.stop()


async def test_sse_only_servers_work_too(mcp_app, mcp_sse_server):
    url, _ = mcp_app
    async with client(url).realtime.connect(model="quillman") as connection:
        session = Session(connection)
        await session.update(output_modalities=["text"], tools=[tool(mcp_sse_server.url("/sse"))], tool_choice=FORCED)
        await session.listed()
        response, _, _ = await session.text_turn("Weather in Paris?")
        assert "weather in" in response["output"][0]["output"].lower()


async def test_access_is_refused_with_its_code(mcp_app, mcp_server):
    url, _ = mcp_app
    redirector = McpServerProcess("--redirect-to", mcp_server.url(host="localhost"))
    try:
        async with client(url).realtime.connect(model="quillman") as connection:
            session = Session(connection)
            # Outside the allowlist, and a private address it does not name: refused at once.
            for server_url, code in [("https://mcp.example.org/mcp", "mcp_server_not_allowed"),
                                     ("http://10.20.30.40/mcp", "mcp_server_not_allowed"),
                                     ("http://169.254.169.254/latest", "mcp_server_not_allowed")]:
                event = await session.update(tools=[tool(server_url)])
                assert event["type"] == "error" and event["error"]["code"] == code, event
                assert event["error"]["param"] == "session.tools[0].server_url"
            # A name in the allowlist that resolves to loopback, and a redirect to it: refused
            # after DNS / on the redirect, as a failed listing with its code.
            for server_url in [mcp_server.url(host="localhost"), redirector.url()]:
                assert (await session.update(tools=[tool(server_url)]))["type"] == "session.updated"
                failed = await session.next("mcp_list_tools.failed")
                error = await session.next("error")
                assert error["error"]["code"] == "mcp_server_private_address", error
                assert error["error"]["param"] == "session.tools[0].server_url"
                assert failed["item_id"]
    finally:
        redirector.stop()


async def test_a_server_with_mcp_disabled_refuses_mcp_tools(server_url, mcp_server):
    async with client(server_url).realtime.connect(model="quillman") as connection:
        session = Session(connection)
        event = await session.update(tools=[tool(mcp_server.url())])
        assert event["type"] == "error" and event["error"]["code"] == "mcp_disabled", event
        assert event["error"]["param"] == "session.tools[0].type"
