"""Tool calls on llama.cpp: the text format, its parser, and grammar-constrained calls from the
shipped SmolLM2 (schema-valid arguments by construction; the values are measured by the bench)."""

from __future__ import annotations

import json

import jsonschema
import pytest

from quillman.engines.llm import tools as tool_format
from quillman.engines.llm.base import GenerationParams, GenerationRequest, Tool, ToolCallDelta, Usage
from quillman.engines.llm.llama_batch import BatchedLlamaCpp
from quillman.engines.llm.llama_cpp import resolve_gguf_path

WEATHER = Tool("get_weather", "Get the current weather for a city.", {
    "type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"]})
CALC = Tool("calculate", "Evaluate an arithmetic expression.", {
    "type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]})


def feed_all(parser, pieces):
    out = []
    for piece in pieces:
        out.extend(parser.feed(piece))
    out.extend(parser.finish())
    return out


def test_the_parser_streams_text_and_turns_a_block_into_one_call():
    text = 'Sure. <tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    out = feed_all(tool_format.ToolCallParser(), list(text))  # one character at a time
    assert "".join(d for d in out if isinstance(d, str)) == "Sure."  # the space waited for a word
    calls = [d for d in out if isinstance(d, ToolCallDelta)]
    assert calls[0].name == "get_weather" and calls[0].call_id.startswith("call_")
    assert json.loads(calls[1].arguments) == {"city": "Paris"} and calls[1].index == 0


def test_a_lone_angle_bracket_is_text_and_a_broken_block_is_dropped():
    assert "".join(feed_all(tool_format.ToolCallParser(), ["1 <", " 2"])) == "1 < 2"
    assert feed_all(tool_format.ToolCallParser(), ['<tool_call>{"name": "f", "argu']) == []


def test_the_grammar_keeps_control_characters_out_of_strings():
    grammar = tool_format.tool_grammar((CALC,))
    assert r'char ::= [^"\\\x7F\x00-\x1F]' in grammar


def test_history_renders_calls_and_results_as_text_for_plain_templates():
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "3 C"}]
    rendered = tool_format.render_messages(messages, (WEATHER,), "auto")
    assert "<tools>" in rendered[0]["content"] and "get_weather" in rendered[0]["content"]
    assert rendered[1]["content"].startswith("<tool_call>") and '"Oslo"' in rendered[1]["content"]
    assert rendered[2]["role"] == "user" and "3 C" in rendered[2]["content"]
    assert "<tools>" not in tool_format.render_messages(messages, (WEATHER,), "none")[0]["content"]


@pytest.mark.parametrize("question, expected", [
    ("What's the weather like in Paris?", "get_weather"),
    ("Please calculate 12 times 7.", "calculate"),
    ("Tell me a joke.", "none"),
])
def test_auto_picks_the_relevant_tool_or_none(question, expected):
    request = GenerationRequest([{"role": "user", "content": question}],
                                GenerationParams(max_tokens=8, temperature=0.0, top_p=1.0),
                                tools=(WEATHER, CALC), tool_choice="auto")
    assert tool_format.resolve_auto(request).tool_choice == expected


@pytest.fixture(scope="module")
def engine():
    engine = BatchedLlamaCpp(resolve_gguf_path("smollm2-135m"), n_threads=1, n_threads_batch=2,
                             n_ctx=1024, n_slots=1, prefill_chunk_tokens=256)
    yield engine
    engine.close()


async def test_a_forced_call_has_schema_valid_arguments(engine):
    request = GenerationRequest(
        [{"role": "system", "content": "You are a helpful assistant."},
         {"role": "user", "content": "What's the weather in Berlin, in celsius?"}],
        GenerationParams(max_tokens=48, temperature=0.0, top_p=1.0), tools=(WEATHER, CALC),
        tool_choice="get_weather")
    deltas = [d async for d in engine.stream(request)]
    calls = [d for d in deltas if isinstance(d, ToolCallDelta)]
    assert calls[0].name == "get_weather"
    arguments = json.loads("".join(c.arguments for c in calls))
    jsonschema.validate(arguments, WEATHER.parameters)
    assert not [d for d in deltas if isinstance(d, str) and d.strip()]  # a call only
    assert isinstance(deltas[-1], Usage)


def weather_turn(call_id: str, city: str, temp_c: int) -> list[dict]:
    return [{"role": "user", "content": f"What's the weather in {city}?"},
            {"role": "assistant", "content": "", "tool_calls": [{"id": call_id, "type": "function", "function": {
                "name": "get_weather", "arguments": json.dumps({"city": city, "unit": "celsius"})}}]},
            {"role": "tool", "tool_call_id": call_id, "content": json.dumps({"temp_c": temp_c})},
            {"role": "assistant", "content": f"It is {temp_c} degrees in {city}."}]


async def test_markup_the_model_imitates_from_its_history_is_never_text(engine):
    # "And in Berlin?" names no tool: "auto" resolves to "none" (no grammar). Greedy, SmolLM2
    # then writes '<tool_response>{"temp_c": 29}</tool_response>' (it did, spoken, before
    # every generation went through the parser).
    request = GenerationRequest(
        [{"role": "system", "content": "You are a helpful assistant."}, *weather_turn("c1", "Paris", 21),
         *weather_turn("c2", "Rome", 25), {"role": "user", "content": "And in Berlin?"}],
        GenerationParams(max_tokens=40, temperature=0.0, top_p=1.0), tools=(WEATHER, CALC), tool_choice="auto")
    deltas = [d async for d in engine.stream(request)]
    text = "".join(d for d in deltas if isinstance(d, str))
    assert "tool_" not in text and "{" not in text and "}" not in text, text
    assert not [d for d in deltas if isinstance(d, ToolCallDelta)]  # "none": no call either


def test_strings_without_a_bound_get_one_in_the_grammar():
    schema = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "string", "maxLength": 5},
                                               "c": {"enum": ["x"]}, "d": {"type": "array", "items": {"type": "string"}}}}
    bounded = tool_format._bounded_strings(schema)
    assert bounded["properties"]["a"]["maxLength"] == tool_format.MAX_STRING_CHARS
    assert bounded["properties"]["b"]["maxLength"] == 5 and "maxLength" not in bounded["properties"]["c"]
    assert bounded["properties"]["d"]["items"]["maxLength"] == tool_format.MAX_STRING_CHARS
    assert "maxLength" not in schema["properties"]["a"]  # the tool's own schema is unchanged
