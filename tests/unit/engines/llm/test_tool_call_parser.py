"""ToolCallParser over arbitrary model output, cut into arbitrary deltas: calls come out as
calls, and no tool-call markup or JSON of a call ever comes out as text."""

from __future__ import annotations

import json
import os

from hypothesis import given, settings, strategies as st

from quillman.engines.llm.base import ToolCallDelta
from quillman.engines.llm.tools import ToolCallParser

# CI-sized (~8 s); QUILLMAN_FUZZ_SCALE=20 runs 20 times as many examples (passed at 10).
SCALE = float(os.environ.get("QUILLMAN_FUZZ_SCALE", "1"))
TOOLS = ("get_weather", "calculate")
MARKUP = ("<tool_call", "tool_call>", "</tool_", "<tool_response", "tool_response>", "<tools>", "</tools>")

# Text a spoken reply is made of (anything but the three characters that may start markup).
plain = st.text(st.characters(codec="utf-8", exclude_characters="<{}", exclude_categories=("Cs",)),
                max_size=30)
# Argument values, markup and braces among them (a string's own: only call tags cut a call short).
values = st.one_of(st.text(max_size=10), st.integers(), st.booleans(),
                   st.sampled_from(["<tools>", "tool_call", "<TOOL_RESPONSE>", "tool_call>", "a}b{", "</", "<"]))
arguments = st.dictionaries(st.sampled_from(["city", "unit", "a", "b"]), values, max_size=3)


def call_json(name: str, args: dict) -> str:
    return json.dumps({"name": name, "arguments": args})


def cased(tag: str, upper: bool) -> str:
    return tag.upper() if upper else tag


@st.composite
def chunked(draw, text: str) -> list[str]:
    """``text`` cut at arbitrary places (empty deltas included)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=12)))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]


def run(parser: ToolCallParser, pieces: list[str]) -> tuple[str, list[tuple[str, dict]]]:
    """(the text, the calls as (name, arguments)) that ``pieces`` come out as."""
    out = [delta for piece in pieces for delta in parser.feed(piece)] + parser.finish()
    text = "".join(d for d in out if isinstance(d, str))
    calls: list[tuple[str, dict]] = []
    for delta in out:
        if isinstance(delta, ToolCallDelta):
            if delta.name is not None:
                assert delta.call_id.startswith("call_") and delta.index == len(calls)
                calls.append((delta.name, {}))
            else:
                calls[-1] = (calls[-1][0], json.loads(delta.arguments))
    return text, calls


def assert_clean(text: str) -> None:
    lowered = text.lower()
    assert not [m for m in MARKUP if m in lowered], text
    assert "{" not in text and "}" not in text, text


def visible(text: str) -> str:
    return "".join(text.split())


# A model output: text, and among it every way a call (or its leftovers) can be written.
@st.composite
def segment(draw) -> tuple[str, str, list]:
    """(what the model wrote, the text it stands for, the calls it stands for)."""
    kind = draw(st.sampled_from(["text", "call", "untagged", "arguments", "unclosed_then_text",
                                 "stray_close", "result", "definitions", "not_json"]))
    name = draw(st.sampled_from([*TOOLS, "not_a_tool"]))
    args = draw(arguments)
    upper = draw(st.booleans())
    space = draw(st.sampled_from(["", " ", "\n"]))
    if kind == "text":
        text = draw(plain)
        return text, text, []
    if kind == "call":  # a whole block; the close may be missing (the grammar's end, a cut)
        close = draw(st.sampled_from(["", cased("</tool_call>", upper)]))
        written = f"{cased('<tool_call>', upper)}{space}{call_json(name, args)}{space}{close}"
        return written, "", [(name, args)] if name in TOOLS else []
    if kind == "untagged":
        return call_json(name, args), "", []
    if kind == "arguments":
        return json.dumps(args), "", []
    if kind == "unclosed_then_text":  # markup cuts the call's JSON short, text follows
        text = draw(plain)
        written = f"<tool_call>{call_json(name, args)[:draw(st.integers(1, 20))]}</tool_call>{text}"
        return written, text, []
    if kind == "stray_close":  # the tail of a call whose head is missing: ', you get "} }</tool_call>'
        return f'{space}}} }}{cased("</tool_call>", upper)}', "", []
    if kind == "result":
        return f"<tool_response>{json.dumps(args)} it is 3 C</tool_response>", "", []
    if kind == "definitions":
        return f'<tools>\n{json.dumps({"name": name, "parameters": {}})}\n</tools>', "", []
    return f"<tool_call>{name}(city=Paris)</tool_call>", "", []  # a block that is no JSON call


@given(st.data())
@settings(max_examples=int(150 * SCALE), deadline=None)
def test_calls_come_out_and_everything_else_is_the_text(data):
    segments = data.draw(st.lists(segment(), max_size=6))
    written = "".join(s[0] for s in segments)
    expected_calls = [call for s in segments for call in s[2]]
    pieces = data.draw(chunked(written))
    text, calls = run(ToolCallParser(TOOLS), pieces)
    assert calls == expected_calls
    assert visible(text) == visible("".join(s[1] for s in segments))
    assert_clean(text)


@given(st.data())
@settings(max_examples=int(150 * SCALE), deadline=None)
def test_any_output_cut_anywhere_leaks_nothing_and_does_not_depend_on_the_chunking(data):
    segments = data.draw(st.lists(segment(), max_size=6))
    written = "".join(s[0] for s in segments)
    written = written[:data.draw(st.integers(0, len(written)))]  # max_tokens may cut anywhere
    whole = run(ToolCallParser(TOOLS), [written])
    assert run(ToolCallParser(TOOLS), data.draw(chunked(written))) == whole
    assert run(ToolCallParser(TOOLS), list(written)) == whole
    assert_clean(whole[0])


SOUP = st.lists(st.sampled_from([*'<>{}/"\\ _acilost:,\n', "tool_call", "tool_response", "tools", "TOOL_CALL"]),
                max_size=40).map("".join)


@given(SOUP, st.data())
@settings(max_examples=int(300 * SCALE), deadline=None)
def test_markup_soup_never_reaches_the_text(soup, data):
    text, _ = run(ToolCallParser(TOOLS), data.draw(chunked(soup)))
    assert_clean(text)


def test_only_the_tools_of_this_generation_are_called():
    written = '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
    assert run(ToolCallParser(()), [written]) == ("", [])  # tool_choice none: dropped, unspoken
    assert run(ToolCallParser(["get_weather"]), [written]) == ("", [("get_weather", {"city": "Oslo"})])
    assert run(ToolCallParser(), [written])[1] == [("get_weather", {"city": "Oslo"})]  # any name


def test_the_reply_that_leaked_is_text_only():
    # The reply seen on the llama.cpp engine: the tail of a call, spoken.
    assert run(ToolCallParser(TOOLS), list('It is sunny, you get "} }</tool_call>'))[0] == 'It is sunny, you get "'


def test_text_streams_without_waiting_for_the_end():
    parser = ToolCallParser(TOOLS)
    assert parser.feed("Sure, ") == ["Sure,"]  # the space waits for the next word
    assert parser.feed("it is 3 <") == [" it is 3"]  # "<" may open a marker
    assert parser.feed(" 4.") == [" < 4."]
    assert parser.feed(" {\"a\": 1") == []
    assert parser.feed("} Done.") == ["  Done."]  # the spaces on both sides of it
    assert parser.finish() == []


def test_arguments_as_a_json_string_are_read_too():
    written = '<tool_call>{"name": "calculate", "arguments": "{\\"expression\\": \\"2+2\\"}"}</tool_call>'
    assert run(ToolCallParser(TOOLS), [written])[1] == [("calculate", {"expression": "2+2"})]
