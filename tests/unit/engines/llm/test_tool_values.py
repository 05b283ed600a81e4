"""A forced call's schema narrowed to the user's turn (tool_values) and the tool chosen by the
model's likelihood of the turn (tools.choose_tool): pure logic, no model."""

from __future__ import annotations

import jsonschema
import pytest

from quillman.engines.llm import tool_values as tv
from quillman.engines.llm import tools as tool_format
from quillman.engines.llm.base import GenerationParams, GenerationRequest, Tool

CODES = ["USD", "EUR", "GBP", "JPY", "CAD"]
EXCHANGE = {"type": "object", "properties": {
    "amount": {"type": "number"},
    "source": {"type": "string", "enum": CODES, "description": "the code of the money given"},
    "target": {"type": "string", "enum": CODES, "description": "the code of the money wanted"}},
    "required": ["amount", "source", "target"]}
ALARM = {"type": "object", "properties": {
    "hours": {"type": "integer", "minimum": 0, "maximum": 23},
    "repeat": {"type": "string", "enum": ["daily", "weekdays", "never"]},
    "note": {"type": "string"}}, "required": ["hours"]}
EXPANSIONS = {"USD": "US Dollar", "EUR": "Euro", "GBP": "British Pound", "JPY": "Japanese yen", "CAD": "?"}


@pytest.mark.parametrize("text, expected", [
    ("Set it for twenty-five past", [25]),
    ("two hundred and six bones", [206]),
    ("one thousand minus one", [1000, 1]),
    ("Convert 7.50 dollars, then 1,000 more", [7.5, 1000]),
    ("five six", [5, 6]),
    ("an hour and a half", []),
])
def test_numbers_are_read_from_digits_and_english_words(text, expected):
    assert tv.numbers(text) == expected


def test_phrases_are_the_users_words_without_function_words_at_their_ends():
    phrases = tv.spans("Start a 5 minute timer for the pasta.", avoid=frozenset({"5", "minute"}))
    assert "pasta" in phrases and "timer" in phrases
    assert not [p for p in phrases if p.split()[0].lower() in tv.FUNCTION_WORDS
                or p.split()[-1].lower() in tv.FUNCTION_WORDS or "5" in p]
    assert tv.spans("for the", avoid=frozenset()) == ["for", "for the", "the"]  # none left: every run


def test_codes_are_named_by_prefix_initials_or_the_models_expansion():
    def named(text):
        narrowed = tv.narrow(EXCHANGE, text, lambda value, _: EXPANSIONS[value])
        return narrowed["properties"]["source"]["enum"], narrowed["properties"]["target"]["enum"]

    assert named("Change 75 Canadian dollars into euros") == (["CAD"], ["EUR"])  # not CAD and USD
    assert named("What is 20 pounds in US dollars?") == (["GBP"], ["USD"])
    assert named("1000 Japanese yen in euros please") == (["JPY"], ["EUR"])
    assert named("How much is 40 in some money?") == (CODES, CODES)  # none named: the model picks


def test_optional_enums_only_when_named_and_free_strings_are_phrases():
    narrowed = tv.narrow(ALARM, "Wake me at 7 every weekday, it's for the gym.")
    props = narrowed["properties"]
    assert props["hours"]["enum"] == [7]
    assert props["repeat"]["enum"] == ["weekdays"] and "repeat" in narrowed["required"]
    assert "gym" in props["note"]["enum"] and "note" in narrowed["required"]
    without = tv.narrow(ALARM, "Wake me at 7, it's for the gym.")
    assert "repeat" not in without["properties"]  # optional, not asked for: left out
    # Out of bounds: no candidate, the schema is left as it was.
    assert "enum" not in tv.narrow(ALARM, "Wake me in 90 minutes")["properties"]["hours"]


def test_every_narrowed_value_fits_the_tools_own_schema():
    narrowed = tv.narrow(ALARM, "Wake me at 7 every weekday, it's for the gym.")
    for hours in narrowed["properties"]["hours"]["enum"]:
        for note in narrowed["properties"]["note"]["enum"]:
            jsonschema.validate({"hours": hours, "repeat": "weekdays", "note": note}, ALARM)
    assert "enum" not in ALARM["properties"]["note"]  # the input is unchanged


WEATHER = Tool("get_weather", "Get the weather for a city.", {"type": "object", "properties": {}})
TIMER = Tool("set_timer", "Start a countdown timer.", {"type": "object", "properties": {}})


def request(choice, text="Is it raining in Oslo?", tools=(WEATHER, TIMER)):
    return GenerationRequest([{"role": "user", "content": text}],
                             GenerationParams(max_tokens=8, temperature=0.0, top_p=1.0),
                             tools=tools, tool_choice=choice)


def fake_loglik(scores):
    """A model that finds the text this likely after each tool's context (None: no tool)."""
    def loglik(context, text):
        for name, score in scores.items():
            if name is not None and name.replace("_", " ") in context:
                return score
        return scores[None]
    return loglik


def test_required_takes_the_tool_after_which_the_request_is_most_likely():
    chosen = tool_format.choose_tool(request("required"), fake_loglik({"get_weather": -5, "set_timer": -9, None: -7}))
    assert chosen.tool_choice == "get_weather"
    chosen = tool_format.choose_tool(request("required"), fake_loglik({"get_weather": -9, "set_timer": -5, None: -1}))
    assert chosen.tool_choice == "set_timer"  # required: a tool, however likely "none" is


def test_auto_calls_only_when_the_best_tool_beats_no_tool_by_the_margin():
    margin = tool_format.AUTO_MARGIN
    ahead = fake_loglik({"get_weather": -5.0, "set_timer": -9.0, None: -5.0 - margin - 0.1})
    behind = fake_loglik({"get_weather": -5.0, "set_timer": -9.0, None: -5.0 - margin + 0.1})
    assert tool_format.choose_tool(request("auto"), ahead).tool_choice == "get_weather"
    assert tool_format.choose_tool(request("auto"), behind).tool_choice == "none"


def test_named_choices_one_tool_and_tool_results_need_no_scoring():
    def never(context, text):
        raise AssertionError("scored")
    assert tool_format.choose_tool(request("set_timer"), never).tool_choice == "set_timer"
    assert tool_format.choose_tool(request("required", tools=(TIMER,)), never).tool_choice == "set_timer"
    after_result = GenerationRequest([{"role": "tool", "content": "3 C"}], request("auto").params,
                                     tools=(WEATHER, TIMER), tool_choice="auto")
    assert tool_format.choose_tool(after_result, never).tool_choice == "none"
