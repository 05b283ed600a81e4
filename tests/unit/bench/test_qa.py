"""The QA bench's scoring (key facts, English, loops, example bleed, tool-call arguments) and its
data sets (the split into a tuning and a test half). No model here: the bench itself runs it."""

from __future__ import annotations

from collections import Counter

from quillman.engines.llm.base import ToolCallDelta
from quillman_bench import qa


def test_the_qa_set_is_split_once_per_category_into_tuning_and_test_halves():
    questions = qa.load_questions()
    scored = [q for q in questions if q["facts"]]
    assert len(scored) >= 150 and len({q["q"] for q in questions}) == len(questions)
    per_category = Counter((q["category"], q["split"]) for q in scored)
    categories = {q["category"] for q in scored}
    assert {"geography", "science", "how-to", "arithmetic", "dates", "units", "definitions"} <= categories
    for category in categories:
        assert abs(per_category[category, "tune"] - per_category[category, "test"]) <= 1
    assert {q["split"] for q in questions} == set(qa.SPLITS)
    assert len(qa.load_questions("test")) + len(qa.load_questions("tune")) == len(questions)


def test_no_question_gives_its_own_answer_away():
    # Echoing the question must never score: no accepted fact is already in the question.
    for entry in qa.load_questions():
        for group in entry["facts"]:
            assert not any(qa.fact_in(alt, entry["q"]) for alt in group), (entry["q"], group)


def test_a_reply_is_correct_when_every_fact_is_in_it():
    assert qa.correct("The capital of France is Paris.", [["paris"]])
    assert not qa.correct("Le Jura, la France, la France.", [["paris"]])
    assert qa.correct("A day has 24 hours.", [["24", "twenty-four"]])
    assert qa.correct("A kilogram is 1,000 grams.", [["1000"]])
    assert qa.correct("Water freezes in a freezer.", [["freez*"]])
    assert qa.correct("It is on January 1st.", [["january"], ["1st"]])
    assert not qa.correct("You need two languages.", [["two"], ["french"]])
    assert not qa.correct("open question", [])


def test_a_number_is_not_found_inside_another_number():
    assert not qa.correct("It has 124 hours.", [["24"]])
    assert not qa.correct("It has 240 hours.", [["24"]])
    assert not qa.correct("It is forty-eight.", [["eight"]])
    assert not qa.correct("It is forty-two.", [["forty"]])
    assert not qa.correct("About 2.54 cm.", [["2.5"]])


def test_english_and_loops():
    assert qa.english("The moon orbits the Earth.")
    assert not qa.english("L'Étoile, la Cité, la France, la France.")
    assert qa.looping("No, I'm sorry. I'm sorry. I'm sorry. I'm sorry.")
    assert not qa.looping("Paris is the capital of France, and Paris is lovely.")


def test_bleed_is_an_example_fact_in_an_answer_it_does_not_belong_to():
    markers = qa.example_facts((("What is the capital of Portugal?", "The capital of Portugal is Lisbon."),
                                ("How many days are in a year?", "A year has 365 days.")))
    assert markers == ["portugal", "lisbon", "365"]
    leap = {"q": "How many days are in a leap year?", "facts": [["366"]]}
    assert qa.bleed("A leap year has 365 days.", leap, markers) == ["365"]
    assert qa.bleed("A leap year has 366 days.", leap, markers) == []
    portugal = {"q": "What language is spoken in Portugal?", "facts": [["portuguese"]]}
    assert qa.bleed("They speak Portuguese in Portugal.", portugal, markers) == []  # asked about


def test_scores_come_per_half_and_per_category():
    entries = [{"q": "a?", "category": "x", "split": "tune", "facts": [["yes"]]},
               {"q": "b?", "category": "y", "split": "test", "facts": [["yes"]]},
               {"q": "c?", "category": "y", "split": "test", "facts": []}]
    records = [qa.score_reply(e, r, []) for e, r in zip(entries, ["Yes.", "No.", "Hello there."])]
    scores = qa.breakdown(records)
    assert scores["tune"]["correct_pct"] == 100.0 and scores["test"]["correct_pct"] == 0.0
    assert scores["test"]["questions"] == 2 and scores["test"]["scored"] == 1
    assert scores["all"]["by_category"] == {"x": 100.0, "y": 0.0}


def test_the_tool_set_has_three_tools_and_split_requests_with_expected_arguments():
    tools, requests = qa.load_tool_set()
    assert len(tools) >= 3
    calls = [r for r in requests if r["tool"]]
    assert len(calls) >= 60 and {r["tool"] for r in calls} == {t.name for t in tools}
    assert any(not r["tool"] for r in requests)  # requests that need no tool ("auto")
    for tool in {r["tool"] for r in requests}:
        halves = Counter(r["split"] for r in requests if r["tool"] == tool)
        assert abs(halves["tune"] - halves["test"]) <= 1


def test_arguments_right_compares_values_not_spelling():
    weather = {"city": ["New York", "NYC"], "unit": "fahrenheit"}
    assert qa.arguments_right("get_weather", {"city": "new york, USA", "unit": "fahrenheit"}, weather)
    assert not qa.arguments_right("get_weather", {"city": "New York"}, weather)  # the unit asked for
    assert qa.arguments_right("get_weather", {"city": "Oslo"}, {"city": ["Oslo"]})
    timer = {"seconds": 1500, "label": [["grandma"], ["birthday"]]}
    assert qa.arguments_right("set_timer", {"duration": 25, "unit": "minutes",
                                            "label": "call grandma about the birthday party"}, timer)
    assert not qa.arguments_right("set_timer", {"duration": 25, "unit": "minutes", "label": "call grandma"}, timer)
    assert qa.arguments_right("set_timer", {"duration": 90, "unit": "seconds"}, {"seconds": 90})
    money = {"amount": 50, "from_currency": "USD", "to_currency": "EUR"}
    assert qa.arguments_right("convert_currency", {"amount": 50.0, "from_currency": "USD", "to_currency": "EUR"}, money)
    assert not qa.arguments_right("convert_currency", {"amount": 50, "from_currency": "EUR", "to_currency": "USD"}, money)


def test_a_call_is_scored_for_tool_schema_and_values():
    tools, _ = qa.load_tool_set()
    request = {"q": "Convert 50 dollars to euros.", "split": "test", "tool": "convert_currency",
               "expect": {"amount": 50, "from_currency": "USD", "to_currency": "EUR"}}
    good = [ToolCallDelta(index=0, call_id="c", name="convert_currency"),
            ToolCallDelta(index=0, arguments='{"amount": 50, "from_currency": "USD", "to_currency": "EUR"}')]
    record = qa.score_call(request, tools, "", good)
    assert record["right_tool"] and record["valid"] and record["arguments_right"]
    bad = [ToolCallDelta(index=0, call_id="c", name="convert_currency"),
           ToolCallDelta(index=0, arguments='{"amount": 50, "from_currency": "usd", "to_currency": "EUR"}')]
    assert not qa.score_call(request, tools, "", bad)["valid"]
    none = qa.score_call(request, tools, "Fifty dollars is about forty-six euros.", [])
    assert none["tool"] is None and not none["right_tool"]
    summary = qa.summarize_calls([record, none, qa.score_call({**request, "tool": None}, tools, "Hi.", [])], "auto")
    assert summary["right_tool_pct"] == 50.0 and summary["called_when_should_pct"] == 50.0
    assert summary["no_call_when_should_not_pct"] == 100.0
