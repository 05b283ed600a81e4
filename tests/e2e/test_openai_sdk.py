"""The official openai SDK's realtime client holds a spoken two-turn conversation."""

from __future__ import annotations

import asyncio

import pytest

from quillman_bench.speech import spoken_question, word_error_rate
from sdk import sdk_client, spoken_reply

pytestmark = pytest.mark.e2e


async def test_openai_sdk_two_turn_conversation(server_url):
    client = sdk_client(server_url)
    questions = ["What is the capital of Germany?", "And what is the capital of Spain?"]
    async with client.realtime.connect(model="quillman") as connection:
        await connection.session.update(session={
            "type": "realtime",
            "output_modalities": ["audio"],
            "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000},
                                "turn_detection": {"type": "server_vad", "silence_duration_ms": 500}},
                      "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy"}},
        })
        for question in questions:
            reply = await spoken_reply(connection, spoken_question(question))
            done, transcript = reply.response, reply.user_transcript
            assert done is not None and done.status == "completed"
            # Our per-stage timings ride along as an extra field the SDK keeps.
            timings = done.model_extra["timings"]
            assert timings["first_audio_ms"] > 0
            assert transcript is not None and word_error_rate(question, transcript) <= 0.25, transcript
            assert reply.transcript.strip()
            assert reply.audio_bytes > 24000 * 2 * 0.3


class ClientConversation:
    """The conversation as a client keeps it from the server's item events: each item right
    after its previous_item_id (at the start when that is null); checks each event against it."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self.checked = 0

    def see(self, event) -> None:
        if event.type == "conversation.item.added":
            assert event.item.id not in self.order
            previous = event.previous_item_id
            assert previous is None or previous in self.order, (event.type, previous, self.order)
            self.order.insert(0 if previous is None else self.order.index(previous) + 1, event.item.id)
        elif event.type == "conversation.item.done":
            index = self.order.index(event.item.id)
            expected = self.order[index - 1] if index else None
            assert event.previous_item_id == expected, (event.item.id, event.previous_item_id, self.order)
        elif event.type == "input_audio_buffer.committed":
            assert event.previous_item_id == (self.order[-1] if self.order else None)
        elif event.type == "conversation.item.deleted":
            self.order.remove(event.item_id)
        else:
            return
        self.checked += 1


async def test_openai_sdk_items_in_order_and_a_call_output_sent_at_arguments_done(server_url):
    client = sdk_client(server_url)
    weather = {"type": "function", "name": "get_weather", "description": "Get the current weather for a city.",
               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
    seen = ClientConversation()

    async def until(connection, *event_types: str):
        """The next event of one of these types (or an error)."""
        async with asyncio.timeout(60):
            async for event in connection:
                seen.see(event)
                if event.type == "error" or event.type in event_types:
                    return event
        pytest.fail("the connection closed")

    def text(words: str) -> dict:
        return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": words}]}

    async with client.realtime.connect(model="quillman") as connection:
        await connection.session.update(session={"type": "realtime", "output_modalities": ["text"],
                                                 "audio": {"input": {"turn_detection": None}}})
        await until(connection, "session.updated")
        await connection.conversation.item.create(item={**text("I live in Paris."), "id": "item_paris"})
        await until(connection, "conversation.item.done")
        await connection.conversation.item.create(item={**text("Hi."), "id": "item_hi"}, previous_item_id="root")
        assert (await until(connection, "conversation.item.done")).previous_item_id is None
        await connection.conversation.item.create(item={**text("Noise."), "id": "item_noise"},
                                                  previous_item_id="item_hi")
        assert (await until(connection, "conversation.item.done")).previous_item_id == "item_hi"
        assert seen.order == ["item_hi", "item_noise", "item_paris"]
        await connection.conversation.item.retrieve(item_id="item_noise")
        retrieved = await until(connection, "conversation.item.retrieved")
        assert retrieved.item.content[0].text == "Noise."
        await connection.conversation.item.delete(item_id="item_noise")
        assert (await until(connection, "conversation.item.deleted")).item_id == "item_noise"
        await connection.conversation.item.delete(item_id="item_noise")
        error = await until(connection, "conversation.item.deleted")
        assert (error.type, error.error.code, error.error.param) == ("error", "item_delete_invalid_item_id", "item_id")

        # A forced call; its output goes out the moment its arguments are done.
        await connection.conversation.item.create(item=text("What is the weather where I live?"))
        await connection.response.create(response={
            "tools": [weather], "tool_choice": {"type": "function", "name": "get_weather"}})
        arguments_done = await until(connection, "response.function_call_arguments.done")
        assert arguments_done.type == "response.function_call_arguments.done", arguments_done
        await connection.conversation.item.create(item={
            "type": "function_call_output", "call_id": arguments_done.call_id, "output": '{"sky": "sunny"}'})
        first = output = None
        while first is None or output is None:  # the two may come in either order
            event = await until(connection, "conversation.item.done", "response.done")
            assert event.type != "error", event  # accepted: no unknown_call_id
            if event.type == "response.done":
                first = event
            elif event.item.type == "function_call_output":
                output = event
        assert first.response.id == arguments_done.response_id and first.response.status == "completed"
        assert output.previous_item_id == arguments_done.item_id  # it follows its call
        await connection.response.create(response={"tools": [weather], "tool_choice": "none", "max_output_tokens": 16})
        answer = await until(connection, "response.done")
        assert answer.type == "response.done" and answer.response.status == "completed", answer
        assert [item.type for item in answer.response.output] == ["message"]  # the answer, in words
    assert seen.order[:2] == ["item_hi", "item_paris"] and seen.checked >= 12
