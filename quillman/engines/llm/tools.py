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

:class:`ToolCallParser` turns the generated text back into text and :class:`ToolCallDelta`\\ s,
and runs on every generation of these engines, tools or not: a model imitating the calls and
results in its history (or cut off in the middle of a call) never gets markup into the text.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import replace
from typing import Any, Collection, TypeGuard

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


def tool_grammar(tools: tuple[Tool, ...], user_text: str | None = None, expand=None) -> str:
    """GBNF for one ``<tool_call>`` block, a call of one of ``tools`` whose arguments match its
    JSON Schema; with ``user_text`` (the turn the call answers), each schema narrowed to the
    values the user said (:func:`quillman.engines.llm.tool_values.narrow`, ``expand`` its
    guess of what an enum's codes stand for). Raises ValueError
    for a schema it cannot convert."""
    from llama_cpp.llama_grammar import SchemaConverter

    from quillman.engines.llm.tool_values import narrow

    converter = SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    calls = []
    for index, tool in enumerate(tools):
        parameters = tool.parameters or {"type": "object"}
        if user_text:
            parameters = narrow(parameters, user_text, expand,
                                avoid=frozenset(re.findall(r"[a-z0-9]+", tool.name.lower())))
        parameters = _bounded_strings(parameters)
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


# Tool-call markup of the format above (and of the tool results and definitions in the prompt,
# which a small model may imitate): never text. Matched case-insensitively, the longest first;
# also without its "<" or ">" (the words tool_call and tool_response are never speech).
RESULT_OPEN, RESULT_CLOSE = "<tool_response>", "</tool_response>"
_MARKERS = tuple(f"{head}{word}{tail}" for word in ("tool_call", "tool_response")
                 for head in ("<", "</", "") for tail in (">", "")) + ("<tools>", "</tools>")
_OPENS = {"<tool_call>": "call", "<tool_call": "call", "<tool_response>": "result", "<tool_response": "result"}


class ToolCallParser:
    """Generated text in, text and tool-call deltas out, with no tool-call markup left in the text.

    Whatever the model writes and however it is cut into deltas (the output depends only on the
    whole text, never on its chunking):

    - ``<tool_call>`` + a JSON object is a call when it names a tool in ``callable`` (None: any
      name) with object arguments, and is dropped otherwise; a block that is not a JSON object
      is dropped up to its ``</tool_call>``. A call becomes one :class:`ToolCallDelta` with its
      ``call_id`` and ``name``, then one with its ``arguments``, when its object closes.
    - ``<tool_response>`` blocks, lone markers (``</tool_call>``, ``<tools>``, ...), anything
      in braces (a call, or its arguments, without the tags: ``{`` up to its closing brace) and
      closing braces without an opening one are dropped. So the text never holds a marker nor
      a brace: spoken replies have no use for them, and which braces hold a call's JSON cannot
      be told.
    - Text streams as it comes; held back only while it may be the start of a marker or is in
      braces, and whitespace until the next visible character (whitespace next to dropped
      markup is not a delta of its own).
    - :meth:`finish`: an unclosed block or object (cut by ``max_tokens``) is dropped, as is a
      trailing partial marker (``</tool_``).

    Markup is ``<tool_call>``, ``</tool_call>``, ``<tool_response>``, ``</tool_response>``,
    ``<tools>`` and ``</tools>``, in any case, and the words ``tool_call`` / ``tool_response``
    with or without their ``<`` / ``</`` and ``>`` (what is left of a tag cut short).
    """

    def __init__(self, callable: Collection[str] | None = None) -> None:
        self._callable = None if callable is None else frozenset(callable)
        self.calls = 0
        self._mode = "text"  # text | call (after <tool_call>) | object | skip (until self._until)
        self._marker = ""  # text mode: what may be the start of a marker
        self._space = ""  # whitespace not yet emitted
        self._held = ""  # object mode: the object so far; skip mode: the skipped text's tail
        self._is_call = False  # object mode: the object follows <tool_call> (else: in the text)
        self._depth = 0
        self._in_string = False
        self._escaped = False
        self._until = ""  # skip mode: the marker that ends it
        self._out: list[str | ToolCallDelta] = []

    def feed(self, text: str) -> list[str | ToolCallDelta]:
        for char in text:
            self._char(char)
        return self._flush()

    def finish(self) -> list[str | ToolCallDelta]:
        held = self._marker.lower()
        if self._mode == "text" and held and held not in _MARKERS and not (
                "_" in held or (held.startswith("<") and len(held) > 1)):
            for char in self._marker:  # "to", "tool", a lone "<": text; "</", "tool_": markup
                self._plain(char)
        self._mode, self._marker, self._held, self._space = "text", "", "", ""
        return self._flush()

    # --- the state machine, one character at a time -------------------------------------------

    def _char(self, char: str) -> None:
        if self._mode == "object":
            self._object_char(char)
        elif self._mode == "call":
            if char == "{":
                self._open_object(is_call=True)
            elif not char.isspace():
                self._skip_until(CALL_CLOSE, char)  # not a JSON call: dropped up to its close
        elif self._mode == "skip":
            self._held = (self._held + char)[-len(self._until):]
            if self._held.lower() == self._until:
                self._mode, self._held = "text", ""
        else:
            self._text_char(char)

    def _text_char(self, char: str) -> None:
        self._marker += char
        lowered = self._marker.lower()
        if any(marker.startswith(lowered) for marker in _MARKERS):
            return  # may still grow into (a longer) marker
        # It cannot grow into a marker any more: the longest marker it starts with is one; else
        # its first character is text. The rest is read again (the mode may have changed).
        marker = max((m for m in _MARKERS if lowered.startswith(m)), key=len, default="")
        if marker:
            rest, self._marker = self._marker[len(marker):], ""
            self._on_marker(marker)
        else:
            first, rest, self._marker = self._marker[0], self._marker[1:], ""
            self._plain(first)
        for char in rest:
            self._char(char)

    def _on_marker(self, marker: str) -> None:
        opens = _OPENS.get(marker)
        if opens == "call":
            self._mode = "call"
        elif opens == "result":
            self._skip_until(RESULT_CLOSE)
        # else a lone marker: dropped

    def _plain(self, char: str) -> None:
        if char == "{":
            self._open_object(is_call=False)
        elif char == "}":
            pass  # a closing brace without its opening one: the tail of a call's JSON
        else:
            self._text(char)

    def _open_object(self, is_call: bool) -> None:
        self._mode, self._held, self._is_call = "object", "{", is_call
        self._depth, self._in_string, self._escaped = 1, False, False

    def _object_char(self, char: str) -> None:
        self._held += char
        if char == ">" and (marker := next((m for m in (CALL_CLOSE, CALL_OPEN) if self._held.lower().endswith(m)),
                                           None)):
            # A call tag inside a string: it cut the object short (dropped); the tag counts.
            # (Other markup in a string, "<tools>" say, is the string's.)
            self._mode, self._held = "text", ""
            self._on_marker(marker)
            return
        if self._in_string:
            if self._escaped:
                self._escaped = False
            elif char == "\\":
                self._escaped = True
            elif char == '"':
                self._in_string = False
            return
        if char == '"':
            self._in_string = True
        elif char == "{":
            self._depth += 1
        elif char == "}":
            self._depth -= 1
            if self._depth == 0:
                self._close_object()
        elif char == "<":
            # No JSON has "<" outside a string: markup cut the object short. Dropped, and the
            # "<" is read as text again (it may start a marker).
            self._mode, self._held = "text", ""
            self._text_char(char)

    def _close_object(self) -> None:
        body, self._held, self._mode = self._held, "", "text"
        if self._is_call:
            self._call(body)
        # Else a JSON object in the text: a call (or its arguments) without the tags. Dropped,
        # as is anything else in braces: which of them is JSON of a call cannot be told apart.

    def _skip_until(self, marker: str, held: str = "") -> None:
        self._mode, self._until, self._held = "skip", marker, held

    def _text(self, text: str) -> None:
        for char in text:
            if char.isspace():
                self._space += char
            else:
                self._out.append(self._space + char)
                self._space = ""

    def _call(self, body: str) -> None:
        try:
            call = json.loads(body)
        except json.JSONDecodeError:
            return
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            return
        if self._callable is not None and call["name"] not in self._callable:
            return  # a tool this generation may not call: dropped, never spoken
        arguments = call.get("arguments")
        if isinstance(arguments, str):  # the OpenAI chat shape: arguments as a JSON string
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                arguments = None
        if not isinstance(arguments, dict):
            arguments = {}
        index = self.calls
        self.calls += 1
        self._out.append(ToolCallDelta(index=index, call_id=new_call_id(), name=call["name"]))
        self._out.append(ToolCallDelta(index=index, arguments=json.dumps(arguments)))

    def _flush(self) -> list[str | ToolCallDelta]:
        """What was found since the last call, consecutive text joined into one delta."""
        out: list[str | ToolCallDelta] = []
        for item in self._out:
            if isinstance(item, str) and out and isinstance(out[-1], str):
                out[-1] += item
            else:
                out.append(item)
        self._out = []
        return out


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:20]}"


_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def valid_tool_name(name: Any) -> TypeGuard[str]:
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


# --- the tool a call is for, chosen by the model's likelihood of the user's words ---------------

def tool_context(tool: Tool | None) -> str:
    """The text before the user's words when scoring ``tool`` (None: no tool, the baseline)."""
    if tool is None:
        return "A message to a voice assistant, asking it a general knowledge question or making small talk:\n"
    return (f"A message to a voice assistant, asking it to use the tool {tool.name.replace('_', ' ')} "
            f"({tool.description.strip()}):\n")


# "auto" calls a tool when the user's turn is at least this much (nats, the whole turn) more
# likely after the best tool's context than after the no-tool one. Chosen on the tool set's
# tuning half (docs/tools.md): 2.0 called a tool for 75 % of the requests that want one and
# for 8 % of those that do not; 0 for 92 % and 58 %.
AUTO_MARGIN = 2.0


def choose_tool(request: GenerationRequest, loglik) -> GenerationRequest:
    """``request`` with "required" (several tools) or "auto" replaced by the name of one tool or
    "none", chosen by ``loglik(context, text)`` (the model's log-likelihood of ``text`` after
    ``context``): the tool after whose :func:`tool_context` the user's last turn is the most
    likely (the channel direction: a 135M model asked to *write* the tool's name picked a wrong
    one for 4 in 10 requests, docs/tools.md). "auto" calls it only when the turn is at least
    :data:`AUTO_MARGIN` nats more likely after that tool than after no tool; after a tool
    result (the last turn is not the user's) "auto" answers in words and "required" leaves the
    choice to the grammar."""
    from quillman.engines.llm.tool_values import last_user_text

    tools = tools_in_use(request.tools, request.tool_choice)
    if request.tool_choice not in ("auto", "required") or not tools:
        return request
    text = last_user_text(request.messages)
    if text is None or not text.strip():
        return replace(request, tool_choice="none") if request.tool_choice == "auto" else request
    if request.tool_choice == "required" and len(tools) == 1:
        return replace(request, tool_choice=tools[0].name)
    scores = [loglik(tool_context(tool), text) for tool in tools]
    best = max(range(len(tools)), key=lambda i: scores[i])
    if request.tool_choice == "auto" and scores[best] - loglik(tool_context(None), text) < AUTO_MARGIN:
        return replace(request, tool_choice="none")
    return replace(request, tool_choice=tools[best].name)
