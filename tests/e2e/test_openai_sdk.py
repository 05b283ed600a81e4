"""The official openai SDK's realtime client holds a spoken two-turn conversation."""

from __future__ import annotations

import asyncio
import base64

import numpy as np
import pytest
from openai import AsyncOpenAI

from quillman.loadtest.speech import spoken_question, word_error_rate

pytestmark = pytest.mark.e2e

CHUNK = 24000 * 40 // 1000  # 40 ms frames


async def speak(connection, pcm, stop: asyncio.Event) -> None:
    """Live-paced mic: the question, then silence until told to stop."""
    loop = asyncio.get_running_loop()
    start, sent = loop.time(), 0.0
    position = 0
    while not stop.is_set() and sent < 120:
        frame = np.pad(pcm[position:position + CHUNK], (0, max(0, CHUNK - len(pcm[position:]))))
        position += CHUNK
        await connection.input_audio_buffer.append(audio=base64.b64encode(frame.astype("<i2").tobytes()).decode())
        sent += CHUNK / 24000
        await asyncio.sleep(max(0.0, start + sent - loop.time()))


async def test_openai_sdk_two_turn_conversation(server_url):
    ws_base = server_url.replace("http://", "ws://") + "/v1"
    client = AsyncOpenAI(api_key="unused-locally", websocket_base_url=ws_base)
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
            stop = asyncio.Event()
            mic = asyncio.create_task(speak(connection, spoken_question(question), stop))
            transcript, reply, audio_bytes, done = None, "", 0, None
            try:
                async for event in connection:
                    if event.type == "conversation.item.input_audio_transcription.completed":
                        transcript = event.transcript
                    elif event.type == "response.output_audio_transcript.delta":
                        reply += event.delta
                    elif event.type == "response.output_audio.delta":
                        audio_bytes += len(base64.b64decode(event.delta))
                    elif event.type == "error":
                        pytest.fail(f"server error {event.error}")
                    elif event.type == "response.done":
                        done = event.response
                        break
            finally:
                stop.set()
                await mic
            assert done is not None and done.status == "completed"
            # Our per-stage timings ride along as an extra field the SDK keeps.
            timings = done.model_extra["timings"]
            assert timings["first_audio_ms"] > 0
            assert transcript is not None and word_error_rate(question, transcript) <= 0.25, transcript
            assert reply.strip()
            assert audio_bytes > 24000 * 2 * 0.3
