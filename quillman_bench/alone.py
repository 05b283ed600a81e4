"""Each critical-path stage's cost alone: the bench's own inputs through the same engines, with
nothing else running, for the "in-situ / alone" ratio of ``quillman bench``.

The server reports per turn how long the stages of the reply's first audio took inside the
running graph (``asr_last_segment_ms``, ``llm_ttft_ms``, ``tts_first_chunk_ms``). Here the same
engines, built from the same Serve config (same models, same thread counts), run the same kind of
input in this process after the sweep, one call at a time on an idle machine:

- ASR: each bench question (its speech, at 16 kHz: the last segment of a turn without pauses);
- LLM: the server's prompt (instructions, few-shot turns) with each question, the session's slot
  already holding that prefix (as in the server, where every session starts from a slot sharing
  it), time to the first text token;
- TTS: the first chunk of the replies the server gave (cut by the server's sentence splitter),
  time to the first audio.

A ratio near 1 means the stage ran at its isolated speed inside the graph; above 1, it shared the
cores with other work (or waited for it).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Iterable

import numpy as np

from quillman.audio import int16_to_float, resample
from quillman.config import AppConfig
from quillman.engines.asr.base import ASR_SAMPLE_RATE_HZ
from quillman.engines.llm.base import GenerationParams, GenerationRequest, Usage
from quillman.engines.warmup import warm_language_model, warm_recognizer, warm_synthesizer
from quillman_bench.report import median
from quillman.pipeline.sentences import SentenceSplitter

STAGE_KEYS = ("asr_last_segment_ms", "llm_ttft_ms", "tts_first_chunk_ms")


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 1)


def first_chunks(replies: Iterable[str], config: AppConfig) -> list[str]:
    session = config.session
    chunks = []
    for reply in replies:
        splitter = SentenceSplitter(session.first_chunk_min_words, session.first_chunk_max_words,
                                    session.max_chunk_words)
        chunk = next(iter([*splitter.feed(reply), *splitter.flush()]), None)
        if chunk:
            chunks.append(chunk)
    return chunks


def _prompt(config: AppConfig, question: str) -> list[dict]:
    messages = [{"role": "system", "content": config.session.instructions}]
    for user, assistant in config.session.few_shot:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return messages + [{"role": "user", "content": question}]


async def _ttft(engine, config: AppConfig, question: str, session_id: str) -> float | None:
    llm = config.llm
    request = GenerationRequest(_prompt(config, question), GenerationParams(
        max_tokens=llm.max_tokens, temperature=llm.temperature, top_p=llm.top_p,
        repeat_penalty=llm.repeat_penalty, frequency_penalty=llm.frequency_penalty),
        session_id=session_id, deadline=time.time())
    start = time.perf_counter()
    stream = engine.stream(request)
    try:
        async for delta in stream:
            if isinstance(delta, str) and delta:
                return _ms(start)
            if isinstance(delta, Usage):
                return None
    finally:
        await stream.aclose()
    return None


def measure(config: AppConfig, clips: list[tuple[str, np.ndarray]], clip_rate_hz: int,
            replies: list[str], repeats: int = 1) -> dict[str, Any]:
    """Median cost of each stage alone (ms), and the samples."""
    from quillman.engines import loader

    samples: dict[str, list[float]] = {key: [] for key in STAGE_KEYS}
    recognizer = loader.load_recognizer(config.asr)
    warm_recognizer(recognizer, config.asr.language)  # first calls are not what a turn pays
    for _, pcm in clips * repeats:
        audio = int16_to_float(resample(pcm, clip_rate_hz, ASR_SAMPLE_RATE_HZ))
        start = time.perf_counter()
        recognizer.transcribe(audio, config.asr.language)
        samples["asr_last_segment_ms"].append(_ms(start))
    del recognizer

    engine = loader.load_language_model(config.llm)
    asyncio.run(warm_language_model(engine))

    async def llm_runs() -> None:
        for index, (question, _) in enumerate(clips * repeats):
            session_id = f"alone-{index}"
            await _ttft(engine, config, "Hello.", session_id)  # the slot holds the shared prefix
            ttft = await _ttft(engine, config, question, session_id)
            if ttft is not None:
                samples["llm_ttft_ms"].append(ttft)

    try:
        asyncio.run(llm_runs())
    finally:
        close = getattr(engine, "close", None)
        if close is not None:
            close()

    synthesizer = loader.load_synthesizer(config.tts)
    warm_synthesizer(synthesizer)
    for chunk in first_chunks(replies, config)[:20] * repeats:
        start = time.perf_counter()
        for _ in synthesizer.synthesize(chunk, None):
            samples["tts_first_chunk_ms"].append(_ms(start))
            break
    return {"median_ms": {key: median(values) for key, values in samples.items()},
            "samples_ms": samples}


def in_situ_ratios(level: dict[str, Any], alone: dict[str, Any]) -> dict[str, float | None]:
    """in-situ p50 / alone median for each stage of one bench level."""
    ratios: dict[str, float | None] = {}
    for key in STAGE_KEYS:
        in_situ = (level.get("server_stages_ms", {}).get(key) or {}).get("p50")
        by_itself = alone.get("median_ms", {}).get(key)
        ratios[key] = round(in_situ / by_itself, 2) if in_situ and by_itself else None
    return ratios


def markdown_alone(levels: list[dict[str, Any]], alone: dict[str, Any]) -> str:
    medians = alone.get("median_ms", {})
    header = "| variant | callers | " + " | ".join(f"{k.removesuffix('_ms')} in situ / alone" for k in STAGE_KEYS) + " |"
    lines = [header, "|---|---|" + "---|" * len(STAGE_KEYS)]
    for level in levels:
        cells = []
        ratios = in_situ_ratios(level, alone)
        for key in STAGE_KEYS:
            in_situ = (level.get("server_stages_ms", {}).get(key) or {}).get("p50")
            cells.append("–" if in_situ is None else f"{in_situ:.0f} / {medians.get(key) or 0:.0f} = {ratios[key]}×")
        lines.append(f"| {level['mode']} | {level['concurrency']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
