"""Sessions in audio/pcmu and audio/pcma, transcription sessions and noise reduction, over a
RealtimeSession with fake models (real Silero VAD)."""

import asyncio
import base64

import numpy as np
import pytest

from quillman.audio import PCMA, PCMU, encode_audio_base64, resample


async def speak(driver, pcm_8k, fmt):
    for start in range(0, len(pcm_8k), 160):
        await driver.send({"type": "input_audio_buffer.append",
                           "audio": encode_audio_base64(pcm_8k[start:start + 160], fmt)})
        for _ in range(10):
            await asyncio.sleep(0)


@pytest.fixture
def question_8k(short_speech_24k):
    return resample(short_speech_24k.pcm, 24000, 8000)


@pytest.mark.parametrize("fmt", [PCMU, PCMA])
async def test_g711_in_and_out(driver, backends, question_8k, fmt):
    await driver.send({"type": "session.update", "session": {"type": "realtime", "audio": {
        "input": {"format": {"type": fmt}}, "output": {"format": {"type": fmt}}}}})
    shown = (await driver.wait_for("session.updated"))["session"]["audio"]
    assert shown["input"]["format"] == {"type": fmt} and shown["output"]["format"] == {"type": fmt}
    await speak(driver, question_8k, fmt)
    done = await driver.wait_for("response.done")
    assert done["response"]["status"] == "completed"
    # Whisper got 16 kHz audio of the whole question; the TTS was asked for 8 kHz.
    asr_samples = sum(len(call.args["pcm"]) for call in backends.asr_calls)
    assert abs(asr_samples / 16000 - len(question_8k) / 8000) < 1.0
    assert {call.args["rate"] for call in backends.tts_calls} == {8000}
    deltas = [base64.b64decode(e["delta"]) for e in driver.of_type("response.output_audio.delta")]
    tts_samples = sum(sum(call.outputs) for call in backends.tts_calls)
    assert sum(map(len, deltas)) == tts_samples  # one byte per sample: G.711, not pcm16


async def test_a_transcription_session_transcribes_and_never_replies(driver, backends, question_8k):
    backends.transcripts = ["what is", "what is the capital", "what is the capital of France"]
    await driver.send({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
        "format": {"type": PCMU}, "transcription": {"model": "whisper", "language": "en", "prompt": ""},
        "turn_detection": {"type": "server_vad"}, "noise_reduction": None}}}})
    shown = (await driver.wait_for("session.updated"))["session"]
    assert shown["type"] == "transcription" and shown["object"] == "realtime.transcription_session"
    await speak(driver, question_8k, PCMU)
    completed = await driver.wait_for("conversation.item.input_audio_transcription.completed")
    await driver.drain()
    types = driver.types()
    assert "input_audio_buffer.committed" in types and "response.created" not in types
    deltas = driver.of_type("conversation.item.input_audio_transcription.delta")
    assert deltas and types.index(deltas[0]["type"]) < types.index(completed["type"])
    assert all(d["item_id"] == completed["item_id"] for d in deltas)
    assert completed["usage"]["type"] == "duration" and completed["usage"]["seconds"] > 0
    await driver.send({"type": "response.create"})
    await driver.drain()
    assert driver.errors()[-1]["code"] == "invalid_event"


async def test_partial_transcripts_are_off_by_default_in_realtime_sessions(driver, question_8k):
    await driver.send({"type": "session.update", "session": {"audio": {"input": {"format": {"type": PCMU}}}}})
    await speak(driver, question_8k, PCMU)
    await driver.wait_for("response.done")
    assert not driver.of_type("conversation.item.input_audio_transcription.delta")


async def test_include_opts_a_realtime_session_into_partial_transcripts(driver, backends, question_8k):
    await driver.send({"type": "session.update", "session": {
        "include": ["item.input_audio_transcription.delta"], "audio": {"input": {"format": {"type": PCMU}}}}})
    assert (await driver.wait_for("session.updated"))["session"]["include"] == [
        "item.input_audio_transcription.delta"]
    await speak(driver, question_8k, PCMU)
    await driver.wait_for("response.done")
    assert driver.of_type("conversation.item.input_audio_transcription.delta")


async def test_noise_reduction_is_applied_and_reported(driver, backends, question_8k):
    await driver.send({"type": "session.update", "session": {"audio": {"input": {
        "format": {"type": PCMU}, "noise_reduction": {"type": "far_field"}}}}})
    shown = (await driver.wait_for("session.updated"))["session"]["audio"]["input"]
    assert shown["noise_reduction"] == {"type": "far_field"}
    assert driver.session.noise_reduction.suppressor is not None
    await speak(driver, question_8k, PCMU)
    assert (await driver.wait_for("response.done"))["response"]["status"] == "completed"
    await driver.send({"type": "session.update", "session": {"audio": {"input": {"noise_reduction": None}}}})
    assert (await driver.wait_for("session.updated", count=2))["session"]["audio"]["input"]["noise_reduction"] is None
    assert driver.session.noise_reduction.suppressor is None


def test_rnnoise_removes_most_of_a_noise_floor():
    from quillman.engines.noise import NoiseSuppressor

    rng = np.random.default_rng(0)
    noise = rng.normal(0, 800, 16000 * 2).astype(np.int16)
    suppressor = NoiseSuppressor(16000)
    out = np.concatenate([suppressor.process(noise[i:i + 320]) for i in range(0, len(noise), 320)])
    assert len(noise) - len(out) < 1600  # a stream: out keeps pace, < 100 ms behind (resamplers, frames)
    tail = slice(len(out) // 2, None)  # after RNNoise has adapted
    assert np.sqrt(np.mean(out[tail].astype(float) ** 2)) < 0.3 * np.sqrt(np.mean(noise[tail].astype(float) ** 2))
