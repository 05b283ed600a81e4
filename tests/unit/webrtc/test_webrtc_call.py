"""One WebRTC call in process: a real aiortc caller and a real Call over the host's interfaces,
in front of a RealtimeSession on fake models. Audio goes both ways over Opus; the counts of
peer connections, calls and UDP sockets go back to where they were after each test."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from aiortc import RTCConfiguration

from quillman import errors
from quillman.config import LlmConfig, VadConfig
from quillman.engines.vad import SileroVad
from quillman.pipeline.session import RealtimeSession
from quillman.webrtc.call import COUNTS, Call, udp_sockets
from quillman.webrtc.caller import RATE_HZ, SILENT_RMS, WebRtcCaller
from quillman.webrtc.signalling import check_offer
from tests.unit.conftest import until

TIMEOUT_S = 20.0


class Voiced:
    """FakeBackends whose TTS speaks a loud tone (audible after Opus), 100 ms per word."""

    def __init__(self, backends):
        self.backends = backends

    def __getattr__(self, name):
        return getattr(self.backends, name)

    async def synthesize(self, text, voice, sample_rate_hz, deadline=None):
        n = max(1, len(text.split())) * sample_rate_hz // 10
        t = np.arange(n) / sample_rate_hz
        pcm = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
        for piece in np.array_split(pcm, 4):
            yield piece
            await asyncio.sleep(0)


def sound_heard_s(caller: WebRtcCaller, since: float) -> float:
    """Seconds of sound (not silence) the caller has heard on the reply track since ``since``."""
    heard = caller.heard
    return sum(len(f) for f, t in zip(heard.frames, heard.times)
               if t >= since and np.sqrt(np.mean(f.astype(np.float64) ** 2)) > SILENT_RMS) / RATE_HZ


@pytest.fixture
def no_leaks():
    before = (COUNTS["peer_connections"], COUNTS["calls"], udp_sockets())
    yield
    assert (COUNTS["peer_connections"], COUNTS["calls"], udp_sockets()) == before


async def open_call(backends, session_config, connect_timeout_s=10.0, max_event_backlog=64, answer=True):
    caller = WebRtcCaller("http://unused")
    offer = await caller.offer()

    def make_session(send, playback):
        return RealtimeSession(backends, session_config(), VadConfig(type="server_vad"), SileroVad,
                               send=send, llm=LlmConfig(), playback=playback)

    call = Call("rtc_test", make_session, RTCConfiguration(), connect_timeout_s, max_event_backlog)
    sdp = await call.answer(check_offer(offer))
    task = asyncio.create_task(call.run())
    if answer:
        await caller.accept(sdp)
        await caller.wait_for("session.created", TIMEOUT_S)
    return caller, call, task


async def hang_up(caller, task):
    await caller.close()
    await asyncio.wait_for(task, TIMEOUT_S)


async def test_a_spoken_turn_is_answered_on_the_track(backends, session_config, phrases_24k, no_leaks):
    caller, call, task = await open_call(Voiced(backends), session_config)
    caller.say(np.concatenate([phrases_24k[0], np.zeros(24000, np.int16)]), 24000)
    done = await caller.wait_for("response.done", TIMEOUT_S)
    assert done["response"]["status"] == "completed"
    await caller.wait_for("output_audio_buffer.stopped", TIMEOUT_S, response_id=done["response"]["id"])
    types = [e["type"] for e in caller.events]
    assert "response.output_audio.delta" not in types  # the audio came on the track
    assert types.index("output_audio_buffer.started") > types.index("response.created")
    assert types.index("output_audio_buffer.stopped") > types.index("response.done")
    assert caller.heard.first_sound(0) is not None  # the tone, decoded from Opus
    await hang_up(caller, task)
    assert call.end_reason in ("data channel closed", "connection closed", "caller's track ended")


async def test_barge_in_cuts_the_track_and_truncates_at_the_played_position(backends, session_config, phrases_24k,
                                                                            no_leaks):
    backends.reply = " ".join(["word"] * 60)  # 6 s of reply audio
    caller, call, task = await open_call(Voiced(backends), session_config)
    caller.say(np.concatenate([phrases_24k[0], np.zeros(24000, np.int16)]), 24000)
    started = await caller.wait_for("output_audio_buffer.started", TIMEOUT_S)
    await caller.until(lambda: sound_heard_s(caller, since=started["_t"]) >= 1.0, TIMEOUT_S)  # a second of the reply
    caller.say(phrases_24k[1], 24000)  # the user talks over the reply
    cleared = await caller.wait_for("output_audio_buffer.cleared", TIMEOUT_S)
    assert cleared["response_id"] == started["response_id"]
    truncated = await caller.wait_for("conversation.item.truncated", TIMEOUT_S)
    # What the track had sent: at least the second waited, less than the whole reply.
    assert 1000 <= truncated["audio_end_ms"] < 6000
    t_cleared = cleared["_t"]
    # The track goes on (silence when nothing plays): listen to it for half a second after the clear.
    await caller.until(lambda: caller.heard.times and caller.heard.times[-1] >= t_cleared + 0.5, TIMEOUT_S)
    assert caller.heard.first_sound(t_cleared + 0.3) is None or \
        caller.heard.first_sound(t_cleared + 0.3) > t_cleared + 0.4  # silence until a next reply
    entry = call.session.conversation.get(truncated["item_id"])
    assert len(entry.message["content"].split()) < 60
    await hang_up(caller, task)


async def test_output_audio_buffer_clear_from_the_client(backends, session_config, phrases_24k, no_leaks):
    backends.reply = " ".join(["word"] * 40)
    caller, _call, task = await open_call(Voiced(backends), session_config)
    caller.say(np.concatenate([phrases_24k[0], np.zeros(24000, np.int16)]), 24000)
    await caller.wait_for("output_audio_buffer.started", TIMEOUT_S)
    caller.send({"type": "output_audio_buffer.clear", "event_id": "c1"})
    await caller.wait_for("output_audio_buffer.cleared", TIMEOUT_S)
    await caller.wait_for("conversation.item.truncated", TIMEOUT_S)
    await hang_up(caller, task)


async def test_append_on_the_data_channel_is_refused(backends, session_config, no_leaks):
    caller, _call, task = await open_call(backends, session_config)
    caller.send({"type": "input_audio_buffer.append", "audio": "AAAA", "event_id": "a1"})
    error = await caller.wait_for("error", TIMEOUT_S)
    assert error["error"]["code"] == "unsupported_event" and error["error"]["event_id"] == "a1"
    await hang_up(caller, task)


async def test_a_flooded_channel_gets_rate_limited_and_the_call_goes_on(backends, session_config, no_leaks):
    caller, call, task = await open_call(backends, session_config, max_event_backlog=8)
    # Each costs the session an error event: they arrive far faster than it answers.
    for i in range(1000):
        caller.send({"type": "conversation.item.retrieve", "item_id": f"nope{i}"})
    await caller.wait_for("error", TIMEOUT_S)
    # The backlog drains; then the call takes events again.
    await until(lambda: call.inbox.events == 0 and not call.inbox.flooding, TIMEOUT_S)
    since = len(caller.events)
    caller.send({"type": "session.update", "session": {"instructions": "Be brief."}})
    await caller.wait_for("session.updated", TIMEOUT_S, since)
    codes = {e["error"]["code"] for e in caller.events if e["type"] == "error"}
    assert codes <= {"item_retrieve_invalid_item_id", "rate_limit_exceeded"}, codes
    assert ("rate_limit_exceeded" in codes) == (call.inbox.refused > 0)
    await hang_up(caller, task)


def test_the_inbox_refuses_a_flood_with_one_error_per_burst():
    from quillman import protocol
    from quillman.pipeline.session import PcmFrame
    from quillman.webrtc.channel import MAX_AUDIO_FRAMES, Inbox

    inbox = Inbox(max_events=4)
    event = protocol.InputAudioBufferClear(type="input_audio_buffer.clear")
    assert all(inbox.put_event(event) for _ in range(4))
    assert not inbox.put_event(event) and inbox.new_burst
    assert not inbox.put_event(event) and not inbox.new_burst  # the same burst: no second error
    for _ in range(3):
        asyncio.run(inbox.get())
    assert inbox.put_event(event) and not inbox.flooding  # below half: taken again
    for _ in range(MAX_AUDIO_FRAMES + 5):  # a stalled session: the oldest audio goes
        inbox.put_audio(PcmFrame(np.zeros(480, np.int16)))
    assert inbox.audio == MAX_AUDIO_FRAMES and inbox.dropped_audio == 5
    inbox.close()
    inbox.put_event(event)  # after the end: ignored


async def test_ice_that_never_completes_closes_the_call(backends, session_config, no_leaks):
    caller, call, task = await open_call(backends, session_config, connect_timeout_s=1.0, answer=False)
    await asyncio.wait_for(task, TIMEOUT_S)
    assert call.end_reason == "connect timeout"
    await caller.close()


@pytest.mark.parametrize("mangle", [
    lambda sdp: sdp.replace("a=fingerprint:", "a=fingerprint:bogus "),
    lambda sdp: "\r\n".join(line for line in sdp.split("\r\n") if not line.startswith("a=ice-ufrag")),
    lambda sdp: sdp.replace("opus/48000", "nonsense/8000"),
])
async def test_an_offer_the_stack_refuses_is_invalid_sdp(backends, session_config, mangle, no_leaks):
    caller = WebRtcCaller("http://unused")
    offer = mangle(await caller.offer())
    call = Call("rtc_bad", lambda send, playback: RealtimeSession(
        backends, session_config(), VadConfig(), SileroVad, send=send, llm=LlmConfig(), playback=playback),
        RTCConfiguration(), 5.0, 16)
    with pytest.raises(errors.InvalidSdp):
        await call.answer(check_offer(offer))
    await caller.close()
