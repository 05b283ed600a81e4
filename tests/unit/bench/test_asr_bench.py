"""``quillman bench asr``'s scoring and plumbing (quillman_bench.asr_bench): no model, no espeak."""

from __future__ import annotations

import argparse

import asyncio
import time

import numpy as np
import pytest

from quillman.audio import PCMU, decode_audio_base64
from quillman.config import VadConfig
from quillman.engines.asr.base import Transcript
from quillman_bench import asr_bench as ab
from quillman_bench import bench
from test_turn_replay import LoudnessVad


def tone(seconds: float, rate: int = ab.RATE_HZ) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (np.sin(2 * np.pi * 220 * t) * 12000).astype(np.int16)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * ab.RATE_HZ), dtype=np.int16)


class EchoEngine:
    """Says the number of the segment it is given (1-based), in words; counts its calls."""

    def __init__(self, words: list[str]):
        self.words, self.calls = words, 0

    def transcribe(self, pcm, language=None):
        self.calls += 1
        time.sleep(0.002)  # the inference's length: latencies above zero
        return Transcript(self.words[(self.calls - 1) % len(self.words)], language, len(pcm) / 16000, 1.0)


def test_word_errors_and_corpus_wer_weigh_by_reference_words():
    assert ab.word_errors("What is the capital of France?", "what is the capital of france") == (0, 6)
    assert ab.word_errors("How many legs does a spider have?", "How many legs has a spider?") == (2, 7)
    assert ab.word_errors("one two three", "") == (3, 3)  # nothing heard: all deleted
    assert ab.word_errors("", "noise") == (1, 0)

    def record(errors: int, words: int) -> ab.Record:
        return ab.Record("u", "v", "short", "pcm16", "tiny.en fit", "pcm16", False, None, "r", "h",
                         errors, words, 1, 1.0, 10.0, 10.0)

    # 1 error in 4 words and 1 in 16: 2 / 20, not the mean of 0.25 and 0.0625.
    assert ab.corpus_wer([record(1, 4), record(1, 16)]) == 0.1
    assert ab.corpus_wer([]) is None
    assert record(1, 4).wer == 0.25


def test_wire_frames_are_what_a_client_sends():
    pcm = tone(1.0)
    frames = ab.wire_frames(pcm, "pcm16")
    assert len(frames) == 50 and len(decode_audio_base64(frames[0])) == 480  # 20 ms at 24 kHz
    g711 = ab.wire_frames(pcm, "pcmu")
    assert len(g711) == 50 and len(decode_audio_base64(g711[0], PCMU)) == 160  # 20 ms at 8 kHz
    assert ab.wire_frames(pcm, "pcma") != g711


def test_conditions_and_settings_from_the_command_line():
    conditions = ab.conditions_from(["pcm16", "pcmu"], ["off", "on"], ["none", "10"])
    assert len(conditions) == 8
    assert [c.name for c in conditions[:4]] == ["pcm16", "pcmu", "pcm16 + RNNoise", "pcmu + RNNoise"]
    assert conditions[-1].name == "pcmu + noise 10 dB + RNNoise" and conditions[-1].rate_hz == 8000
    with pytest.raises(argparse.ArgumentTypeError):
        ab.conditions_from(["wav"], ["off"], ["none"])
    settings = ab.settings_from(["tiny.en", "base"], ["fit", "full"], ["1", "5"])
    assert len(settings) == 8 and settings[-1].name == "base full beam 5"
    config = ab.AsrSetting("base", "full", 5).config(threads=2)
    assert (config.model, config.encoder_window, config.beam_size, config.cpu_threads) == ("base", "full", 5, 2)


@pytest.mark.parametrize("fmt", ["pcm16", "pcmu", "pcma"])
def test_session_segments_cut_at_pauses_through_the_decode_path(fmt):
    # Two bursts of "speech" with a 400 ms pause: the session's tracker cuts two segments at
    # 16 kHz, whatever the wire format (8 kHz pauses 320 ms before a cut).
    pcm = np.concatenate([silence(0.3), tone(1.0), silence(0.4), tone(1.0), silence(1.0)])
    vad = VadConfig(type="server_vad", pause_ms=192, silence_duration_ms=600, prefix_padding_ms=0)
    segments = asyncio.run(ab.session_segments(pcm, ab.Condition(fmt), vad, make_vad=LoudnessVad))
    assert len(segments) == 2
    assert all(s.dtype == np.float32 for s in segments)
    total_s = sum(len(s) for s in segments) / 16000
    assert 2.0 <= total_s <= 3.0


def test_session_segments_commit_speech_that_runs_to_the_end():
    segments = asyncio.run(ab.session_segments(tone(1.0), ab.Condition("pcmu"), make_vad=LoudnessVad))
    assert len(segments) == 1 and len(segments[0]) > 0.9 * 16000


def test_whole_clip_is_one_16khz_piece():
    (clip,) = ab.whole_clip(tone(1.0), ab.Condition("pcmu"))
    assert abs(len(clip) - 16000) <= 16


def test_run_bench_joins_segments_and_summarizes_per_format(monkeypatch):
    corpus = ab.build_corpus(["v1"], short=["hello there"], long=["good morning to you all"],
                             synthesize=lambda text, voice, rate: tone(0.5, rate))
    assert [u.id for u in corpus] == ["v1/short00", "v1/long00"] and corpus[1].words == 5
    # Fake audio path: pcm16 gives one segment, pcmu two (as a VAD that cuts more on 8 kHz).
    monkeypatch.setattr(ab, "session_segments", lambda pcm, condition, vad=None: _segments(
        1 if condition.format == "pcm16" else 2))
    settings = [ab.AsrSetting("tiny.en", "fit"), ab.AsrSetting("tiny.en", "full")]
    engines = {s: EchoEngine(["hello there", "good morning to you all"]) for s in settings}
    records = ab.run_bench(corpus, [ab.Condition("pcm16"), ab.Condition("pcmu")], settings, engines)
    assert len(records) == 2 * 2 * 2
    first = records[0]
    assert (first.condition, first.asr, first.segments, first.hypothesis) == ("pcm16", "tiny.en fit", 1, "hello there")
    assert first.errors == 0 and first.last_ms >= 0
    two = [r for r in records if r.format == "pcmu"][0]
    assert two.segments == 2 and two.hypothesis.count(" ") > 1  # two segments' texts joined

    rows = {(r["condition"], r["asr"]): r for r in ab.summarize(records)}
    assert set(rows) == {(c, a) for c in ("pcm16", "pcmu") for a in ("tiny.en fit", "tiny.en full")}
    # pcm16 heard everything: no ratio to divide by.
    assert rows[("pcm16", "tiny.en fit")]["wer"] == 0.0 and rows[("pcm16", "tiny.en fit")]["wer_vs_pcm16"] is None
    assert rows[("pcmu", "tiny.en fit")]["wer"] > 0 and rows[("pcmu", "tiny.en fit")]["utterances"] == 2
    assert rows[("pcm16", "tiny.en fit")]["ms_ratio"] == 1.0
    report = {"summary": ab.summarize(records), "per_voice": ab.per_voice(records)}
    text = ab.markdown(report)
    assert "| pcmu | tiny.en full |" in text and "| v1 |" in text


def _segments(n: int) -> list[np.ndarray]:
    async def make() -> list[np.ndarray]:
        return [np.zeros(8000, dtype=np.float32) for _ in range(n)]
    return make()


def test_wer_ratio_compares_with_pcm16_under_the_same_noise_and_reduction():
    def record(fmt: str, nr: bool, errors: int) -> ab.Record:
        name = ab.Condition(fmt, nr).name
        return ab.Record(f"u{fmt}{nr}", "v", "long", name, "tiny.en fit", fmt, nr, None, "r", "h",
                         errors, 10, 1, 1.0, 10.0, 10.0)

    rows = {r["condition"]: r for r in ab.summarize([
        record("pcm16", False, 1), record("pcmu", False, 3), record("pcm16", True, 2), record("pcmu", True, 3)])}
    assert rows["pcmu"]["wer_vs_pcm16"] == 3.0
    assert rows["pcmu + RNNoise"]["wer_vs_pcm16"] == 1.5


def test_bench_cli_dispatches_asr(monkeypatch):
    seen = {}
    monkeypatch.setattr(ab, "main", lambda argv: seen.setdefault("argv", argv) and 0)
    bench.main(["asr", "--models", "tiny.en", "--formats", "pcmu"])
    assert seen["argv"] == ["--models", "tiny.en", "--formats", "pcmu"]
    args = ab.build_parser().parse_args(["--models", "tiny.en,base", "--snr-db", "none,10", "--limit", "3"])
    assert args.models == ["tiny.en", "base"] and args.snr_db == ["none", "10"] and args.limit == 3
    assert args.segmentation == "session" and args.voices == ab.VOICES


def test_corpus_has_short_questions_and_long_sentences():
    assert len(ab.SHORT) + len(ab.LONG) >= 30
    lengths = [len(ab._words(text).split()) for text in ab.LONG]
    assert min(lengths) >= 15 and max(lengths) <= 25
    assert max(len(ab._words(text).split()) for text in ab.SHORT) <= 10
    assert not any(ch.isdigit() for text in ab.SHORT + ab.LONG for ch in text)
    assert any(v.startswith("piper:") for v in ab.VOICES) and sum(v.startswith("espeak:") for v in ab.VOICES) >= 3


def test_asr_specs_with_a_narrowband_setting():
    plain = ab.AsrSetting.parse("tiny.en:fit")
    assert plain == ab.AsrSetting("tiny.en", "fit", 1) and plain.config(1).narrowband_model is None
    phone = ab.AsrSetting.parse("tiny.en:fit:5+base:fit:5")
    assert phone.name == "tiny.en fit beam 5; 8 kHz: base fit beam 5"
    config = phone.config(1)
    assert (config.beam_size, config.narrowband_model, config.narrowband_beam_size,
            config.narrowband_encoder_window) == (5, "base", 5, "fit")
    for bad in ("tiny.en", "tiny.en:wide", "tiny.en:fit:x"):
        with pytest.raises(argparse.ArgumentTypeError):
            ab.AsrSetting.parse(bad)
