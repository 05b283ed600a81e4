"""``quillman bench turns``: the labeled set, and the replay's bookkeeping in audio time under
fake models (a tone through a loudness VAD; scripted transcripts, scores and costs)."""

from __future__ import annotations

import asyncio
from collections import Counter

import numpy as np
import pytest

from quillman_bench import turn_replay
from quillman.pipeline import semantic

RATE = turn_replay.RATE_HZ


def test_the_labeled_set_is_split_once_by_sentence_in_every_case():
    data = turn_replay.load_set()
    utterances = data["utterances"]
    assert len(utterances) >= 40 and len(data["voices"]) >= 4
    assert len({u["id"] for u in utterances}) == len(utterances)
    assert len({" ".join(u["parts"]) for u in utterances}) == len(utterances)
    counts = Counter((u["case"], u["split"]) for u in utterances)
    for case in turn_replay.CASES:
        assert counts[(case, "tune")] >= 5 and counts[(case, "test")] >= 5, counts
    assert all((len(u["parts"]) == 1) == (u["case"] == "complete") for u in utterances)
    assert data["pause_ms"] == 700


class LoudnessVad:
    """A window is speech when it is loud (as tests/unit/pipeline/test_turns.py's)."""

    window_samples = 512

    def __call__(self, pcm: np.ndarray) -> np.ndarray:
        windows = np.asarray(pcm, dtype=np.float32).reshape(-1, self.window_samples)
        return (np.abs(windows).mean(axis=1) > 0.05).astype(np.float32)

    def reset(self) -> None:
        pass


class FakeModels:
    """Segments are transcribed in order from ``texts``; every call costs ``cost_ms``."""

    make_vad = LoudnessVad

    def __init__(self, texts: list[str], probability: float = 0.9, asr_ms: float = 100.0, audio_ms: float = 60.0):
        self.texts, self.p, self.asr_ms, self.audio_ms = list(texts), probability, asr_ms, audio_ms

    def transcribe(self, pcm):
        return self.texts.pop(0), None, self.asr_ms

    def probability(self, pcm):
        return self.p, self.audio_ms


def tone(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (np.sin(2 * np.pi * 220 * t) * 12000).astype(np.int16)


def gap(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), dtype=np.int16)


def clip(*parts: np.ndarray, case: str = "paused") -> turn_replay.Clip:
    pcm = np.concatenate([gap(0.5), *parts, gap(4.6)])
    end = len(pcm) - int(4.6 * RATE)
    return turn_replay.Clip("x", case, "test", "tone", "x", pcm, end)


def replay(c, models, mode="semantic_vad", schedule="parallel"):
    return asyncio.run(turn_replay.replay(c, models, mode, schedule))


def test_a_mid_sentence_pause_is_one_turn_under_semantic_vad_two_under_server_vad():
    c = clip(tone(1.0), gap(0.7), tone(0.6))
    row = replay(c, FakeModels(["I'd like to book a table for", "four people."]))
    assert row["turns"] == 1 and not row["false_endpoint"] and not row["late"]
    assert row["decided_by"] == "text"
    server = replay(c, FakeModels([]), mode="server_vad")
    assert server["false_endpoint"] and server["turns"] == 2 and server["decided_by"] == "silence"


def test_the_decision_is_due_when_the_transcript_is_and_serial_adds_smart_turn():
    c = clip(tone(1.0), case="complete")
    # The ASR starts at the first silence (early_asr_ms, 64 ms), 128 ms before the pause (192 ms).
    head_start = turn_replay.SEMANTIC.pause_ms - turn_replay.SEMANTIC.early_asr_ms
    parallel = replay(c, FakeModels(["Where do penguins live?"], asr_ms=300, audio_ms=60))
    serial = replay(c, FakeModels(["Where do penguins live?"], asr_ms=300, audio_ms=60), schedule="serial")
    # (the replay sees VAD windows when their 20 ms frame arrives: within a frame)
    assert parallel["model_wait_ms"] == pytest.approx(300.0 - head_start, abs=20)
    assert serial["model_wait_ms"] == pytest.approx(parallel["model_wait_ms"] + 60, abs=1)
    slow_audio = replay(c, FakeModels(["Where do penguins live?"], asr_ms=300, audio_ms=250))
    assert slow_audio["model_wait_ms"] == 250.0  # beside the ASR: the later of the two
    quick_asr = replay(c, FakeModels(["Where do penguins live?"], asr_ms=100, audio_ms=10))
    assert quick_asr["model_wait_ms"] == 10.0  # transcribed before the pause: only Smart Turn is left
    # Ended when due: the pause (~200 ms of silence) + what is left of the ASR, or the complete floor.
    judged_ms = parallel["judgments"][-1]["at_ms"] - 1500  # from the end of the tone
    assert parallel["end_ms"] == pytest.approx(max(judged_ms + 300 - head_start, semantic.COMPLETE_WAIT_MS), abs=40)
    assert serial["end_ms"] >= parallel["end_ms"] and not serial["late"]


def test_an_unsure_ending_waits_the_short_wait_a_dangling_one_the_cap():
    unsure = replay(clip(tone(1.0), case="complete"), FakeModels(["What do you think about?"]))
    assert unsure["decided_by"] == "short_wait"
    assert semantic.SHORT_WAIT_MS["auto"] <= unsure["end_ms"] < semantic.SHORT_WAIT_MS["auto"] + 100
    dangling = replay(clip(tone(1.0), case="complete"), FakeModels(["I'd like a table for"]))
    assert dangling["decided_by"] == "max_wait" and dangling["late"]


def test_speech_that_resumes_before_the_decision_is_due_cancels_it():
    # A 300 ms breath after a phrase that reads complete; the ASR takes 600 ms (a busy machine).
    c = clip(tone(1.0), gap(0.3), tone(0.6))
    row = replay(c, FakeModels(["Add apples.", "and bananas."], asr_ms=600))
    assert not row["false_endpoint"] and row["turns"] == 1


@pytest.mark.parametrize("mode", ["semantic_vad", "legacy"])
def test_the_summary_counts_per_split_mode_and_case(mode):
    rows = [replay(clip(tone(1.0), case="complete"), FakeModels(["Thank you very much."]), mode=mode, schedule="serial")]
    table = turn_replay.summary(rows)
    assert [r["case"] for r in table] == ["complete", "all"]
    assert table[0]["false_endpoints"] == "0/1 (0 %)" and table[0]["n"] == 1
