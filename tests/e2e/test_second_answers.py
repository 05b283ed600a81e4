"""The reply answers the question just asked, not an earlier one, on the default server.

Seen by a new user: "What is the capital city of France?" -> "... Paris.", then "Tell me a short
fact about the moon." -> "The capital city of France is Paris." again. The cause: the assistant's
item joined the conversation when its response *ended*, so a user item created while the reply
was still being spoken came before it, and the next prompt ended on the old answer, which the
model repeated. These conversations run through the official ``openai`` SDK against the real graph
(default config: semantic_vad, the batched llama.cpp engine) and judge each second reply by its
key words.
"""

from __future__ import annotations

import asyncio
import re

import pytest

from quillman_bench.speech import espeak, with_silence
from sdk import sdk_client as client
from sdk import spoken_reply, until_done

pytestmark = pytest.mark.e2e

# (first question, a word its answer has), (second question, words one of which its answer has)
CONVERSATIONS = [
    (("What is the capital city of France?", "paris"), ("Tell me a short fact about the moon.", {"moon"})),
    (("What is the capital of Germany?", "berlin"), ("How many legs does a spider have?", {"eight", "8"})),
    (("What colour is a banana?", "yellow"), ("What is the largest ocean on Earth?", {"pacific", "ocean"})),
]
VOICES = ["en-us", "en-gb", "en-us+f3"]


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def check_second_reply(first: tuple[str, str], second: tuple[str, set[str]], replies: list[str]) -> None:
    (_, first_word), (question, second_words) = first, second
    assert first_word not in words(replies[1]), f"{question!r} was answered with the earlier answer: {replies}"
    assert words(replies[1]) & second_words, f"{question!r} -> {replies[1]!r} (expected one of {second_words})"


async def test_a_question_asked_while_the_reply_plays_gets_its_own_answer(server_url):
    """The user's next item arrives while the first reply is still being spoken (the client
    sends it as soon as the reply starts); the second response answers it."""
    (first, first_word), (second, second_words) = CONVERSATIONS[0]
    async with client(server_url).realtime.connect(model="quillman") as connection:
        await connection.conversation.item.create(item={
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": first}]})
        await connection.response.create()
        sent = asyncio.Event()

        async def ask_next(event) -> None:
            if event.type == "response.created" and not sent.is_set():
                sent.set()
                await connection.conversation.item.create(item={
                    "type": "message", "role": "user", "content": [{"type": "input_text", "text": second}]})

        reply1 = await until_done(connection, ask_next)
        await connection.response.create()
        reply2 = await until_done(connection)
    check_second_reply((first, first_word), (second, second_words), [reply1.transcript, reply2.transcript])


async def test_spoken_two_turn_conversations_answer_the_second_question(server_url):
    """Three spoken conversations in a row on one server (three voices), default turn
    detection: each second reply is about the second question."""
    for (first, second), voice in zip(CONVERSATIONS, VOICES):
        replies = []
        async with client(server_url).realtime.connect(model="quillman") as connection:
            for question, _ in (first, second):
                reply = await spoken_reply(connection, with_silence(espeak(question, voice=voice), 24000, before_s=0.4))
                assert reply.response.status == "completed", reply.response.status_details
                replies.append(reply.transcript)
        check_second_reply(first, second, replies)
