"""The QA bench's scoring: key facts, English, repetition loops; the QA set itself."""

from __future__ import annotations

from quillman.loadtest import qa


def test_the_qa_set_has_fifty_questions_with_facts():
    questions = qa.load_questions()
    assert len([q for q in questions if q["facts"]]) >= 50
    assert len({q["q"] for q in questions}) == len(questions)


def test_a_reply_is_correct_when_every_fact_is_in_it():
    assert qa.correct("The capital of France is Paris.", [["paris"]])
    assert not qa.correct("Le Jura, la France, la France.", [["paris"]])
    assert qa.correct("A day has 24 hours.", [["24", "twenty-four"]])
    assert not qa.correct("It has 124 hours.", [["24"]])  # not inside another number


def test_english_and_loops():
    assert qa.english("The moon orbits the Earth.")
    assert not qa.english("L'Étoile, la Cité, la France, la France.")
    assert qa.looping("No, I'm sorry. I'm sorry. I'm sorry. I'm sorry.")
    assert not qa.looping("Paris is the capital of France, and Paris is lovely.")


def test_tool_cases_alternate_cities_and_numbers():
    cases = qa.tool_cases(4)
    assert [tool.name for _, tool, _ in cases] == ["get_weather", "calculate"] * 2
    question, _, values = cases[1]
    assert all(value in question for value in values)
