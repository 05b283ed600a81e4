"""The in-situ / alone table of ``quillman bench`` (the measuring itself runs real engines)."""

from quillman.config import AppConfig
from quillman_bench.alone import first_chunks, in_situ_ratios, markdown_alone

ALONE = {"median_ms": {"asr_last_segment_ms": 100.0, "llm_ttft_ms": 200.0, "tts_first_chunk_ms": 120.0}}
LEVEL = {"mode": "streaming", "concurrency": 1, "server_stages_ms": {
    "asr_last_segment_ms": {"p50": 130.0}, "llm_ttft_ms": {"p50": 200.0}, "tts_first_chunk_ms": {"p50": 600.0}}}


def test_ratios_are_in_situ_p50_over_the_median_alone():
    assert in_situ_ratios(LEVEL, ALONE) == {"asr_last_segment_ms": 1.3, "llm_ttft_ms": 1.0, "tts_first_chunk_ms": 5.0}


def test_a_stage_that_did_not_happen_has_no_ratio():
    level = {**LEVEL, "server_stages_ms": {"llm_ttft_ms": {"p50": 250.0}}}
    assert in_situ_ratios(level, ALONE)["asr_last_segment_ms"] is None
    assert "–" in markdown_alone([level], ALONE)


def test_the_first_chunk_is_cut_as_the_server_cuts_it():
    chunks = first_chunks(["The capital of France is Paris, a city on the Seine.", ""], AppConfig())
    assert chunks == ["The capital of France is Paris,"]
