"""Function calling end to end: the official openai SDK (a forced call from a spoken question,
then the spoken answer from the tool's output) and the OpenAI Agents SDK (RealtimeRunner runs a
@function_tool the model decides to call), on the shared server with the real engines."""

from __future__ import annotations

import asyncio
import json

import jsonschema
import pytest

from quillman_bench.speech import spoken_question
from sdk import sdk_client, spoken_reply, until_done

pytestmark = pytest.mark.e2e

WEATHER = {"type": "function", "name": "get_weather", "description": "Get the current weather for a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


async def test_a_forced_call_from_speech_then_the_spoken_answer(server_url):
    client = sdk_client(server_url)
    async with client.realtime.connect(model="quillman") as connection:
        await connection.session.update(session={
            "type": "realtime", "output_modalities": ["audio"],
            "tools": [WEATHER], "tool_choice": {"type": "function", "name": "get_weather"},
            "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000},
                                "turn_detection": {"type": "server_vad", "silence_duration_ms": 500}}},
        })
        response = (await spoken_reply(connection, spoken_question("What is the weather in Paris?"))).response
        assert response.status == "completed"
        call = next(item for item in response.output if item.type == "function_call")
        assert call.name == "get_weather" and call.call_id
        jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])  # the grammar's work

        await connection.conversation.item.create(item={
            "type": "function_call_output", "call_id": call.call_id,
            "output": json.dumps({"city": "Paris", "temperature_c": 18, "sky": "sunny"})})
        await connection.response.create(response={"tool_choice": "auto"})
        reply = await until_done(connection)
        assert reply.response.status == "completed"
        assert [item.type for item in reply.response.output] == ["message"]
        assert reply.transcript.strip() and reply.audio_bytes > 24000 * 2 * 0.3  # spoken, not only written


async def test_the_agents_sdk_runs_the_tool_the_model_calls(ws_url):
    from agents import function_tool
    from agents.realtime import RealtimeAgent, RealtimeRunner

    calls: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """Get the current weather for a city."""
        calls.append(city)
        return f"It is sunny and 18 degrees in {city}."

    agent = RealtimeAgent(name="Assistant", instructions="You are a friendly voice assistant.",
                          tools=[get_weather])
    runner = RealtimeRunner(agent)
    session = await runner.run(model_config={
        "url": ws_url, "api_key": "unused-locally",
        # server_vad (the SDK's default is semantic_vad): a text turn needs no turn model.
        "initial_model_settings": {"output_modalities": ["text"], "tool_choice": "auto",
                                   "turn_detection": {"type": "server_vad"}}})
    seen: list[str] = []
    async with session:
        await session.send_message("What's the weather in Paris?")
        async with asyncio.timeout(240):
            async for event in session:
                seen.append(event.type)
                if event.type == "error":
                    pytest.fail(f"agents SDK error: {event.error}")
                # The tool ran and the model answered from its output.
                if event.type == "agent_end" and "tool_end" in seen:
                    break
    assert calls and "paris" in calls[0].lower(), calls
    assert "tool_start" in seen and "tool_end" in seen
