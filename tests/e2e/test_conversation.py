"""Spoken conversations against the real graph (serve run serve_config.yaml) with real models."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from quillman.client import RealtimeClient
from quillman_bench.speech import spoken_question as spoken
from quillman_bench.speech import word_error_rate, word_recall

pytestmark = pytest.mark.e2e

QUESTIONS = [
    ("Where do penguins live?", 20),
    ("How many legs does a spider have?", 50),
    ("Why is the sea salty?", 100),
]
# Every spoken reply has these (asr/llm/tts splits may be missing when a stage was cached).
STAGES = ("turn_detected_ms", "transcript_ms", "first_token_ms", "first_sentence_ms",
          "first_audio_ms", "total_ms")


def assert_spoken_reply(result, question: str, transcribe_reply) -> None:
    assert result.status == "completed", (result.status, result.errors)
    assert result.user_transcript is not None
    assert word_error_rate(question, result.user_transcript) <= 0.25, result.user_transcript
    words = result.reply_text.split()
    assert words, "empty reply text"
    # Plausible length for speech: roughly 0.15-1.5 s per word.
    assert 0.15 * len(words) <= result.reply_audio_s <= 1.5 * len(words) + 1, (
        result.reply_audio_s, result.reply_text)
    heard = transcribe_reply(result.reply_audio, result.sample_rate_hz)
    assert word_recall(result.reply_text, heard) >= 0.5, (result.reply_text, heard)
    for stage in STAGES:
        assert isinstance(result.timings.get(stage), (int, float)), (stage, result.timings)
    assert result.latency_ms is not None and result.latency_ms > 0


@pytest.mark.parametrize(("question", "chunk_ms"), QUESTIONS)
async def test_spoken_question_gets_spoken_answer(ws_url, transcribe_reply, question, chunk_ms):
    async with RealtimeClient(ws_url, chunk_ms=chunk_ms) as client:
        result = await client.talk(spoken(question), 24000)
    assert_spoken_reply(result, question, transcribe_reply)
    types = [e["type"] for e in result.events]
    # The GA sequence of one spoken turn, in order.
    order = ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
             "input_audio_buffer.committed", "response.created", "response.output_audio.delta",
             "response.output_audio.done", "response.done"]
    positions = [types.index(t) for t in order]
    assert positions == sorted(positions), types
    assert types.count("response.done") == 1


async def test_other_input_rate_is_resampled(ws_url):
    """A 16 kHz client: declared in session.update, resampled on the server."""
    question = "What color is the sky on a clear day?"
    client = RealtimeClient(ws_url, sample_rate_hz=16000)
    await client.connect()
    try:
        assert client.session["audio"]["input"]["format"]["rate"] == 16000
        result = await client.talk(spoken(question), 24000)
    finally:
        await client.close()
    assert result.status == "completed"
    assert word_error_rate(question, result.user_transcript) <= 0.25, result.user_transcript
    assert result.reply_audio_s > 0.3


async def test_text_turn(ws_url):
    async with RealtimeClient(ws_url) as client:
        result = await client.say("Say hello in a friendly way.")
    assert result.status == "completed"
    assert result.reply_text.strip()
    assert result.reply_audio_s > 0.2
    assert result.timings["first_audio_ms"] > 0


async def test_barge_in_cancels_reply(ws_url):
    async with RealtimeClient(ws_url) as client:
        await client.send({"type": "session.update", "session": {
            "type": "realtime", "instructions": "Tell very long, detailed stories."}})
        await client.wait_for("session.updated")
        # The user talks over the reply.
        async with client.talking_over(spoken("Tell me a long story about a dragon and a knight."),
                                       spoken("Stop. What time is it?")) as cancelled:
            assert cancelled["status"] == "cancelled", cancelled
            assert cancelled["status_details"]["reason"] == "turn_detected"
            # The interruption is a turn of its own and gets its answer. ("Stop." may be taken as
            # a turn by itself and be barged in on by "What time is it?", which is right too.)
            for _ in range(3):
                next_turn = await client.collect_turn()
                if next_turn.status == "completed":
                    break
                assert next_turn.status == "cancelled"
            assert next_turn.status == "completed"
            assert next_turn.reply_text.strip()


async def test_bad_input_gets_errors_and_session_goes_on(ws_url, transcribe_reply):
    bad_frames = {
        "invalid_json": "{not json",
        "unknown_event_type": '{"type": "no.such.event", "event_id": "e1"}',
        "invalid_base64": '{"type": "input_audio_buffer.append", "audio": "@@@not base64@@@"}',
        "invalid_audio_length": '{"type": "input_audio_buffer.append", "audio": "AAAA"}',
        "unsupported_audio_format": '{"type": "session.update", "session": {"type": "realtime", '
                                    '"audio": {"input": {"format": {"type": "audio/pcm", "rate": 7000}}}}}',
        "invalid_event": '{"type": "conversation.item.create", "item": {"type": "message"}}',
        "response_cancel_not_active": '{"type": "response.cancel"}',
        "input_audio_buffer_commit_empty": '{"type": "input_audio_buffer.commit"}',
    }
    async with RealtimeClient(ws_url) as client:
        for code, frame in bad_frames.items():
            await client.ws.send(frame)
            event = await client.next_event(timeout=30)
            assert event["type"] == "error", event
            assert event["error"]["code"] == code, event
        # 70 s of audio in one go is far ahead of real time.
        burst = np.zeros(24000 * 70, dtype=np.int16)
        await client.send_audio(burst)
        event = await client.next_event(timeout=30)
        assert event["error"]["code"] == "input_audio_buffer_overflow"
        # The same socket still holds a normal spoken turn.
        question = "Why do cats like to sleep so much?"
        result = await client.talk(spoken(question), 24000)
    assert_spoken_reply(result, question, transcribe_reply)


def test_prewarm_healthz_and_page(server_url):
    prewarm = httpx.get(f"{server_url}/prewarm", timeout=120).json()
    assert prewarm["status"] == "ready"
    for name in ("Transcriber", "LanguageModel", "Speaker"):
        assert prewarm["deployments"][name]["warm_ms"] > 0
        assert prewarm["deployments"][name]["load_s"] > 0
    health = httpx.get(f"{server_url}/healthz", timeout=30).json()
    assert health["status"] == "healthy"
    assert set(health["deployments"]) == {"Ingress", "Transcriber", "LanguageModel", "Speaker"}
    page = httpx.get(f"{server_url}/", timeout=30)
    assert page.status_code == 200 and "<html" in page.text.lower()
    assert httpx.get(f"{server_url}/../../etc/passwd", timeout=30).status_code == 404


def test_cli_talk_saves_reply(server_url, tmp_path: Path, transcribe_reply):
    question = "How do I make a cup of tea?"
    wav = tmp_path / "question.wav"
    reply = tmp_path / "reply.wav"
    sf.write(wav, spoken(question), 24000, subtype="PCM_16")
    url = server_url.replace("http://", "ws://") + "/pipeline"  # QuiLLMan's original path
    cli = Path(sys.executable).with_name("quillman")
    run = subprocess.run([str(cli), "talk", str(wav), "-o", str(reply), "--url", url],
                         capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr
    assert "voice-to-voice (client):" in run.stdout
    audio, rate = sf.read(reply, dtype="int16")
    assert len(audio) / rate > 0.3
    assert transcribe_reply(audio, rate).strip()


async def test_prompt_is_prefilled_while_the_user_speaks(ws_url):
    """The default config prefills the reply's prompt from partial transcripts while the user
    speaks (pipeline/prefill.py): at the end of the turn fewer prompt tokens are left to
    evaluate than the user's words alone make. Without the prefill a first turn's new words
    are all uncached (the shared system prompt is the most another session's slot holds)."""
    import llama_cpp

    from quillman.engines.llm.llama_cpp import resolve_gguf_path

    question = ("I would like to know, if you have a moment, why the leaves of the trees in my "
                "garden turn yellow and red every autumn?")
    async with RealtimeClient(ws_url) as client:
        result = await client.talk(spoken(question), 24000)
    assert result.status == "completed", (result.status, result.errors)
    assert word_error_rate(question, result.user_transcript) <= 0.35, result.user_transcript
    usage = result.response["usage"]
    uncached = usage["input_tokens"] - usage["input_token_details"]["cached_tokens"]
    vocab = llama_cpp.Llama(resolve_gguf_path("smollm2-135m"), vocab_only=True, verbose=False)
    user_tokens = len(vocab.tokenize(result.user_transcript.encode(), add_bos=False))
    # Without the prefill the whole user message is uncached: its words and the chat markup
    # around them (SmolLM2's ChatML). The prefill evaluated some of them before the end of
    # speech; how many depends on where the partial transcripts and the final one first
    # differ (Whisper may punctuate a partial "know," and the segment "know.").
    markup = len(vocab.tokenize(b"<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n",
                                add_bos=False, special=True))
    assert 0 < uncached < user_tokens + markup, (usage, user_tokens, markup, result.user_transcript)
