"""``quillman bench qa``: are the default model's answers worth hearing? Scored per setting.

Runs the LLM engine directly (no server, no Ray): every question of the QA set
(``data/qa_set.json``: everyday questions with accepted key facts) under each named setting
(system prompt, few-shot turns, repeat/frequency penalty, reply length, temperature), and scores

- correct: every key fact of the question is in the reply (any accepted spelling);
- english: the reply is English (no non-English function words, almost no non-ASCII letters);
- loop: a repetition loop (a 3-word sequence three times or more);
- words: reply length;

``--history`` asks each question after the previous question and its answer (the same
conversation), which shows answers bleeding into the next one. ``--tool-calls N`` makes N forced
calls (weather of a city, arithmetic on two numbers) and reports the share whose argument values
are the ones asked for (the grammar makes them schema-valid by construction).

  quillman bench qa --settings before,tuned --history --tool-calls 50 --json qa.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any

from quillman.config import LlmConfig, SessionConfig
from quillman.engines.llm.base import GenerationParams, GenerationRequest, Tool, ToolCallDelta


@dataclass(frozen=True)
class Setting:
    instructions: str
    few_shot: tuple[tuple[str, str], ...] = ()
    repeat_penalty: float = 1.0
    frequency_penalty: float = 0.0
    max_tokens: int = 64
    temperature: float = 0.2


_BEFORE_PROMPT = ("You are a friendly voice assistant. Always answer in English, in one or two short "
                  "spoken sentences. Do not use lists, markdown or emoji.")
_FEW_SHOT = (("What is the capital of Portugal?", "The capital of Portugal is Lisbon."),
             ("How many days are in a year?", "A year has 365 days."))


def _server_default() -> Setting:
    """What the server ships (config defaults): the setting the bench's "default" measures."""
    llm, session = LlmConfig(), SessionConfig()
    return Setting(session.instructions, tuple(map(tuple, session.few_shot)), llm.repeat_penalty,
                   llm.frequency_penalty, llm.max_tokens, llm.temperature)


SETTINGS: dict[str, Setting] = {
    "before": Setting(_BEFORE_PROMPT),
    "penalty": Setting(_BEFORE_PROMPT, repeat_penalty=1.3),
    "few-shot": Setting(_BEFORE_PROMPT, _FEW_SHOT),
    "few-shot-penalty": Setting(_BEFORE_PROMPT, _FEW_SHOT, repeat_penalty=1.3),
    "few-shot-light-penalty": Setting(_BEFORE_PROMPT, _FEW_SHOT, repeat_penalty=1.1),
    "direct-few-shot-light-penalty": Setting(
        "You are a helpful voice assistant. Answer each question directly and correctly, in one "
        "short sentence in English.", _FEW_SHOT, repeat_penalty=1.1),
    "few-shot-greedy": Setting(_BEFORE_PROMPT, _FEW_SHOT, temperature=0.0),
    "few-shot-short": Setting(_BEFORE_PROMPT, _FEW_SHOT, max_tokens=40),
}

_NON_ENGLISH = frozenset("""la le les est et une des du au aux el los las es y un una und der die das ist
nicht il di che è sono ein eine""".split())
_WORDS = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?", re.UNICODE)


def load_questions() -> list[dict[str, Any]]:
    return json.loads(resources.files("quillman.loadtest").joinpath("data/qa_set.json").read_text())


def correct(reply: str, facts: list[list[str]]) -> bool:
    text = reply.lower()
    return all(any(_fact_in(alt, text) for alt in group) for group in facts)


def _fact_in(fact: str, text: str) -> bool:
    return re.search(rf"(?<![a-z0-9]){re.escape(fact.lower())}", text) is not None


def english(reply: str) -> bool:
    words = [w.lower() for w in _WORDS.findall(reply)]
    if not words:
        return False
    foreign = sum(w in _NON_ENGLISH for w in words) / len(words)
    letters = [c for c in reply if c.isalpha()]
    non_ascii = sum(not c.isascii() for c in letters) / max(len(letters), 1)
    return foreign < 0.08 and non_ascii < 0.02


def looping(reply: str, n: int = 3, times: int = 3) -> bool:
    words = [w.lower() for w in _WORDS.findall(reply)]
    grams: dict[tuple[str, ...], int] = {}
    for i in range(len(words) - n + 1):
        gram = tuple(words[i:i + n])
        grams[gram] = grams.get(gram, 0) + 1
        if grams[gram] >= times:
            return True
    return False


def messages(setting: Setting, question: str, history: list[tuple[str, str]] = ()) -> list[dict]:
    chat = [{"role": "system", "content": setting.instructions}]
    for user, assistant in (*setting.few_shot, *history):
        chat += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return chat + [{"role": "user", "content": question}]


def params(setting: Setting) -> GenerationParams:
    return GenerationParams(max_tokens=setting.max_tokens, temperature=setting.temperature, top_p=0.9,
                            repeat_penalty=setting.repeat_penalty, frequency_penalty=setting.frequency_penalty)


async def generate(engine, request: GenerationRequest) -> tuple[str, list[ToolCallDelta]]:
    text, calls = [], []
    async for delta in engine.stream(request):
        if isinstance(delta, str):
            text.append(delta)
        elif isinstance(delta, ToolCallDelta):
            calls.append(delta)
    return "".join(text).strip(), calls


async def score_setting(engine, name: str, setting: Setting, questions: list[dict], history: bool) -> dict:
    if history:  # one conversation: each question follows the previous one and its answer
        replies, previous = [], []
        for entry in questions:
            reply, _ = await generate(engine, GenerationRequest(messages(setting, entry["q"], previous[-1:]),
                                                                params(setting)))
            replies.append(reply)
            previous.append((entry["q"], reply))
    else:
        replies = [r for r, _ in await asyncio.gather(*(
            generate(engine, GenerationRequest(messages(setting, entry["q"]), params(setting)))
            for entry in questions))]
    with_facts = [(e, r) for e, r in zip(questions, replies) if e["facts"]]
    n = len(replies)
    return {
        "setting": name, "history": history, "questions": n,
        "correct_pct": round(100 * sum(correct(r, e["facts"]) for e, r in with_facts) / len(with_facts), 1),
        "english_pct": round(100 * sum(map(english, replies)) / n, 1),
        "loop_pct": round(100 * sum(map(looping, replies)) / n, 1),
        "mean_words": round(sum(len(r.split()) for r in replies) / n, 1),
        "replies": [{"q": e["q"], "reply": r, "correct": correct(r, e["facts"])} for e, r in zip(questions, replies)],
    }


WEATHER = Tool("get_weather", "Get the current weather for a city.", {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
CALCULATOR = Tool("calculate", "Evaluate an arithmetic expression such as 3 * (4 + 5).", {
    "type": "object", "properties": {"expression": {"type": "string", "minLength": 1}}, "required": ["expression"]})
CITIES = ["Paris", "London", "Berlin", "Madrid", "Rome", "Tokyo", "Sydney", "Toronto", "Chicago", "Moscow",
          "Cairo", "Lisbon", "Dublin", "Vienna", "Prague", "Oslo", "Athens", "Seoul", "Mumbai", "Boston",
          "Denver", "Miami", "Zurich", "Warsaw", "Nairobi"]
WEATHER_FORMS = ["What's the weather in {}?", "How warm is it in {} today?", "Is it raining in {}?"]
CALC_FORMS = ["What is {} plus {}?", "What is {} times {}?", "Calculate {} minus {}.", "What's {} divided by {}?"]


def tool_cases(n: int) -> list[tuple[str, Tool, list[str]]]:
    """(question, tool, values its arguments must hold), alternating weather and arithmetic."""
    cases = []
    for i in range(n):
        if i % 2 == 0:
            city = CITIES[(i // 2) % len(CITIES)]
            cases.append((WEATHER_FORMS[i % len(WEATHER_FORMS)].format(city), WEATHER, [city.lower()]))
        else:
            a, b = 3 + (i * 7) % 90, 2 + (i * 13) % 40
            cases.append((CALC_FORMS[i % len(CALC_FORMS)].format(a, b), CALCULATOR, [str(a), str(b)]))
    return cases


async def score_tool_calls(engine, setting: Setting, n: int) -> dict:
    cases = tool_cases(n)
    results = await asyncio.gather(*(generate(engine, GenerationRequest(
        messages(setting, question), params(setting), tools=(WEATHER, CALCULATOR), tool_choice=tool.name))
        for question, tool, _ in cases))
    records = []
    for (question, tool, values), (_, calls) in zip(cases, results):
        arguments = "".join(c.arguments for c in calls)
        try:
            parsed = json.loads(arguments)
            valid = isinstance(parsed, dict) and all(k in parsed for k in tool.parameters["required"])
        except json.JSONDecodeError:
            valid = False
        right = valid and all(v in arguments.lower() for v in values)
        records.append({"q": question, "arguments": arguments, "valid": valid, "values_right": right})
    return {"calls": n, "schema_valid_pct": round(100 * sum(r["valid"] for r in records) / n, 1),
            "values_right_pct": round(100 * sum(r["values_right"] for r in records) / n, 1),
            "weather_values_right_pct": round(100 * sum(r["values_right"] for r in records[::2]) / len(records[::2]), 1),
            "arithmetic_values_right_pct": round(100 * sum(r["values_right"] for r in records[1::2]) / max(len(records[1::2]), 1), 1),
            "records": records}


def load_engine(model: str, slots: int):
    from quillman.engines.llm.llama_batch import BatchedLlamaCpp
    from quillman.engines.llm.llama_cpp import resolve_gguf_path

    return BatchedLlamaCpp(resolve_gguf_path(model), n_threads=1, n_threads_batch=2, n_ctx=1024,
                           n_slots=slots, prefill_chunk_tokens=256)


async def run(args: argparse.Namespace) -> dict:
    settings = {**SETTINGS, "default": _server_default()}
    names = args.settings.split(",")
    unknown = [name for name in names if name not in settings]
    if unknown:
        raise SystemExit(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(settings)}")
    engine = load_engine(args.model, args.slots)
    questions = load_questions()[:args.limit]
    report: dict[str, Any] = {"model": args.model, "settings": {}, "scores": []}
    try:
        for name in names:
            for history in ((False, True) if args.history else (False,)):
                started = time.perf_counter()
                scores = await score_setting(engine, name, settings[name], questions, history)
                scores["seconds"] = round(time.perf_counter() - started, 1)
                report["scores"].append(scores)
                print(f"{name:26s} history={history!s:5s} correct {scores['correct_pct']:5.1f}%  english "
                      f"{scores['english_pct']:5.1f}%  loop {scores['loop_pct']:5.1f}%  words "
                      f"{scores['mean_words']:5.1f}  ({scores['seconds']} s)", flush=True)
            report["settings"][name] = settings[name].__dict__
        if args.tool_calls:
            report["tool_calls"] = await score_tool_calls(engine, settings[names[-1]], args.tool_calls)
            calls = report["tool_calls"]
            print(f"forced calls ({names[-1]}): {calls['calls']}, schema-valid {calls['schema_valid_pct']}%, "
                  f"values right {calls['values_right_pct']}% (city {calls['weather_values_right_pct']}%, "
                  f"numbers {calls['arithmetic_values_right_pct']}%)", flush=True)
    finally:
        engine.close()
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quillman bench qa", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="llm.model: 'smollm2-135m' or a GGUF path")
    parser.add_argument("--settings", default="before,default", help=f"comma-separated; 'default' is the "
                        f"server's config, others: {', '.join(SETTINGS)}")
    parser.add_argument("--history", action="store_true", help="also ask each question after the previous one")
    parser.add_argument("--tool-calls", type=int, default=0, help="forced calls to score (argument values)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N questions")
    parser.add_argument("--slots", type=int, default=8, help="sequences batched at once")
    parser.add_argument("--json", help="write the report (with every reply) here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    report = asyncio.run(run(args))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
