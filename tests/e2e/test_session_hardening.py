"""The inputs that used to kill a session, tried the way a client would on the real server.

Each gets one ``error`` with a stable code (or is accepted), the socket stays open, and the same
socket then holds a normal spoken turn.
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from quillman.client import RealtimeClient
from quillman_bench.speech import spoken_question as spoken
from quillman_bench.speech import word_error_rate

pytestmark = pytest.mark.e2e


async def next_of(client: RealtimeClient, *types: str, timeout: float = 30) -> dict:
    while True:
        event = await client.next_event(timeout=timeout)
        if event["type"] in types:
            return event


async def quiet(client: RealtimeClient, seconds: float = 5.0) -> None:
    """Read events until none came for ``seconds``."""
    while True:
        try:
            await client.next_event(timeout=seconds)
        except asyncio.TimeoutError:
            return


async def update(client: RealtimeClient, session: dict) -> dict:
    await client.send({"type": "session.update", "session": {"type": "realtime", **session}})
    return await next_of(client, "session.updated", "error")


async def test_turn_detection_off_commit_then_on_again_keeps_the_session(ws_url):
    silence = np.zeros(24000 // 2, dtype=np.int16)
    async with RealtimeClient(ws_url) as client:
        assert (await update(client, {"audio": {"input": {"turn_detection": None}}}))["type"] == "session.updated"
        await client.send_audio(silence)
        await client.send({"type": "input_audio_buffer.commit"})
        await next_of(client, "input_audio_buffer.committed")
        await client.send_audio(silence)
        on = await update(client, {"audio": {"input": {"turn_detection": {"type": "server_vad"}}}})
        assert on["type"] == "session.updated", on
        await client.send_audio(silence)  # used to end the socket (VAD cursor behind the audio)
        await quiet(client)  # the committed (silent) turn's reply, whatever Whisper heard in it
        question = "Where do penguins live?"  # short, no pause inside: one turn
        result = await client.talk(spoken(question), 24000)
    assert result.status == "completed", (result.status, result.errors, [
        (e["type"], e.get("response", {}).get("status_details"), e.get("transcript")) for e in result.events
        if e["type"] in ("response.done", "input_audio_buffer.speech_started", "input_audio_buffer.committed",
                         "conversation.item.input_audio_transcription.completed", "response.created")])
    assert word_error_rate(question, result.user_transcript) <= 0.25, result.user_transcript


async def test_hostile_frames_get_one_error_each_and_the_socket_stays(ws_url):
    deep = '{"type": "session.update", "session": ' + '{"a": ' * 5000 + "1" + "}" * 5000 + "}"
    huge_text = json.dumps({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": "word " * 480_000}]}})
    cases = {
        "invalid_json": deep,
        "input_too_long": huge_text,
        "mcp_disabled": json.dumps({"type": "session.update", "session": {"tools": [
            {"type": "mcp", "server_label": "files", "server_url": "http://127.0.0.1:9"}]}}),
    }
    async with RealtimeClient(ws_url) as client:
        for code, frame in cases.items():
            await client.ws.send(frame)
            event = await next_of(client, "error", "session.updated", "conversation.item.added")
            assert event["type"] == "error" and event["error"]["code"] == code, (code, event)
        for session, code in (({"tool_choice": "required"}, "invalid_tool_choice"),
                              ({"tools": [{"type": "mcp", "server_label": "x"}]}, "mcp_disabled")):
            refused = await update(client, session)
            assert refused["type"] == "error" and refused["error"]["code"] == code, refused
            assert refused["error"]["param"].startswith("session.")
        # What many clients always send is accepted.
        accepted = await update(client, {"tools": [], "tool_choice": "auto",
                                         "audio": {"input": {"noise_reduction": None}}})
        assert accepted["type"] == "session.updated", accepted
        assert accepted["session"]["audio"]["input"]["turn_detection"]["type"] == "server_vad"
        result = await client.say("Say hello.")
    assert result.status == "completed" and result.reply_text.strip()
    usage = next(e for e in result.events if e["type"] == "response.done")["response"]["usage"]
    # llama.cpp's own counts: the prompt (system + history + question) and the reply's tokens.
    assert usage["input_tokens"] > 20 and 0 < usage["output_tokens"] <= 64
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


async def test_a_client_that_stops_reading_is_closed_and_the_server_goes_on(ws_url):
    """It asks for spoken replies and never reads: past the outgoing bound the server closes it
    (its memory stays bounded), and a new session works."""
    import websockets

    async with websockets.connect(ws_url, max_size=None, max_queue=1) as ws:
        ws.transport.pause_reading()  # stop reading at the TCP level
        for _ in range(3):
            await ws.send(json.dumps({"type": "response.create"}))
            await asyncio.sleep(0.5)
    async with RealtimeClient(ws_url) as client:
        result = await client.say("Say hello.")
    assert result.status == "completed"
