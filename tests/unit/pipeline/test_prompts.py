"""The exact messages handed to the LLM, turn after turn, in one session.

A reply that answers the wrong question starts with a wrong prompt or a wrong cache; this file
pins the prompt: for a text turn, a spoken turn started speculatively at a pause and committed,
a speculation the user talked over (cancelled unseen), a reply cut by barge-in and truncated to
what was heard, a question created while a reply runs, and a tool call with its output. The
engine side (the cache) is the differential test of the batched engine.
"""

from __future__ import annotations

import json

import pytest

from quillman.config import SessionConfig
from quillman.engines.llm.base import ToolCallDelta

pytestmark = pytest.mark.usefixtures("hang_guard")

CONFIG = SessionConfig(prefill_during_speech=False)  # scripted transcripts go to the turns in order
NOTE = ("system", CONFIG.question_note)
HEAD = [("system", CONFIG.instructions)] + [
    (role, text) for question, answer in CONFIG.few_shot for role, text in (("user", question), ("assistant", answer))]
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather of a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def prompt(backends, call: int) -> list[tuple[str, str]]:
    """Call ``call``'s messages as (role, content); a tool call as ("call", its JSON)."""
    out = []
    for message in backends.llm_calls[call].args["messages"]:
        if message.get("tool_calls"):
            out.append(("call", json.dumps([c["function"] for c in message["tool_calls"]])))
        else:
            out.append((message["role"], message["content"]))
    return out


async def test_the_prompt_of_each_kind_of_turn(make_driver, backends, paused_speech_24k, short_speech_24k):
    driver = await make_driver(CONFIG)
    # 1. A text turn.
    backends.replies = {0: "Paris is the capital."}
    await driver.text_turn("What is the capital of France?")
    assert prompt(backends, 0) == HEAD + [("user", "What is the capital of France?")]
    history = [("user", "What is the capital of France?"), ("assistant", "Paris is the capital.")]

    # 2. A spoken turn with an inner pause: a speculation at the pause on the first segment's
    # transcript (cancelled unseen when the user goes on), then the committed reply on both.
    backends.transcripts = ["tell me", "about the moon"]
    backends.reply = "The moon orbits the Earth."
    calls_before = len(backends.llm_calls)
    await driver.append(paused_speech_24k.pcm, rate=paused_speech_24k.rate)
    await driver.wait_for("response.done", count=2)
    await driver.settle()
    spoken = [prompt(backends, i) for i in range(calls_before, len(backends.llm_calls))]
    final = HEAD + history + [NOTE, ("user", "tell me about the moon")]
    assert spoken[-1] == final
    for speculation in spoken[:-1]:  # any speculation saw the same history, the partial text
        assert speculation[:-1] == final[:-1] and speculation[-1] in (("user", "tell me"), final[-1])
    history += [NOTE, ("user", "tell me about the moon"), ("assistant", "The moon orbits the Earth.")]

    # 3. A question created while a reply runs: the reply stays after what it answered.
    backends.llm_hang_calls = {len(backends.llm_calls): 0}
    backends.replies = {len(backends.llm_calls): "It is blue.", len(backends.llm_calls) + 1: "Four legs."}
    await driver.send({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": "What colour is the sky?"}]}})
    await driver.send({"type": "response.create"})
    await driver.wait_for("response.created", count=3)
    await driver.send({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": "How many legs has a dog?"}]}})
    backends.llm_release.set()
    await driver.wait_for("response.done", count=3)
    await driver.send({"type": "response.create"})
    await driver.wait_for("response.done", count=4)
    history += [NOTE, ("user", "What colour is the sky?"), ("assistant", "It is blue."),
                NOTE, ("user", "How many legs has a dog?")]
    got = prompt(backends, len(backends.llm_calls) - 1)
    assert got == HEAD + history, got[len(HEAD):]
    history += [("assistant", "Four legs.")]

    # 4. A reply cut by barge-in and truncated by the client to what was played.
    words = [f"w{i}" for i in range(20)]
    backends.replies = {len(backends.llm_calls): " ".join(words) + "."}
    done = await driver.text_turn("Talk to me.")
    reply_id = done["response"]["output"][0]["id"]
    await driver.send({"type": "conversation.item.truncate", "item_id": reply_id, "content_index": 0,
                       "audio_end_ms": int(done["response"]["audio_s"] * 1000 / 2)})
    await driver.wait_for("conversation.item.truncated")
    heard = prompt(backends, len(backends.llm_calls) - 1)
    backends.replies = {len(backends.llm_calls): "Sure."}
    await driver.text_turn("Go on.")
    after = prompt(backends, len(backends.llm_calls) - 1)
    assert after[:len(heard)] == heard  # what came before is unchanged
    truncated = after[len(heard)]
    assert truncated[0] == "assistant" and truncated[1].split() == words[:len(truncated[1].split())]
    assert 8 <= len(truncated[1].split()) <= 12
    assert after[len(heard) + 1:] == [NOTE, ("user", "Go on.")]

    # 5. A tool call and its output: the call right after its question, the output after it.
    await driver.send({"type": "session.update", "session": {"tools": [WEATHER], "tool_choice": "auto"}})
    index = len(backends.llm_calls)
    backends.replies = {index: "", index + 1: "It is sunny in Paris."}
    backends.tool_calls = {index: [ToolCallDelta(index=0, call_id="call_1", name="get_weather"),
                                   ToolCallDelta(index=0, arguments='{"city": "Paris"}')]}
    await driver.text_turn("Weather in Paris?")
    await driver.send({"type": "conversation.item.create", "item": {
        "type": "function_call_output", "call_id": "call_1", "output": '{"sky": "sunny"}'}})
    await driver.send({"type": "response.create"})
    await driver.wait_for("response.done", count=8)
    tool_turn = prompt(backends, index + 1)
    assert tool_turn[-4:] == [NOTE, ("user", "Weather in Paris?"),
                              ("call", json.dumps([{"name": "get_weather", "arguments": '{"city": "Paris"}'}])),
                              ("tool", '{"sky": "sunny"}')]
    assert driver.errors() == []
