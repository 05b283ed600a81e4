"""Function calling in a session: the client's tool definitions, and the calls the model made.

The tools come from ``session.tools`` / ``response.tools`` (Realtime function tools, JSON Schema
``parameters``) and are checked when they arrive, so that a bad definition gets an ``error``
then (``invalid_tool``, ``tools_too_large``, ``invalid_tool_choice``) instead of failing a turn
later. The client runs each call and answers with a ``function_call_output`` item naming its
``call_id``: :class:`FunctionCalls` knows which calls exist, and refuses outputs for unknown
ones (``unknown_call_id``) and for calls of a cancelled response (``function_call_cancelled``).

In the conversation a call is an assistant message with OpenAI-chat ``tool_calls`` and its output
a ``tool`` message; :func:`tool_history` keeps the prompt valid for any model: a call is shown
only with its output, right after it (a call whose output never came, or came after later
turns, does not break the history).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from quillman import errors
from quillman.engines.llm.base import Message, Tool, ToolChoice
from quillman.engines.llm.tools import valid_tool_name

if TYPE_CHECKING:
    from quillman.pipeline.mcp_spec import McpServerSpec
    from quillman.pipeline.mcp_access import Access

MAX_TOOLS = 32
MAX_TOOLS_JSON_BYTES = 32 * 1024  # all definitions together: they are part of every prompt


def parse_tools(raw: list[dict] | None, where: str) -> tuple[Tool, ...]:
    """Realtime function tool definitions -> engine tools; refused with a stable code when
    unusable. MCP tools (``type: "mcp"``) are left to :func:`parse_mcp_tools`."""
    if not raw:
        return ()
    param = f"{where}.tools"
    if not all(isinstance(definition, dict) for definition in raw):
        raise errors.InvalidTool("each tool must be an object", param=param)
    if len(raw) > MAX_TOOLS:
        raise errors.ToolsTooLarge(f"{len(raw)} tools; at most {MAX_TOOLS} are accepted", param=param)
    size = len(json.dumps(raw))
    if size > MAX_TOOLS_JSON_BYTES:
        raise errors.ToolsTooLarge(f"the tool definitions have {size} bytes of JSON; at most "
                                   f"{MAX_TOOLS_JSON_BYTES} are accepted", param=param)
    tools = tuple(_tool(definition, f"{param}[{index}]") for index, definition in enumerate(raw)
                  if definition.get("type") != "mcp")
    names = [tool.name for tool in tools]
    if len(set(names)) != len(names):
        raise errors.InvalidTool("tool names must be unique", param=param)
    return tools


def _tool(definition: dict, param: str) -> Tool:
    if definition.get("type", "function") != "function":
        raise errors.UnsupportedFeature(
            f"tools of type {str(definition.get('type'))[:40]!r} are not supported; use 'function' or 'mcp'",
            param=f"{param}.type")
    name = definition.get("name")
    if not valid_tool_name(name):
        raise errors.InvalidTool("a tool needs a name of 1-64 letters, digits, '_' or '-'", param=f"{param}.name")
    description = definition.get("description") or ""
    if not isinstance(description, str):
        raise errors.InvalidTool("the tool's description must be a string", param=f"{param}.description")
    parameters = definition.get("parameters") or {"type": "object", "properties": {}}
    check_schema(parameters, f"{param}.parameters")
    return Tool(name=name, description=description, parameters=parameters)


def parse_mcp_tools(raw: list[dict] | None, where: str, access: "Access") -> tuple["McpServerSpec", ...]:
    """The ``type: "mcp"`` entries of a tools list, checked against the operator's allowlist."""
    from quillman.pipeline.mcp_spec import parse_mcp_tool

    return tuple(parse_mcp_tool(definition, f"{where}.tools[{index}]", access)
                 for index, definition in enumerate(raw or ()) if isinstance(definition, dict)
                 and definition.get("type") == "mcp")


def check_schema(schema: Any, param: str) -> None:
    import jsonschema

    if not isinstance(schema, dict) or schema.get("type", "object") != "object":
        raise errors.InvalidTool("parameters must be a JSON Schema of type 'object'", param=param)
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise errors.InvalidTool(f"parameters is not a valid JSON Schema: {exc.message}"[:300],
                                 param=param) from None
    if "$ref" in json.dumps(schema) and "$defs" not in schema and "definitions" not in schema:
        raise errors.InvalidTool("parameters may only $ref its own $defs", param=param)


MCP_CHOICE = "mcp:"  # a choice of an MCP tool: "mcp:<server_label>:<name>" (name may be empty)


def mcp_choice(choice: ToolChoice) -> tuple[str, str | None] | None:
    """(server_label, tool name or None) of an MCP tool choice, else None."""
    if not choice.startswith(MCP_CHOICE):
        return None
    label, _, name = choice[len(MCP_CHOICE):].partition(":")
    return label, name or None


def parse_tool_choice(choice: Any, tools: tuple[Tool, ...], where: str,
                      mcp_labels: tuple[str, ...] = ()) -> ToolChoice:
    param = f"{where}.tool_choice"
    if choice is None or choice == "auto":
        return "auto"
    if isinstance(choice, dict) and choice.get("type") == "mcp":
        label, name = choice.get("server_label"), choice.get("name")
        if label not in mcp_labels:
            raise errors.InvalidToolChoice(f"tool_choice names MCP server {str(label)[:64]!r}, which is not one "
                                           "of the tools", param=param)
        if name is not None and not isinstance(name, str):
            raise errors.InvalidToolChoice("tool_choice.name must be a string", param=param)
        return f"{MCP_CHOICE}{label}:{name or ''}"
    if choice in ("none", "required"):
        if choice == "required" and not tools and not mcp_labels:
            raise errors.InvalidToolChoice("tool_choice 'required' needs tools", param=param)
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = choice.get("name")
        if name not in {tool.name for tool in tools}:
            raise errors.InvalidToolChoice(f"tool_choice names {str(name)[:64]!r}, which is not one of "
                                           "the tools", param=param)
        return name
    raise errors.InvalidToolChoice("tool_choice must be 'auto', 'none', 'required' or "
                                   '{"type": "function", "name": ...}', param=param)


def choice_wire(choice: ToolChoice) -> str | dict:
    picked = mcp_choice(choice)
    if picked is not None:
        label, name = picked
        return {"type": "mcp", "server_label": label, **({"name": name} if name else {})}
    return choice if choice in ("auto", "none", "required") else {"type": "function", "name": choice}


def call_message(call_id: str, name: str, arguments: str) -> Message:
    return {"role": "assistant", "content": "",
            "tool_calls": [{"id": call_id, "type": "function",
                            "function": {"name": name, "arguments": arguments}}]}


def output_message(call_id: str, output: str) -> Message:
    return {"role": "tool", "tool_call_id": call_id, "content": output}


class FunctionCalls:
    """The calls the model made in this session: "pending" (from its arguments' done event on:
    the client runs it), "answered", or "cancelled" (its response ended before its arguments
    were done: an output for it is refused)."""

    def __init__(self, max_calls: int = 256) -> None:
        self._state: dict[str, str] = {}
        self._max = max_calls

    def made(self, call_id: str, cancelled: bool) -> None:
        self._state[call_id] = "cancelled" if cancelled else "pending"
        while len(self._state) > self._max:  # the oldest are forgotten
            del self._state[next(iter(self._state))]

    def check(self, call_id: str) -> None:
        """Raise the error the client gets for an output for ``call_id``, if it is refused."""
        state = self._state.get(call_id)
        if state == "cancelled":
            raise errors.FunctionCallCancelled(
                f"call {call_id!r} belongs to a cancelled response; its output is not used",
                param="item.call_id")
        if state != "pending":
            raise errors.UnknownCallId(f"no pending function call has call_id {call_id[:64]!r}",
                                       param="item.call_id")

    def answer(self, call_id: str) -> None:
        """Accept an output for ``call_id`` (or raise the error the client gets)."""
        self.check(call_id)
        self._state[call_id] = "answered"

    def forget(self, call_id: str) -> None:
        """Its function_call item was deleted: an output for it is an unknown call's."""
        self._state.pop(call_id, None)

    def reopen(self, call_id: str) -> None:
        """Its output was deleted: the call may be answered again."""
        if self._state.get(call_id) == "answered":
            self._state[call_id] = "pending"


def tool_history(history: list[Message]) -> list[Message]:
    """The history with each call next to its output, and calls without one (or outputs
    without their call) left out: valid for every chat template and OpenAI-style server."""
    outputs = {m["tool_call_id"]: m for m in history if m["role"] == "tool"}
    shown: list[Message] = []
    for message in history:
        if message["role"] == "tool":
            continue  # placed after its call
        calls = [c for c in message.get("tool_calls") or () if c["id"] in outputs]
        if message.get("tool_calls"):
            if not calls:
                if message.get("content"):
                    shown.append({"role": "assistant", "content": message["content"]})
                continue
            shown.append({**message, "tool_calls": calls})
            shown.extend(outputs[c["id"]] for c in calls)
            continue
        shown.append(message)
    return shown


def message_chars(message: Message) -> int:
    """A message's size in the prompt budget (a call's arguments count too)."""
    calls = message.get("tool_calls") or ()
    return len(message.get("content") or "") + sum(
        len(c["function"]["name"]) + len(c["function"]["arguments"]) + 16 for c in calls)
