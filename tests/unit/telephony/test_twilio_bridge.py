"""The Twilio bridge over a real RealtimeSession (fake models, real Silero VAD): Twilio's
messages in as typed input, the session's reply audio out (the bridge is its playback) as
media / mark / clear; bad frames are ignored."""

import asyncio
import base64
import json

import numpy as np
import pytest

from quillman.audio import PCMU, encode_audio_base64, resample
from quillman.config import LlmConfig, VadConfig
from quillman.engines.vad import SileroVad
from quillman.pipeline.session import RealtimeSession
from quillman.telephony.bridge import TwilioBridge
from quillman.telephony import twilio_protocol

SID = "MZ00000000000000000000000000000000"
CONNECTED = {"event": "connected", "protocol": "Call", "version": "1.0.0"}
START = {"event": "start", "sequenceNumber": "1", "streamSid": SID, "start": {
    "accountSid": "AC0", "streamSid": SID, "callSid": "CA0", "tracks": ["inbound"],
    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    "customParameters": {"caller": "test"}}}
STOP = {"event": "stop", "sequenceNumber": "99", "streamSid": SID, "stop": {"accountSid": "AC0", "callSid": "CA0"}}


def media(payload: str, n: int = 0) -> dict:
    return {"event": "media", "sequenceNumber": str(n + 2), "streamSid": SID,
            "media": {"track": "inbound", "chunk": str(n + 1), "timestamp": str(n * 20), "payload": payload}}


class Call:
    """A fake Twilio side: what it sent the bridge, what the bridge sent it, and the session's
    events (which the ingress discards) for the test to watch."""

    def __init__(self, backends, config):
        self.to_twilio: list[dict] = []
        self.server_events: list[dict] = []
        self.inbound: asyncio.Queue = asyncio.Queue()
        self.bridge = TwilioBridge(self._to_twilio)
        self._changed = asyncio.Event()  # something above changed: wait() looks again

        async def send(frame: str) -> None:
            self.server_events.append(json.loads(frame))
            self._changed.set()

        async def receive():
            self._changed.set()  # the bridge asks for the next frame: it has handled the last
            return await self.inbound.get()

        self.session = RealtimeSession(backends, config, VadConfig(), SileroVad, send=send, llm=LlmConfig(),
                                       playback=self.bridge)
        self.task = asyncio.ensure_future(self.bridge.run(self.session, receive))

    async def _to_twilio(self, text: str) -> None:
        self.to_twilio.append(json.loads(text))
        self._changed.set()

    async def send(self, message: dict | str, yields: int = 10) -> None:
        self.inbound.put_nowait(message if isinstance(message, str) else json.dumps(message))
        for _ in range(yields):
            await asyncio.sleep(0)

    async def speak(self, pcm_8k: np.ndarray) -> None:
        for n, start in enumerate(range(0, len(pcm_8k), 160)):  # 20 ms frames, as Twilio sends
            await self.send(media(encode_audio_base64(pcm_8k[start:start + 160], PCMU), n))

    def sent(self, event: str) -> list[dict]:
        return [m for m in self.to_twilio if m["event"] == event]

    def events(self, kind: str) -> list[dict]:
        return [e for e in self.server_events if e["type"] == kind]

    async def wait(self, predicate, timeout: float = 20.0) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"timed out; twilio got {[m['event'] for m in self.to_twilio]}") from None


@pytest.fixture
def question_8k(phrases_24k):
    speech = resample(phrases_24k[0], 24000, 8000)
    silence = np.zeros(8000, np.int16)
    return np.concatenate([silence[:2400], speech, silence])


async def test_a_call_is_a_pcmu_session_and_replies_as_media_with_marks(backends, session_config, question_8k):
    call = Call(backends, session_config())
    await call.send(CONNECTED)
    await call.send(START)
    await call.wait(lambda: call.events("session.updated"))
    fmt = call.events("session.updated")[0]["session"]["audio"]
    assert fmt["input"]["format"] == {"type": "audio/pcmu"} and fmt["output"]["format"] == {"type": "audio/pcmu"}
    await call.speak(question_8k)
    await call.wait(lambda: call.events("response.done"))
    await call.wait(lambda: len(call.sent("mark")) == len(call.sent("media")) > 0)
    assert call.bridge.custom_parameters == {"caller": "test"}
    # Each media is followed by its mark, named after the item and the ms sent so far.
    kinds = [m["event"] for m in call.to_twilio]
    assert kinds == ["media", "mark"] * (len(kinds) // 2)
    item_id = call.events("response.done")[0]["response"]["output"][0]["id"]
    payloads = [base64.b64decode(m["media"]["payload"]) for m in call.sent("media")]
    total_ms = sum(len(p) for p in payloads) / 8  # μ-law at 8 kHz: one byte per sample
    assert call.sent("mark")[-1]["mark"]["name"] == f"{item_id}:{total_ms:.0f}"
    assert all(m["streamSid"] == SID for m in call.to_twilio)
    await call.send(STOP)
    assert await asyncio.wait_for(call.task, 10) == 1000


@pytest.mark.parametrize("still_generating", [False, True], ids=["reply-done-still-playing", "reply-in-progress"])
async def test_barge_in_clears_twilio_and_truncates_the_reply_to_what_was_heard(
        backends, session_config, question_8k, still_generating):
    backends.tts_chunks = 4
    backends.tts_hang_after_first_chunk = still_generating  # the reply stays in progress
    call = Call(backends, session_config())
    await call.send(START)
    await call.speak(question_8k)
    await call.wait(lambda: call.sent("mark") and (still_generating or call.events("response.done")))
    first_mark = call.sent("mark")[0]["mark"]["name"]
    item_id, heard_ms = first_mark.rsplit(":", 1)
    if still_generating:
        heard_ms = "0"  # Twilio has played nothing yet
    else:
        await call.send({"event": "mark", "streamSid": SID, "mark": {"name": first_mark}})  # heard
    await call.speak(question_8k)  # the caller talks over the reply
    await call.wait(lambda: call.sent("clear") and call.events("conversation.item.truncated"))
    done = call.events("response.done")[0]["response"]
    assert done["status"] == ("cancelled" if still_generating else "completed")
    assert done["output"][0]["id"] == item_id
    truncated = call.events("conversation.item.truncated")[0]
    assert truncated["item_id"] == item_id and truncated["audio_end_ms"] == int(heard_ms)
    # Nothing of the interrupted reply is sent after the clear.
    after_clear = call.to_twilio[call.to_twilio.index(call.sent("clear")[0]) + 1:]
    assert not [m for m in after_clear if m["event"] == "mark" and m["mark"]["name"].startswith(item_id)]
    backends.tts_release.set()
    await call.send(STOP)
    await asyncio.wait_for(call.task, 10)


async def test_bad_frames_are_logged_and_ignored(backends, session_config, question_8k):
    call = Call(backends, session_config())
    await call.send("not json at all")
    await call.send({"event": "teleport"})
    await call.send(media(encode_audio_base64(question_8k[:160], PCMU)))  # media before start
    await call.send({"event": "media", "streamSid": SID})  # no media object
    await call.send(START)
    await call.send(START)  # a second start
    await call.send(media("@@@ not base64 @@@"))  # decoded by the bridge: never reaches the session
    await call.send({"event": "mark", "streamSid": SID, "mark": {"name": "not-ours"}})
    await call.send({"event": "dtmf", "streamSid": SID, "dtmf": {"track": "inbound_track", "digit": "5"}})
    await call.wait(lambda: call.bridge.ignored == 7)
    assert call.events("error") == []
    # The call goes on: a question still gets its reply.
    await call.speak(question_8k)
    await call.wait(lambda: call.events("response.done"))
    assert call.events("response.done")[0]["response"]["status"] == "completed"
    await call.send(STOP)
    assert await asyncio.wait_for(call.task, 10) == 1000


async def test_a_stream_that_is_not_mulaw_8k_ends_the_call(backends, session_config):
    call = Call(backends, session_config())
    start = json.loads(json.dumps(START))
    start["start"]["mediaFormat"]["sampleRate"] = 16000
    await call.send(start)
    assert await asyncio.wait_for(call.task, 10) == 1000
    assert call.to_twilio == []


def test_twiml_connects_the_call_to_the_stream():
    twiml = twilio_protocol.twiml_connect_stream("wss://example.test/twilio/media-stream?a=1&b=2")
    assert twiml.endswith('<Response><Connect><Stream url="wss://example.test/twilio/media-stream?a=1&amp;b=2" />'
                          '</Connect></Response>')
