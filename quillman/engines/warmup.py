"""One tiny inference per engine: the deployments' warm-up and ``quillman doctor``'s probe.

Each returns how long it took in ms. The first call into a native engine is where a build that
does not fit the CPU crashes, so the doctor and the deployments run exactly the same call.
"""

from __future__ import annotations

import time

import numpy as np

from quillman.engines.asr.base import ASR_SAMPLE_RATE_HZ, SpeechRecognizer
from quillman.engines.llm.base import GenerationParams, GenerationRequest, LanguageModel
from quillman.engines.tts.base import SpeechSynthesizer

WARM_MESSAGES = [{"role": "user", "content": "Say hi."}]
WARM_TEXT = "Hello there."


def _ms_since(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 1)


def warm_recognizer(engine: SpeechRecognizer, language: str | None) -> float:
    start = time.perf_counter()
    engine.transcribe(np.zeros(ASR_SAMPLE_RATE_HZ // 2, dtype=np.float32), language)
    narrowband = getattr(engine, "narrowband", None)  # faster-whisper's settings for phone audio
    if narrowband is not None:
        narrowband.transcribe(np.zeros(ASR_SAMPLE_RATE_HZ // 2, dtype=np.float32), language)
    return _ms_since(start)


async def warm_language_model(engine: LanguageModel) -> float:
    start = time.perf_counter()
    stream = engine.stream(GenerationRequest(
        WARM_MESSAGES, GenerationParams(max_tokens=4, temperature=0.0, top_p=1.0)))
    try:
        async for _ in stream:
            pass
    finally:
        await stream.aclose()
    return _ms_since(start)


def warm_synthesizer(engine: SpeechSynthesizer) -> float:
    start = time.perf_counter()
    for _ in engine.synthesize(WARM_TEXT):
        pass
    return _ms_since(start)


def warm_vad(vad) -> float:
    """``vad``: a streaming VAD (``SileroVad``); four windows of silence."""
    start = time.perf_counter()
    vad(np.zeros(vad.window_samples * 4, dtype=np.float32))
    vad.reset()
    return _ms_since(start)
