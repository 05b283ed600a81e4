"""Phone audio against the real graph: a simulated Twilio call, G.711 sessions through the
official openai SDK, a live-transcription session, and bad Twilio frames."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import numpy as np
import pytest
import websockets

from quillman.audio import PCMA, PCMU, decode_audio_base64, encode_audio_base64, resample
from quillman.client import RealtimeClient, transcribe_stream, transcription_session
from quillman_bench.speech import spoken_question, word_error_rate, word_recall
from quillman_bench.twilio_caller import TwilioCaller
from sdk import sdk_client, spoken_reply

pytestmark = pytest.mark.e2e


def media_url(server_url: str) -> str:
    return server_url.replace("http://", "ws://") + "/twilio/media-stream"


async def test_a_twilio_call_hears_spoken_replies_and_can_interrupt_them(server_url, transcribe_reply):
    # Twilio's webhook: TwiML that connects the call to our media stream.
    answer = await asyncio.to_thread(httpx.post, server_url + "/twilio/voice",
                                     data={"CallSid": "CA1", "From": "+15550000000"}, timeout=30)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("application/xml")
    assert '<Connect><Stream url="ws://127.0.0.1:8000/twilio/media-stream" />' in answer.text

    async with TwilioCaller(media_url(server_url), {"caller": "e2e"}) as call:
        # A question with a long answer; the caller talks over it once it has heard some of it.
        asked = time.perf_counter()
        await call.speak(spoken_question("Tell me a long story about a dragon and a knight."), 24000,
                         silence_after_s=0.5)
        while not [m for m in call.marks_echoed if m.rpartition(":")[0] in call.replies] and \
                time.perf_counter() - asked < 90:
            await call.silence(0.2)
        first = next(iter(call.replies.values()))
        assert first.first_audio_at is not None
        await call.silence(0.2)  # hears a little of the reply
        interrupted_at = time.perf_counter()
        question = "How do I make a cup of tea?"
        await call.speak(spoken_question(question), 24000, silence_after_s=0.3)
        clears = call.events("clear")
        assert clears and clears[0]["streamSid"] == call.stream_sid, "no clear on barge-in"
        assert first.cleared
        quiet = asyncio.create_task(call.silence(30))
        try:
            reply = await call.wait_for_reply(after=interrupted_at)
        finally:
            quiet.cancel()
        assert reply is not None and reply.item_id != first.item_id, "no reply to the second question"
        # Nothing of the interrupted reply came after the clear.
        clear_at = clears[0]["_at"]
        assert not [m for m in call.received if m["event"] == "mark" and m["_at"] > clear_at
                    and m["mark"]["name"].startswith(first.item_id)]
        # Every mark of the reply was echoed: the server knows what was heard.
        reply_marks = [m["mark"]["name"] for m in call.events("mark") if m["mark"]["name"].startswith(reply.item_id)]
        assert reply_marks and set(reply_marks) <= set(call.marks_echoed)
        heard = transcribe_reply(reply.pcm(), 8000)
        assert len(heard.split()) >= 2, heard
        # The caller has no reply text (phone audio only); the answer's topic must be audible.
        assert {"tea", "cup", "water", "boil", "hot"} & set(heard.lower().replace(",", " ").replace(".", " ").split()), heard


async def test_bad_twilio_frames_are_ignored_and_the_call_closes_cleanly(server_url):
    async with websockets.connect(media_url(server_url), open_timeout=30) as ws:
        silence = encode_audio_base64(np.zeros(160, np.int16), PCMU)
        await ws.send("this is not json")
        await ws.send(json.dumps({"event": "teleport", "streamSid": "MZ1"}))
        await ws.send(json.dumps({"event": "media", "media": {"payload": silence}}))  # before start
        await ws.send(json.dumps({"event": "start", "streamSid": "MZ1", "start": {
            "streamSid": "MZ1", "callSid": "CA1",
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}))
        await ws.send(json.dumps({"event": "media", "streamSid": "MZ1", "media": {"payload": "@@ not base64 @@"}}))
        for _ in range(10):
            await ws.send(json.dumps({"event": "media", "streamSid": "MZ1", "media": {"payload": silence}}))
        await ws.send(json.dumps({"event": "stop", "streamSid": "MZ1", "stop": {}}))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                message = json.loads(await asyncio.wait_for(ws.recv(), 30))
                assert message["event"] in ("media", "mark", "clear"), message
        assert closed.value.rcvd.code == 1000


@pytest.mark.parametrize("fmt", [PCMU, PCMA])
async def test_openai_sdk_session_in_g711(server_url, transcribe_reply, fmt):
    client = sdk_client(server_url)
    question = "How do I make a cup of tea?"  # an English answer (the tiny LLM may answer France in French)
    async with client.realtime.connect(model="quillman") as connection:
        await connection.session.update(session={
            "type": "realtime", "output_modalities": ["audio"],
            "audio": {"input": {"format": {"type": fmt}, "turn_detection": {"type": "server_vad"}},
                      "output": {"format": {"type": fmt}, "voice": "alloy"}}})
        audio, updated = [], []

        async def listen(event) -> None:
            if event.type == "session.updated":
                updated.append(event.session)
            elif event.type == "response.output_audio.delta":
                audio.append(decode_audio_base64(event.delta, fmt))

        reply = await spoken_reply(connection, resample(spoken_question(question), 24000, 8000), listen,
                                   rate_hz=8000, frame_ms=20, encode=lambda frame: encode_audio_base64(frame, fmt))
    done, transcript, reply_text = reply.response, reply.user_transcript, reply.transcript
    session = updated[-1] if updated else None
    assert session is not None and session.audio.input.format.type == fmt
    assert session.audio.output.format.type == fmt
    assert done is not None and done.status == "completed"
    assert transcript is not None and word_error_rate(question, transcript) <= 0.25, transcript
    pcm = np.concatenate(audio)
    assert len(pcm) > 8000 * 0.3  # one byte per sample: 8 kHz G.711
    heard = transcribe_reply(pcm, 8000)
    assert word_recall(reply_text, heard) >= 0.5, (reply_text, heard)


async def test_a_transcription_session_streams_stable_deltas_then_the_final_text(ws_url):
    text = "Why do cats like to sleep so much? What is your favorite kind of music?"
    client = RealtimeClient(ws_url)
    await client.connect(transcription_session())
    try:
        assert client.session["type"] == "transcription"
        turns = await transcribe_stream(client, spoken_question(text), 24000)
    finally:
        await client.close()
    assert len(turns) >= 1 and all(t.transcript is not None for t in turns)
    final = " ".join(t.transcript for t in turns)
    assert word_error_rate(text, final) <= 0.25, final
    assert any(t.deltas for t in turns), "no transcription delta before completed"
    for turn in turns:
        # Append-only and stable: the deltas are a prefix of (or the same words as) the final text.
        streamed = "".join(turn.deltas).split()
        assert word_error_rate(" ".join(turn.transcript.split()[:len(streamed)]), " ".join(streamed)) <= 0.25
        assert turn.usage_s and turn.usage_s > 0
