"""The GPU engines on a real GPU, with the settings of configs/gpu-1x.yaml.

Written against the documented APIs but NOT YET RUN ON A GPU (this project's CI has none).
Timings are printed (pytest -s) so the first GPU run can fill in docs/deploy.md.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from quillman.audio import int16_to_float
from quillman.engines.asr.base import ASR_SAMPLE_RATE_HZ
from quillman.engines.llm.base import GenerationParams, GenerationRequest, Usage
from quillman.engines.loader import load_language_model, load_recognizer, load_synthesizer

pytestmark = pytest.mark.gpu

QUESTION = "What is the capital of France"


@pytest.fixture(scope="module")
def whisper(gpu_1x, load_or_skip):
    return load_or_skip(load_recognizer, gpu_1x.asr)


@pytest.fixture(scope="module")
def question_16k() -> np.ndarray:
    from quillman_bench.speech import espeak

    return int16_to_float(espeak(QUESTION, ASR_SAMPLE_RATE_HZ))


def test_whisper_large_v3_transcribes_speech(whisper, question_16k):
    from quillman_bench.speech import word_error_rate

    assert whisper.attn_implementation in ("flash_attention_2", "sdpa")
    whisper.transcribe(question_16k, "en")  # warm-up
    start = time.perf_counter()
    transcript = whisper.transcribe(question_16k, "en")
    print(f"\nwhisper-large-v3 one segment: {(time.perf_counter() - start) * 1000:.0f} ms")
    assert word_error_rate(QUESTION, transcript.text) <= 0.2, transcript.text


def test_whisper_batch_is_cheaper_than_one_by_one(whisper, question_16k):
    clips = [question_16k] * 8
    start = time.perf_counter()
    batch = whisper.transcribe_batch(clips, "en")
    batch_s = time.perf_counter() - start
    start = time.perf_counter()
    for clip in clips:
        whisper.transcribe(clip, "en")
    single_s = time.perf_counter() - start
    print(f"\nwhisper-large-v3 8 segments: batched {batch_s * 1000:.0f} ms, one by one {single_s * 1000:.0f} ms")
    assert len({t.text for t in batch}) == 1
    assert batch_s < single_s


@pytest.fixture(scope="module")
def vllm_model(gpu_1x, load_or_skip):
    return load_or_skip(load_language_model, gpu_1x.llm.model_copy(update={"startup_delay_s": 0}))


async def test_vllm_streams_stops_on_close_and_serves_concurrent_streams(vllm_model):
    # One test: AsyncLLM binds its output handler to the event loop of its first request.
    messages = [{"role": "system", "content": "Answer in one short sentence."},
                {"role": "user", "content": "What is the capital of France?"}]
    start = time.perf_counter()
    deltas = []
    first_s = None
    async for delta in vllm_model.stream(GenerationRequest(messages, GenerationParams(max_tokens=48, temperature=0.0, top_p=1.0))):
        if isinstance(delta, Usage):
            assert delta.input_tokens > 10 and delta.output_tokens > 0
            continue
        first_s = first_s or time.perf_counter() - start
        deltas.append(delta)
    print(f"\nvLLM first delta {first_s * 1000:.0f} ms, {len(deltas)} deltas")
    assert "paris" in "".join(deltas).lower()

    long = vllm_model.stream(GenerationRequest([{"role": "user", "content": "Count from 1 to 500."}],
                                               GenerationParams(max_tokens=1024, temperature=0.0, top_p=1.0)))
    for _ in range(3):
        await long.__anext__()
    start = time.perf_counter()
    await long.aclose()  # aborts the request in the engine
    assert time.perf_counter() - start < 1.0

    params = GenerationParams(max_tokens=32, temperature=0.7, top_p=0.9)

    async def one(i: int) -> str:
        return "".join([d async for d in vllm_model.stream(GenerationRequest(
            [{"role": "user", "content": f"Say a word that starts with letter {chr(65 + i)}."}], params))
            if isinstance(d, str)])

    replies = await asyncio.gather(*(one(i) for i in range(8)))
    assert all(replies)


@pytest.fixture(scope="module")
def xtts(gpu_1x, load_or_skip):
    return load_or_skip(load_synthesizer, gpu_1x.tts)


def test_xtts_streams_speech_in_chunks(xtts, gpu_1x):
    voice = gpu_1x.session.voice if gpu_1x.session.voice in xtts.voices else None
    list(xtts.synthesize("Warming up.", voice))
    start = time.perf_counter()
    chunks = []
    first_s = None
    for chunk in xtts.synthesize("The capital of France is Paris, a city on the Seine.", voice):
        first_s = first_s or time.perf_counter() - start
        chunks.append(chunk)
    audio_s = sum(len(c.pcm) for c in chunks) / chunks[0].sample_rate_hz
    print(f"\nXTTS first chunk {first_s * 1000:.0f} ms, {len(chunks)} chunks, {audio_s:.1f} s of audio")
    assert len(chunks) > 1 and chunks[0].pcm.dtype == np.int16
    assert 1.5 < audio_s < 15


def test_xtts_clones_a_voice_from_a_reference_wav(gpu_1x, tmp_path, load_or_skip):
    import soundfile as sf

    from quillman_bench.speech import espeak

    wav = tmp_path / "reference.wav"
    sf.write(wav, espeak("This is my reference voice, recorded for cloning. " * 2, 22050), 22050)
    config = gpu_1x.tts.model_copy(update={"voices": {"clone": str(wav)}})
    tts = load_or_skip(load_synthesizer, config)
    assert tts.voices[0] == "clone"
    assert sum(len(c.pcm) for c in tts.synthesize("Hello from a cloned voice.", "clone")) > 0
