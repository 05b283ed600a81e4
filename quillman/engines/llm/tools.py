"""Function calling for engines that generate raw text (llama.cpp): prompt, grammar, parsing.

Small chat models have no native tool format that their templates render, so the tools are
described in the system prompt and a call is written as
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (the format SmolLM2 and
Hermes-style models were tuned on). A GBNF grammar built from the tools' JSON Schemas makes the
call valid JSON that fits its schema even for a 135M model:

- ``tool_choice`` "required" or a name: the grammar applies from the first token (a call only);
- "auto": a small model almost never starts a call on its own (nor picks the right tool when
  asked to), so :func:`resolve_auto` turns the choice into a forced call of the relevant tool
  or "none" before generation. (A *lazy* grammar, triggered by ``<tool_call>``, constrains a
  call that the model starts on its own, where "auto" reaches the engine.)
- "none" (or no tools): no grammar, the tools are not even shown.

:class:`ToolCallParser` turns the generated text back into text and :class:`ToolCallDelta`\\ s.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import replace
from typing import Any, Iterator

from quillman.engines.llm.base import (
    GenerationRequest,
    Message,
    Tool,
    ToolCallDelta,
    ToolChoice,
)

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
# The lazy grammar starts at the first <tool_call> (llama.cpp feeds it the first group).
LAZY_TRIGGER = r"[\s\S]*?(<tool_call>[\s\S]*)"


def tools_in_use(tools: tuple[Tool, ...], tool_choice: ToolChoice) -> tuple[Tool, ...]:
    """The tools the model may call under this choice (a named choice: only that one)."""
    if not tools or tool_choice == "none":
        return ()
    if tool_choice in ("auto", "required"):
        return tools
    return tuple(tool for tool in tools if tool.name == tool_choice)


def forced(tool_choice: ToolChoice) -> bool:
    return tool_choice not in ("auto", "none")


def tool_system_prompt(tools: tuple[Tool, ...], tool_choice: ToolChoice) -> str:
    """What the system prompt says about the tools (appended to the instructions)."""
    listed = "\n".join(json.dumps({"name": t.name, "description": t.description,
                                   "parameters": t.parameters}) for t in tools)
    when = ("Call the tool now." if forced(tool_choice) else
            "If a tool can answer the user's request, call it instead of answering; "
            "otherwise answer in plain words.")
    return (f"You can call these tools:\n<tools>\n{listed}\n</tools>\n"
            f'To call a tool, reply with {CALL_OPEN}{{"name": "<tool name>", "arguments": '
            f'{{<arguments as JSON>}}}}{CALL_CLOSE}, using the values the user gave. {when}')


def render_messages(messages: list[Message], tools: tuple[Tool, ...],
                    tool_choice: ToolChoice) -> list[Message]:
    """The chat as a plain template renders it: tool calls and results as text in the turns,
    the tools in the system prompt."""
    rendered: list[Message] = []
    for message in messages:
        role, content = message["role"], message.get("content") or ""
        if role == "assistant" and message.get("tool_calls"):
            calls = "".join(f'{CALL_OPEN}{{"name": {json.dumps(c["function"]["name"])}, '
                            f'"arguments": {c["function"]["arguments"] or "{}"}}}{CALL_CLOSE}'
                            for c in message["tool_calls"])
            rendered.append({"role": "assistant", "content": content + calls})
        elif role == "tool":
            # Plain templates know no "tool" role: the result comes back as the user's turn.
            rendered.append({"role": "user", "content": f"<tool_response>{content}</tool_response>\n"
                             "Tell me the answer from this result in one short sentence."})
        else:
            rendered.append({"role": role, "content": content})
    usable = tools_in_use(tools, tool_choice)
    if usable:
        prompt = tool_system_prompt(usable, tool_choice)
        if rendered and rendered[0]["role"] == "system":
            rendered[0] = {"role": "system", "content": f"{rendered[0]['content']}\n\n{prompt}"}
        else:
            rendered.insert(0, {"role": "system", "content": prompt})
    return rendered


def tool_grammar(tools: tuple[Tool, ...]) -> str:
    """GBNF for one or more ``<tool_call>`` blocks, each a call of one of ``tools`` whose
    arguments match its JSON Schema. Raises ValueError for a schema it cannot convert."""
    from llama_cpp.llama_grammar import SchemaConverter

    converter = SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    calls = []
    for index, tool in enumerate(tools):
        parameters = _bounded_strings(tool.parameters or {"type": "object"})
        schema = converter.resolve_refs(parameters, f"tool{index}")
        arguments = converter.visit(schema, f"tool{index}-arguments")
        name = json.dumps(json.dumps(tool.name))  # a GBNF string literal of the JSON string
        calls.append(f'"{{\\"name\\": " {name} ", \\"arguments\\": " {arguments} "}}"')
    # JSON strings hold no raw control characters (a newline in a label would make the call
    # invalid JSON); the converter's char rule allows them.
    rules = converter.format_grammar().replace('char ::= [^"\\\\] |', 'char ::= [^"\\\\\\x7F\\x00-\\x1F] |')
    # One call per generation: a small model asked for "one or more" repeats its call.
    return (f'root ::= "{CALL_OPEN}" call "{CALL_CLOSE}"\n'
            f'call ::= {" | ".join(calls)}\n{rules}')


MAX_STRING_CHARS = 24  # strings without their own maxLength: a call must close within max_tokens


def _bounded_strings(schema: Any) -> Any:
    """The schema with a ``maxLength`` on every string that has none: a small model may write a
    string forever, and a call cut by max_tokens is lost. Stricter, so still the tool's schema."""
    if isinstance(schema, list):
        return [_bounded_strings(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    bounded = {key: _bounded_strings(value) for key, value in schema.items()}
    if bounded.get("type") == "string" and "maxLength" not in bounded and not any(
            key in bounded for key in ("enum", "const", "pattern", "format")):
        bounded["maxLength"] = MAX_STRING_CHARS
    return bounded


class ToolCallParser:
    """Generated text in, text and tool-call deltas out: text outside ``<tool_call>`` blocks
    streams as it comes (held back only while it may be the start of a block); a block becomes
    one call (its ``call_id`` and ``name``, then its ``arguments``) when it closes."""

    def __init__(self) -> None:
        self._buffer = ""
        self._in_call = False
        self.calls = 0

    def feed(self, text: str) -> Iterator[str | ToolCallDelta]:
        self._buffer += text
        while self._buffer:
            if self._in_call:
                end = _close_outside_strings(self._buffer)
                if end < 0:
                    return
                body, self._buffer = self._buffer[:end], self._buffer[end + len(CALL_CLOSE):]
                self._in_call = False
                yield from self._call(body)
                continue
            start = self._buffer.find(CALL_OPEN)
            if start >= 0:
                if start:
                    yield self._buffer[:start]
                self._buffer = self._buffer[start + len(CALL_OPEN):]
                self._in_call = True
                continue
            keep = _partial_suffix(self._buffer, CALL_OPEN)
            if keep < len(self._buffer):
                yield self._buffer[:len(self._buffer) - keep]
                self._buffer = self._buffer[len(self._buffer) - keep:]
            return

    def finish(self) -> Iterator[str | ToolCallDelta]:
        """The end of generation: an unclosed block (cut by max_tokens) is a call if its JSON
        is complete, else dropped; held-back text is text."""
        rest, self._buffer = self._buffer, ""
        if self._in_call:
            self._in_call = False
            yield from self._call(rest)
        elif rest:
            yield rest

    def _call(self, body: str) -> Iterator[ToolCallDelta]:
        try:
            call = json.loads(body)
        except json.JSONDecodeError:
            return
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            return
        arguments = call.get("arguments")
        if not isinstance(arguments, dict):
            arguments = {}
        index = self.calls
        self.calls += 1
        yield ToolCallDelta(index=index, call_id=new_call_id(), name=call["name"])
        yield ToolCallDelta(index=index, arguments=json.dumps(arguments))


def _close_outside_strings(body: str) -> int:
    """Where ``</tool_call>`` closes the call body, or -1: the first one outside a JSON string
    (a string argument may hold the marker's text; the grammar's strings are JSON strings)."""
    in_string = escaped = False
    for i, char in enumerate(body):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif body.startswith(CALL_CLOSE, i):
            return i
    return -1


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:20]}"


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of ``text`` that is a proper start of ``marker``."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0


_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def valid_tool_name(name: Any) -> bool:
    return isinstance(name, str) and bool(_NAME.match(name))



_WORD = re.compile(r"[a-z]+")
_STOP = frozenset("""a an and any are as at be by can do does for from get give how i in is it its
me my of on or please tell the this to use what whats when where which who with you your""".split())


def _stems(text: str) -> set[str]:
    # Crude stemming (a 4-letter prefix) so that "calculate" meets "calculator", "weather" itself.
    return {word[:4] for word in _WORD.findall(text.lower().replace("_", " ")) if word not in _STOP}


def relevant_tool(tools: tuple[Tool, ...], user_text: str) -> Tool | None:
    """The tool whose name and description share the most words with the user's turn, if any."""
    asked = _stems(user_text)
    scored = [(len(asked & _stems(f"{tool.name} {tool.description}")), -index, tool)
              for index, tool in enumerate(tools)]
    best = max(scored, default=None, key=lambda entry: entry[:2])
    return best[2] if best is not None and best[0] > 0 else None


def resolve_auto(request: GenerationRequest) -> GenerationRequest:
    """``request`` with "auto" replaced by a forced call of the relevant tool, or "none".

    Measured on SmolLM2-135M (docs/tools.md): asked to pick a tool itself (a forced choice over
    the tool names and "none"), it picked a wrong one for most questions, so on engines that
    write calls as text the choice is made by word overlap between the user's last turn and each
    tool's name and description; the model then writes the arguments (grammar-constrained).
    After a tool result the model answers in words."""
    tools = tools_in_use(request.tools, request.tool_choice)
    if request.tool_choice != "auto" or not tools:
        return request
    last = request.messages[-1] if request.messages else {}
    tool = relevant_tool(tools, last.get("content") or "") if last.get("role") == "user" else None
    return replace(request, tool_choice=tool.name if tool is not None else "none")
