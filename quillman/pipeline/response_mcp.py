"""The MCP tools of one response: the tools its servers list for the model, the calls the
model made of them run by the server (after the client's approval where the server asks for
it), and the follow-up request that gives the model their results.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace

from quillman import protocol
from quillman.config import McpConfig
from quillman.engines.llm.base import GenerationRequest
from quillman.pipeline.mcp_connection import ListedTool
from quillman.pipeline.mcp_servers import Approvals, McpServers
from quillman.pipeline.response_calls import McpCall
from quillman.pipeline.response_output import ResponseOutput
from quillman.pipeline.settings import ResponseSettings
from quillman.pipeline.timings import Timings
from quillman.pipeline.tools import call_message, mcp_choice, output_message


class McpCallRunner:
    """Lists a response's MCP tools and runs the calls its model makes of them."""

    def __init__(self, settings: ResponseSettings, servers: McpServers | None, approvals: Approvals | None,
                 config: McpConfig, output: ResponseOutput, timings: Timings, seen: asyncio.Event):
        self.settings = settings
        self.servers = servers  # the session's connections
        self.approvals = approvals  # the session's pending approvals
        self.config = config  # the operator's limits
        self.output = output
        self.timings = timings
        self._seen = seen  # set once the response is visible
        self._tools: dict[str, ListedTool] = {}  # by the name the LLM calls it
        self._runs = 0

    def tool(self, engine_name: str | None) -> ListedTool | None:
        """The MCP tool the model calls by this name, if it is one."""
        return self._tools.get(engine_name or "")

    async def engine_tools(self) -> tuple[tuple, str]:
        """The engine's tools: the function tools and the MCP servers' (their listings awaited),
        and the choice with an MCP tool choice resolved to the name the LLM calls it by."""
        settings = self.settings
        tools, choice = settings.tools, settings.tool_choice
        listed: list[ListedTool] = []
        if settings.mcp and self.servers is not None and choice != "none":
            listed = await self.servers.tools_for(settings.mcp, {tool.name for tool in tools})
        self._tools = {tool.engine_name: tool for tool in listed}
        tools = tools + tuple(tool.engine_tool() for tool in listed)
        picked = mcp_choice(choice)
        if picked is not None:
            label, name = picked
            matching = [t for t in listed if t.server_label == label and (name is None or t.name == name)]
            # A tool its server did not list (or a listing that failed, reported then): the
            # model decides among what is there rather than the turn failing.
            choice = matching[0].engine_name if len(matching) == 1 else "required" if matching else "auto"
        if choice == "required" and not tools:
            choice = "auto"
        return tools, choice

    def follow_up(self, request: GenerationRequest, calls: list[McpCall]) -> GenerationRequest:
        """``request`` with the calls and their results: the model answers from them."""
        from quillman.pipeline.conversation import mcp_result_text

        messages = list(request.messages)
        for call in calls:
            arguments = "".join(call.arguments) or "{}"
            messages.append(call_message(call.item_id, call.tool.engine_name, arguments))
            messages.append(output_message(call.item_id, mcp_result_text(call.item())))
        # After a result the model answers in words, or (a model that decides) calls again
        # while the cap allows; a forced choice applied to the first call only.
        capped = self._runs >= self.config.max_calls_per_response
        return replace(request, messages=messages, tool_choice="none" if capped else "auto", deadline=time.time())

    async def run(self, calls: list[McpCall]) -> None:
        await self._seen.wait()  # a speculation's calls run only once the turn is certain
        for call in calls:
            if self._runs >= self.config.max_calls_per_response:
                self.output.end_mcp_call(call, protocol.McpToolExecutionError(
                    message=f"at most {self.config.max_calls_per_response} MCP calls run per response"))
                continue
            self._runs += 1
            await self._run_one(call)

    async def _run_one(self, call: McpCall) -> None:
        tool = call.tool
        spec = next((s for s in self.settings.mcp if s.label == tool.server_label), None)
        connection = self.servers.connection(tool.server_label) if self.servers is not None else None
        try:
            arguments = json.loads("".join(call.arguments) or "{}")
        except json.JSONDecodeError:
            arguments = None
        if spec is None or connection is None or not isinstance(arguments, dict):
            self.output.end_mcp_call(call, protocol.McpToolExecutionError(
                message="the call's arguments are not a JSON object" if spec is not None
                else "the MCP server is gone"))
            return
        if spec.needs_approval(tool.name, tool.read_only):
            approved, reason = await self._approval(call)
            if not approved:
                self.output.end_mcp_call(call, protocol.McpToolExecutionError(
                    message="the user did not approve this call" + (f": {reason}" if reason else "")))
                return
        self.output.mcp_call_running(call)
        result = await connection.call(tool.name, arguments)
        self.timings.mcp_call_ms = (self.timings.mcp_call_ms or 0.0) + result.tool_ms
        call.output, call.error = result.output, result.error
        self.output.end_mcp_call(call)

    async def _approval(self, call: McpCall) -> tuple[bool, str | None]:
        """An ``mcp_approval_request`` item, then the client's answer (no answer in time: no)."""
        if self.approvals is None:
            return False, None
        request_id = protocol.new_id("mcpr")
        answer = self.approvals.expect(request_id)
        self.output.request_approval(call, request_id)
        timeout_s = self.config.approval_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                return await answer
        except TimeoutError:
            return False, f"no answer within {timeout_s:g} s"
        finally:
            self.approvals.drop(request_id)
