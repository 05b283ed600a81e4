"""semantic_vad against the real graph: a mid-sentence pause does not end the turn, a finished
question is answered. Enabled per session (session.update), so the shared server serves it.

Only utterances the labeled set (quillman_bench/data/turn_set.json, docs/benchmarks.md)
shows are judged right for this voice (espeak-ng en-us) at the pause that matters.
"""

from __future__ import annotations

import numpy as np
import pytest

from quillman.client import RealtimeClient
from quillman_bench.speech import espeak, with_silence, word_error_rate, word_recall
from quillman_bench.turns import PAUSE_S

pytestmark = pytest.mark.e2e

RATE = 24000
SEMANTIC = {"audio": {"input": {"format": {"type": "audio/pcm", "rate": RATE},
                                "turn_detection": {"type": "semantic_vad", "eagerness": "auto"}},
                      "output": {"format": {"type": "audio/pcm", "rate": RATE}}}}


def types(result) -> list[str]:
    return [e["type"] for e in result.events]


async def test_a_paused_utterance_is_one_turn_with_both_halves(ws_url):
    first, second = "My favorite kind of music is", "jazz from New Orleans."
    # The first half ends on "is": a server_vad turn would end in the 700 ms pause after it.
    pcm = np.concatenate([with_silence(espeak(first, RATE), RATE, before_s=0.4, after_s=PAUSE_S),
                          espeak(second, RATE)])
    async with RealtimeClient(ws_url, sample_rate_hz=RATE) as client:
        await client.send({"type": "session.update", "session": SEMANTIC})
        await client.wait_for("session.updated")
        result = await client.talk(pcm, RATE)
    assert result.status == "completed", (result.status, result.errors)
    assert types(result).count("input_audio_buffer.committed") == 1, types(result)
    assert types(result).count("response.done") == 1
    # Both halves in the one item: the first recognized, and words after it (ASR of
    # "jazz from New Orleans" varies; that the words are there does not).
    heard = result.user_transcript.split()
    assert word_recall(first, result.user_transcript) >= 0.75, result.user_transcript
    assert len(heard) >= len(first.split()) + 2, result.user_transcript


async def test_a_complete_question_is_answered(ws_url):
    question = "Where do penguins live?"
    async with RealtimeClient(ws_url, sample_rate_hz=RATE) as client:
        await client.send({"type": "session.update", "session": SEMANTIC})
        updated = await client.wait_for("session.updated")
        assert updated["session"]["audio"]["input"]["turn_detection"]["type"] == "semantic_vad"
        result = await client.talk(with_silence(espeak(question, RATE), RATE, before_s=0.4), RATE)
    assert result.status == "completed", (result.status, result.errors)
    assert types(result).count("input_audio_buffer.committed") == 1
    assert word_error_rate(question, result.user_transcript) <= 0.25, result.user_transcript
    assert result.reply_text.strip() and result.reply_audio_s > 0.3
    assert result.response["metadata"]["turn_decision"] in {"text", "short_wait"}
    assert isinstance(result.timings.get("turn_decision_ms"), (int, float))
