"""``quillman bench replay``: does each second reply answer the second question?

Runs many two-turn text conversations against one long-running server and counts *replayed
answers*: a second reply that repeats the first one, or that answers the first question instead
of the second (it has the first question's key words and none of the second's). Half of the
conversations ask the second question while the first reply is still being produced (the user
talks on, or a client sends its next item at once), the case that used to make the prompt end on
the old answer; the other half wait for ``response.done``.

  quillman bench replay --start --conversations 200 --concurrency 4 --json replay.json

Reported: conversations run, replayed answers (each listed), second replies on topic (key words;
the 135M model is not always right, so this is below 100 % without a fault), failed turns.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import sys
from dataclasses import asdict, dataclass
from typing import Any

from quillman.client import DEFAULT_URL, RealtimeClient
from quillman_bench.server_process import add_server_arguments, realtime_server

# Questions with the words an answer about them has (any one: on topic).
TOPICS: list[tuple[str, set[str]]] = [
    ("What is the capital city of France?", {"paris", "france"}),
    ("Tell me a short fact about the moon.", {"moon", "lunar"}),
    ("Name a fruit that is yellow.", {"banana", "lemon", "fruit", "yellow"}),
    ("How many legs does a spider have?", {"eight", "8", "spider", "legs"}),
    ("What is the largest ocean on Earth?", {"pacific", "ocean"}),
    ("What colour is the sky on a clear day?", {"blue", "sky"}),
    ("Who wrote Romeo and Juliet?", {"shakespeare", "william"}),
    ("What is the capital of Japan?", {"tokyo", "japan"}),
    ("How many days are in a week?", {"seven", "7", "week"}),
    ("What do bees make?", {"honey", "bees", "bee"}),
    ("What is the boiling point of water?", {"100", "boiling", "water", "212"}),
    ("Which planet is known as the red planet?", {"mars", "planet"}),
    ("What animal says moo?", {"cow", "cows", "cattle", "moo"}),
    ("What is the capital of Italy?", {"rome", "italy"}),
    ("How many wheels does a bicycle have?", {"two", "2", "bicycle", "wheels"}),
    ("What is frozen water called?", {"ice", "frozen", "water"}),
]


@dataclass
class Conversation:
    first: str
    second: str
    overlapped: bool  # the second question was sent while the first reply was in progress
    reply1: str = ""
    reply2: str = ""
    status: str = "completed"
    replayed: bool = False
    on_topic: bool = False


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def _norm(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def judge(conversation: Conversation, topics: dict[str, set[str]]) -> None:
    """Replayed: the second reply repeats the first, or is about the first question and not
    the second (a reply on both topics is not counted)."""
    first_words, second_words = topics[conversation.first], topics[conversation.second]
    reply2 = _words(conversation.reply2)
    conversation.on_topic = bool(reply2 & second_words)
    repeated = bool(conversation.reply2.strip()) and _norm(conversation.reply2) == _norm(conversation.reply1)
    conversation.replayed = repeated or (bool(reply2 & (first_words - second_words)) and not conversation.on_topic)


async def _text_turn(client: RealtimeClient, text: str, respond: bool = True) -> None:
    await client.send({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}})
    if respond:
        await client.send({"type": "response.create"})


async def run_conversation(url: str, conversation: Conversation, audio: bool) -> Conversation:
    client = RealtimeClient(url)
    try:
        await client.connect(session={"output_modalities": ["audio" if audio else "text"]}, retry_refused_s=60)
        if conversation.overlapped:
            await _text_turn(client, conversation.first)
            await client.wait_for("response.created")
            await _text_turn(client, conversation.second, respond=False)  # while reply 1 runs
            first = await client.collect_turn()
            await client.send({"type": "response.create"})
        else:
            await _text_turn(client, conversation.first)
            first = await client.collect_turn()
            await _text_turn(client, conversation.second)
        second = await client.collect_turn()
        conversation.reply1, conversation.reply2 = first.reply_text, second.reply_text
        if first.status != "completed" or second.status != "completed":
            conversation.status = f"{first.status}/{second.status}"
    except Exception as exc:  # noqa: BLE001 - one conversation's failure is counted, not fatal
        conversation.status = f"error: {exc!r}"[:200]
    finally:
        await client.close()
    return conversation


async def run(url: str, conversations: int, concurrency: int, audio: bool, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    topics = dict(TOPICS)
    plan = []
    for index in range(conversations):
        first, second = rng.sample(list(topics), 2)
        plan.append(Conversation(first, second, overlapped=index % 2 == 1))
    queue: asyncio.Queue[Conversation] = asyncio.Queue()
    for conversation in plan:
        queue.put_nowait(conversation)

    async def worker() -> None:
        while not queue.empty():
            conversation = queue.get_nowait()
            await run_conversation(url, conversation, audio)
            judge(conversation, topics)
            sys.stderr.write(f"\r{sum(c.reply2 != '' or c.status != 'completed' for c in plan)}/{len(plan)}")

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    sys.stderr.write("\n")
    completed = [c for c in plan if c.status == "completed"]
    replayed = [c for c in completed if c.replayed]
    return {
        "conversations": len(plan), "completed": len(completed), "failed": len(plan) - len(completed),
        "replayed": len(replayed),
        "replayed_overlapped": sum(c.overlapped for c in replayed),
        "second_on_topic_pct": round(100 * sum(c.on_topic for c in completed) / max(len(completed), 1), 1),
        "replayed_examples": [asdict(c) for c in replayed[:20]],
        "failures": [asdict(c) for c in plan if c.status != "completed"][:20],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="quillman bench replay", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_server_arguments(parser, DEFAULT_URL)
    parser.add_argument("--conversations", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--audio", action="store_true", help="spoken replies (default: text, faster)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args(argv)
    with realtime_server(args.url, args.start, args.config) as url:
        report = asyncio.run(run(url, args.conversations, args.concurrency, args.audio, args.seed))
    summary = {k: v for k, v in report.items() if not isinstance(v, list)}
    print(json.dumps(summary, indent=2))
    for example in report["replayed_examples"]:
        print(f"REPLAYED: {example['first']!r} -> {example['reply1']!r}; {example['second']!r} -> {example['reply2']!r}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0 if report["replayed"] == 0 and report["failed"] == 0 else 1
