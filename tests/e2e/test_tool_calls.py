"""Function calling end to end: the official openai SDK (a forced call from a spoken question,
then the spoken answer from the tool's output) and the OpenAI Agents SDK (RealtimeRunner runs a
@function_tool the model decides to call), on the shared server with the real engines."""

from __future__ import annotations

import asyncio
import base64
import json

import jsonschema
import pytest
from openai import AsyncOpenAI

from quillman_bench.speech import spoken_question
from test_openai_sdk import speak

pytestmark = pytest.mark.e2e

WEATHER = {"type": "function", "name": "get_weather", "description": "Get the current weather for a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


async def until_done(connection) -> tuple[object, str, int]:
    """Events up to response.done: (the response, its transcript, bytes of its audio)."""
    transcript, audio_bytes = "", 0
    async for event in connection:
        if event.type == "response.output_audio_transcript.delta":
            transcript += event.delta
        elif event.type == "response.output_audio.delta":
            audio_bytes += len(base64.b64decode(event.delta))
        elif event.type == "error":
            pytest.fail(f"server error {event.error}")
        elif event.type == "response.done":
            return event.response, transcript, audio_bytes
    pytest.fail("the connection closed before response.done")


async def test_a_forced_call_from_speech_then_the_spoken_answer(server_url):
    client = AsyncOpenAI(api_key="unused-locally", websocket_base_url=server_url.replace("http://", "ws://") + "/v1")
    async with client.realtime.connect(model="quillman") as connection:
        await connection.session.update(session={
            "type": "realtime", "output_modalities": ["audio"],
            "tools": [WEATHER], "tool_choice": {"type": "function", "name": "get_weather"},
            "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000},
                                "turn_detection": {"type": "server_vad", "silence_duration_ms": 500}}},
        })
        stop = asyncio.Event()
        mic = asyncio.create_task(speak(connection, spoken_question("What is the weather in Paris?"), stop))
        try:
            response, _, _ = await until_done(connection)
        finally:
            stop.set()
            await mic
        assert response.status == "completed"
        call = next(item for item in response.output if item.type == "function_call")
        assert call.name == "get_weather" and call.call_id
        jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])  # the grammar's work

        await connection.conversation.item.create(item={
            "type": "function_call_output", "call_id": call.call_id,
            "output": json.dumps({"city": "Paris", "temperature_c": 18, "sky": "sunny"})})
        await connection.response.create(response={"tool_choice": "auto"})
        response, transcript, audio_bytes = await until_done(connection)
        assert response.status == "completed"
        assert [item.type for item in response.output] == ["message"]
        assert transcript.strip() and audio_bytes > 24000 * 2 * 0.3  # spoken, not only written


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
