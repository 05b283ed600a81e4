"""``quillman bench qa``: are the default model's answers worth hearing? Scored per setting.

Runs the LLM engine directly (no server, no Ray) over the QA set (``data/qa_set.json``:
everyday questions in seven categories, each with accepted key facts, plus open requests
without facts) under named settings (system prompt, few-shot turns, penalties, reply length,
temperature). The set was split once, per category, into a **tuning** half (prompts, examples
and sampling are chosen on it) and a **test** half (the number to report); every score is given
for both halves and per category:

- correct: every key fact of the question is in the reply (any accepted spelling; a number is
  not found inside another number, "eight" not inside "forty-eight");
- english: the reply is English (no non-English function words, almost no non-ASCII letters);
- loop: a repetition loop (a 3-word sequence three times or more);
- bleed: a fact of the few-shot examples (a number or a name in an example answer) appears in
  a reply to a question that neither mentions it nor has it as an answer;
- words: reply length.

``--history`` asks each question after the previous question and its answer (the same
conversation). ``--tool-calls`` scores function calls on the tool set (``data/tool_set.json``:
three tools, requests with the expected tool and argument values, split the same way) with
``tool_choice`` "required" and "auto": right tool, schema-valid, arguments right, and for
"auto" whether a tool was called exactly when one should be.

  quillman bench qa --settings before,default --history --tool-calls --json qa.json
  quillman bench qa --split tune --settings default,some-candidate --repeats 2
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

SPLITS = ("tune", "test")


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
# The examples shipped before issue 21 (chosen on the old 52 questions).
_OLD_FEW_SHOT = (("What is the capital of Portugal?", "The capital of Portugal is Lisbon."),
                 ("How many days are in a year?", "A year has 365 days."))


def _server_default() -> Setting:
    """What the server ships (config defaults): the setting the bench's "default" measures."""
    llm, session = LlmConfig(), SessionConfig()
    return Setting(session.instructions, tuple(map(tuple, session.few_shot)), llm.repeat_penalty,
                   llm.frequency_penalty, llm.max_tokens, llm.temperature)


# Candidates of issue 21, chosen between on the tuning half only. The examples hold no number
# and no name a question of the set could want (bleed), and show the form: one sentence that
# restates the question with the answer.
_FACT_FEW_SHOT = (("What color is a ripe banana?", "A ripe banana is yellow."),
                  ("How do I keep bread fresh?", "Keep bread in a sealed bag at room temperature."))
_BREAD_FEW_SHOT = (("What color is a ripe banana?", "A ripe banana is yellow."),
                   ("How do I keep bread fresh?", "Keep bread in a sealed bag or a bread box."))
_THREE_FEW_SHOT = (("What color is a ripe banana?", "A ripe banana is yellow."),
                   ("How do I keep bread fresh?", "Keep bread in a sealed bag at room temperature."),
                   ("What does 'enormous' mean?", "Enormous means very big."))
_TERSE_PROMPT = ("You are a helpful voice assistant. Answer the question directly in one short English "
                 "sentence that states the answer. No lists, markdown or emoji.")

# SmolLM2's own default system prompt (its chat template's), plus the reply form.
_SMOL_PROMPT = ("You are a helpful AI assistant named SmolLM, trained by Hugging Face. Answer in one or two "
                "short spoken English sentences, without lists, markdown or emoji.")

SETTINGS: dict[str, Setting] = {
    "before": Setting(_BEFORE_PROMPT),
    "old-default": Setting(_BEFORE_PROMPT, _OLD_FEW_SHOT, repeat_penalty=1.1),
    "old-few-shot-greedy": Setting(_BEFORE_PROMPT, _OLD_FEW_SHOT, repeat_penalty=1.1, temperature=0.0),
    "old-no-penalty": Setting(_BEFORE_PROMPT, _OLD_FEW_SHOT),
    "fact-shot": Setting(_BEFORE_PROMPT, _FACT_FEW_SHOT, repeat_penalty=1.1),
    "bread-shot": Setting(_BEFORE_PROMPT, _BREAD_FEW_SHOT, repeat_penalty=1.1),
    "fact-shot-greedy": Setting(_BEFORE_PROMPT, _FACT_FEW_SHOT, repeat_penalty=1.1, temperature=0.0),
    "three-shot": Setting(_BEFORE_PROMPT, _THREE_FEW_SHOT, repeat_penalty=1.1),
    "three-shot-greedy": Setting(_BEFORE_PROMPT, _THREE_FEW_SHOT, repeat_penalty=1.1, temperature=0.0),
    "terse-fact-shot": Setting(_TERSE_PROMPT, _FACT_FEW_SHOT, repeat_penalty=1.1),
    "zero-shot-greedy": Setting(_BEFORE_PROMPT, (), repeat_penalty=1.1, temperature=0.0),
    "smol-fact-shot": Setting(_SMOL_PROMPT, _FACT_FEW_SHOT, repeat_penalty=1.1),
    "smol-old-shot": Setting(_SMOL_PROMPT, _OLD_FEW_SHOT, repeat_penalty=1.1),
}

# --- scoring ----------------------------------------------------------------------------------

_NON_ENGLISH = frozenset("""la le les est et une des du au aux el los las es y un una und der die das ist
nicht il di che è sono ein eine""".split())
_WORDS = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?", re.UNICODE)
_DIGIT_COMMA = re.compile(r"(?<=\d),(?=\d{3}\b)")
_UNITS = "one|two|three|four|five|six|seven|eight|nine"


def load_questions(split: str | None = None) -> list[dict[str, Any]]:
    """The QA set, or one half of it ("tune" / "test")."""
    questions = json.loads(resources.files("quillman_bench").joinpath("data/qa_set.json").read_text())
    return [q for q in questions if split in (None, q["split"])]


def _normalize(text: str) -> str:
    return _DIGIT_COMMA.sub("", text.lower())


def _fact_pattern(fact: str) -> str:
    """A fact as a regex: whole words (a plural -s/-es allowed), or a prefix when it ends with
    "*"; never inside a longer number ("24" is not in "124" or "240", "eight" not in
    "forty-eight", "forty" not in "forty-two")."""
    fact = _normalize(fact)
    if fact.endswith("*"):
        return rf"(?<![a-z0-9-]){re.escape(fact[:-1])}"
    return rf"(?<![a-z0-9-]){re.escape(fact)}(?:s|es)?(?![a-z0-9]|-(?:{_UNITS})\b|\.\d)"


def fact_in(fact: str, text: str) -> bool:
    return re.search(_fact_pattern(fact), _normalize(text)) is not None


def correct(reply: str, facts: list[list[str]]) -> bool:
    return bool(facts) and all(any(fact_in(alt, reply) for alt in group) for group in facts)


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


_MARKER = re.compile(r"\d+(?:[.,]\d+)*|(?<!^)(?<![.!?] )\b[A-Z][a-z]+")
_STOP = frozenset("""a an the is are was were be been has have had do does did of in on at to for from by
with and or but not no it its this that these those there their they them you your i me my we our he she
his her as so if than then very can could will would should may might must just about into out up down
over under more most less one some any each every all what which who whom whose when where why how""".split())


def example_facts(few_shot: tuple[tuple[str, str], ...]) -> list[str]:
    """What an example answer teaches that could surface elsewhere: its numbers, its names
    (capitalized words other than a sentence's first) and the words it adds to its question."""
    found: list[str] = []
    for question, answer in few_shot:
        asked = {w.lower() for w in _WORDS.findall(question)}
        markers = _MARKER.findall(answer.strip()) + [
            w for w in _WORDS.findall(answer) if w.lower() not in asked and w.lower() not in _STOP]
        for marker in markers:
            if marker.lower() not in found:
                found.append(marker.lower())
    return found


def bleed(reply: str, entry: dict[str, Any], markers: list[str]) -> list[str]:
    """The example facts in ``reply`` that the question neither mentions nor has as an answer."""
    own = " ".join([entry["q"], *(alt for group in entry["facts"] for alt in group)])
    return [m for m in markers if fact_in(m, reply) and not fact_in(m, own)]


# --- running ----------------------------------------------------------------------------------

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


def _pct(hits: int, n: int) -> float | None:
    return round(100 * hits / n, 1) if n else None


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Scores of a list of scored replies (see :func:`score_reply`)."""
    with_facts = [r for r in records if r["facts"]]
    n = len(records)
    return {"questions": n, "scored": len(with_facts),
            "correct_pct": _pct(sum(r["correct"] for r in with_facts), len(with_facts)),
            "english_pct": _pct(sum(r["english"] for r in records), n),
            "loop_pct": _pct(sum(r["loop"] for r in records), n),
            "bleed_pct": _pct(sum(bool(r["bleed"]) for r in records), n),
            "mean_words": round(sum(len(r["reply"].split()) for r in records) / n, 1) if n else None}


def score_reply(entry: dict[str, Any], reply: str, markers: list[str]) -> dict[str, Any]:
    return {"q": entry["q"], "category": entry["category"], "split": entry["split"], "reply": reply,
            "facts": bool(entry["facts"]), "correct": correct(reply, entry["facts"]),
            "english": english(reply), "loop": looping(reply), "bleed": bleed(reply, entry, markers)}


def breakdown(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per split (and both), each with its per-category correct %."""
    out: dict[str, Any] = {}
    for split in (*SPLITS, "all"):
        part = [r for r in records if split in ("all", r["split"])]
        if not part:
            continue
        scores = summarize(part)
        scores["by_category"] = {cat: summarize([r for r in part if r["category"] == cat])["correct_pct"]
                                 for cat in dict.fromkeys(r["category"] for r in part)}
        out[split] = scores
    return out


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
    markers = example_facts(setting.few_shot)
    records = [score_reply(e, r, markers) for e, r in zip(questions, replies)]
    return {"setting": name, "history": history, "example_facts": markers, **breakdown(records),
            "replies": records}


# --- tool calls -------------------------------------------------------------------------------

def load_tool_set() -> tuple[tuple[Tool, ...], list[dict[str, Any]]]:
    data = json.loads(resources.files("quillman_bench").joinpath("data/tool_set.json").read_text())
    tools = tuple(Tool(t["name"], t["description"], t["parameters"]) for t in data["tools"])
    return tools, data["requests"]


_UNIT_SECONDS = {"seconds": 1, "minutes": 60, "hours": 3600}


def arguments_right(tool: str, arguments: dict[str, Any], expect: dict[str, Any]) -> bool:
    """Whether a call's arguments hold the values the request asked for. Expected keys:
    get_weather: city (accepted names; "Paris, France" counts as Paris), unit (only when asked);
    set_timer: seconds (duration x unit), label (word groups, only when the user gave one);
    convert_currency: amount, from_currency, to_currency."""
    try:
        if tool == "get_weather":
            city = str(arguments.get("city", "")).split(",")[0].strip().lower()
            return (city in {c.lower() for c in expect["city"]}
                    and ("unit" not in expect or arguments.get("unit") == expect["unit"]))
        if tool == "set_timer":
            seconds = arguments["duration"] * _UNIT_SECONDS[arguments["unit"]]
            label = str(arguments.get("label", ""))
            return seconds == expect["seconds"] and all(
                any(fact_in(word, label) for word in group) for group in expect.get("label", []))
        if tool == "convert_currency":
            return (abs(float(arguments["amount"]) - expect["amount"]) < 1e-9
                    and arguments["from_currency"] == expect["from_currency"]
                    and arguments["to_currency"] == expect["to_currency"])
    except (KeyError, TypeError, ValueError):
        return False
    raise ValueError(f"no expectations known for tool {tool!r}")


def score_call(request: dict[str, Any], tools: tuple[Tool, ...], text: str,
               calls: list[ToolCallDelta]) -> dict[str, Any]:
    import jsonschema

    name = next((c.name for c in calls if c.name), None)
    raw = "".join(c.arguments for c in calls)
    schema = next((t.parameters for t in tools if t.name == name), None)
    try:
        arguments = json.loads(raw) if name else None
        valid = schema is not None and isinstance(arguments, dict)
        if valid:
            jsonschema.validate(arguments, schema)
    except (json.JSONDecodeError, jsonschema.ValidationError):
        arguments, valid = None, False
    right_tool = name == request["tool"]
    return {"q": request["q"], "split": request["split"], "expected_tool": request["tool"], "tool": name,
            "arguments": raw, "text": text, "right_tool": right_tool, "valid": valid,
            "arguments_right": bool(valid and right_tool and request["tool"]
                                    and arguments_right(name, arguments, request["expect"]))}


def summarize_calls(records: list[dict[str, Any]], choice: str) -> dict[str, Any]:
    should = [r for r in records if r["expected_tool"]]
    out: dict[str, Any] = {"requests": len(records),
                           "right_tool_pct": _pct(sum(r["right_tool"] for r in should), len(should)),
                           "schema_valid_pct": _pct(sum(r["valid"] for r in should), len(should)),
                           "arguments_right_pct": _pct(sum(r["arguments_right"] for r in should), len(should))}
    if choice == "auto":
        should_not = [r for r in records if not r["expected_tool"]]
        out["called_when_should_pct"] = _pct(sum(r["tool"] is not None for r in should), len(should))
        out["no_call_when_should_not_pct"] = _pct(sum(r["tool"] is None for r in should_not), len(should_not))
    out["by_tool"] = {tool: _pct(sum(r["arguments_right"] for r in should if r["expected_tool"] == tool),
                                 sum(r["expected_tool"] == tool for r in should))
                      for tool in dict.fromkeys(r["expected_tool"] for r in should)}
    return out


async def score_tool_calls(engine, setting: Setting, choice: str, split: str | None) -> dict:
    tools, requests = load_tool_set()
    requests = [r for r in requests if split in (None, r["split"]) and (choice == "auto" or r["tool"])]
    results = await asyncio.gather(*(generate(engine, GenerationRequest(
        messages(setting, r["q"]), params(setting), tools=tools, tool_choice=choice)) for r in requests))
    records = [score_call(r, tools, text, calls) for r, (text, calls) in zip(requests, results)]
    out: dict[str, Any] = {"tool_choice": choice}
    for part in (*SPLITS, "all"):
        subset = [r for r in records if part in ("all", r["split"])]
        if subset:
            out[part] = summarize_calls(subset, choice)
    out["records"] = records
    return out


def load_engine(model: str, slots: int):
    from quillman.engines.llm.llama_batch import BatchedLlamaCpp
    from quillman.engines.llm.llama_cpp import resolve_gguf_path

    return BatchedLlamaCpp(resolve_gguf_path(model), n_threads=1, n_threads_batch=2, n_ctx=2048,
                           n_slots=slots, prefill_chunk_tokens=256)


def _fmt(value: float | None) -> str:
    return "   -  " if value is None else f"{value:5.1f}%"


def print_scores(name: str, scores: dict[str, Any]) -> None:
    for split in (*SPLITS, "all"):
        if split not in scores:
            continue
        s = scores[split]
        cats = "  ".join(f"{cat} {_fmt(pct).strip()}" for cat, pct in s["by_category"].items() if pct is not None)
        print(f"{name:28s} {'history' if scores['history'] else 'single':7s} {split:4s} correct {_fmt(s['correct_pct'])} "
              f"english {_fmt(s['english_pct'])} loop {_fmt(s['loop_pct'])} bleed {_fmt(s['bleed_pct'])} "
              f"words {s['mean_words']:5.1f} | {cats}", flush=True)


def print_calls(name: str, calls: dict[str, Any]) -> None:
    for split in (*SPLITS, "all"):
        if split not in calls:
            continue
        c = calls[split]
        auto = (f"  called when should {_fmt(c['called_when_should_pct'])} no call when should not "
                f"{_fmt(c['no_call_when_should_not_pct'])}" if calls["tool_choice"] == "auto" else "")
        per_tool = "  ".join(f"{tool} {_fmt(pct).strip()}" for tool, pct in c["by_tool"].items())
        print(f"tool calls {calls['tool_choice']:8s} ({name}) {split:4s} right tool {_fmt(c['right_tool_pct'])} "
              f"schema-valid {_fmt(c['schema_valid_pct'])} arguments right {_fmt(c['arguments_right_pct'])}"
              f"{auto} | args right: {per_tool}", flush=True)


async def run(args: argparse.Namespace) -> dict:
    settings = {**SETTINGS, "default": _server_default()}
    names = args.settings.split(",") if args.settings else []
    unknown = [name for name in names if name not in settings]
    if unknown:
        raise SystemExit(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(settings)}")
    split = None if args.split == "both" else args.split
    engine = load_engine(args.model, args.slots)
    questions = load_questions(split)[:args.limit]
    report: dict[str, Any] = {"model": args.model, "split": args.split, "settings": {}, "scores": [],
                              "tool_calls": []}
    try:
        for name in names:
            report["settings"][name] = settings[name].__dict__
            for repeat in range(args.repeats):
                for history in ((False, True) if args.history else (False,)):
                    started = time.perf_counter()
                    scores = await score_setting(engine, name, settings[name], questions, history)
                    scores["seconds"] = round(time.perf_counter() - started, 1)
                    scores["repeat"] = repeat
                    report["scores"].append(scores)
                    print_scores(name, scores)
        if args.tool_calls:
            tool_setting = args.tool_setting or (names[-1] if names else "default")
            for choice in args.tool_choice.split(","):
                for repeat in range(args.repeats):
                    calls = await score_tool_calls(engine, settings[tool_setting], choice, split)
                    calls["setting"], calls["repeat"] = tool_setting, repeat
                    report["tool_calls"].append(calls)
                    print_calls(tool_setting, calls)
    finally:
        engine.close()
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quillman bench qa", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="llm.model: 'smollm2-135m' or a GGUF path")
    parser.add_argument("--settings", default="before,default", help=f"comma-separated ('' for none); "
                        f"'default' is the server's config, others: {', '.join(SETTINGS)}")
    parser.add_argument("--split", choices=("tune", "test", "both"), default="both",
                        help="which half of the QA and tool sets (scores are always given per half)")
    parser.add_argument("--history", action="store_true", help="also ask each question after the previous one")
    parser.add_argument("--tool-calls", action="store_true", help="also score function calls on the tool set")
    parser.add_argument("--tool-choice", default="required,auto", help="tool_choice values to score")
    parser.add_argument("--tool-setting", help="the setting whose prompt the tool calls use (default: the last)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each setting (sampling varies)")
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
