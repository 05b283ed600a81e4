"""The vLLM backend on CPU: the real engine module against a fake ``vllm`` package.

What is checked is our side of the contract: DELTA streaming, the model's chat template rendered
to token ids, sampling settings, the engine settings from config, abort on close or cancel, and
the start-up errors that name the setting to change.
"""

from __future__ import annotations

import asyncio

import pytest
from engine_fakes import (
    ChatTokenizer,
    FakeAsyncLLM,
    RequestOutputKind,
    fake_torch,
    fake_vllm_modules,
    install,
)

from quillman.config import LlmConfig
from quillman.engines.llm.base import GenerationParams, GenerationRequest, Usage
from quillman.engines.llm.vllm import VllmModel, engine_kwargs, fold_system_prompt
from quillman.engines.loader import load_language_model
from quillman.errors import ConfigError

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
PARAMS = GenerationParams(max_tokens=32, temperature=0.3, top_p=0.8)


@pytest.fixture
def fake_vllm(monkeypatch):
    install(monkeypatch, fake_vllm_modules())
    install(monkeypatch, {"torch": fake_torch(cuda=True, free_gib=70, total_gib=80)})
    FakeAsyncLLM.instances = []
    FakeAsyncLLM.start_error = None
    yield
    FakeAsyncLLM.start_error = None


@pytest.fixture
def model_dir(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    return tmp_path


async def test_streams_delta_text_with_the_chat_template(fake_vllm):
    engine = FakeAsyncLLM()
    model = VllmModel(engine)
    deltas = [d async for d in model.stream(GenerationRequest(MESSAGES, PARAMS))]
    rendered = "<s><|system|>\nBe brief.</s><|user|>\nHi!</s><|assistant|>\n"
    # Text, then the real token counts: the prompt's ids and one id per DELTA step here.
    assert deltas == ["Hello", " there", ", friend.", Usage(input_tokens=len(rendered), output_tokens=3)]
    prompt, sampling, request_id = engine.requests[0]
    assert prompt == {"prompt_token_ids": [ord(c) for c in rendered]}
    # The template holds BOS already: the tokenizer must not add another.
    assert engine.tokenizer.encode_calls[-1]["add_special_tokens"] is False
    assert sampling.output_kind is RequestOutputKind.DELTA
    assert (sampling.max_tokens, sampling.temperature, sampling.top_p) == (32, 0.3, 0.8)
    assert request_id.startswith("quillman-")
    assert engine.aborted == []  # finished requests are not aborted


async def test_each_stream_is_its_own_request(fake_vllm):
    engine = FakeAsyncLLM(async_tokenizer=True)  # older vLLM: get_tokenizer() is a coroutine
    model = VllmModel(engine)
    for _ in range(2):
        text = [d async for d in model.stream(GenerationRequest(MESSAGES, PARAMS)) if isinstance(d, str)]
        assert "".join(text) == "Hello there, friend."
    ids = [request_id for _, _, request_id in engine.requests]
    assert len(set(ids)) == 2


async def test_closing_the_stream_aborts_the_request(fake_vllm):
    engine = FakeAsyncLLM(pieces=[f"w{i} " for i in range(50)], delay_s=0.001)
    stream = VllmModel(engine).stream(GenerationRequest(MESSAGES, PARAMS))
    assert await stream.__anext__() == "w0 "
    await stream.aclose()  # barge-in: the deployment closes the engine stream
    assert engine.aborted == [engine.requests[0][2]]
    assert engine.closed_generators == 1


async def test_cancelling_the_consumer_aborts_the_request(fake_vllm):
    engine = FakeAsyncLLM(pieces=[f"w{i} " for i in range(1000)], delay_s=0.01)
    model = VllmModel(engine)
    seen: list[str] = []

    async def consume():
        async for delta in model.stream(GenerationRequest(MESSAGES, PARAMS)):
            seen.append(delta)

    task = asyncio.create_task(consume())
    while not seen:
        await asyncio.sleep(0.005)
    task.cancel()  # the client disconnected: Ray cancels the replica task
    with pytest.raises(asyncio.CancelledError):
        await task
    assert engine.aborted == [engine.requests[0][2]]
    assert len(seen) < 1000


async def test_template_without_system_role_gets_it_folded_into_the_user_turn(fake_vllm):
    engine = FakeAsyncLLM(tokenizer=ChatTokenizer(system_role=False))
    prompt = await VllmModel(engine).render(MESSAGES)
    text = "".join(map(chr, prompt["prompt_token_ids"]))
    assert text == "<s><|user|>\nBe brief.\n\nHi!</s><|assistant|>\n"
    assert fold_system_prompt([{"role": "system", "content": "S"}]) == [{"role": "user", "content": "S"}]


def test_loader_builds_vllm_with_the_memory_settings(fake_vllm, model_dir):
    config = LlmConfig(backend="vllm", model=str(model_dir), gpu_memory_utilization=0.45,
                       max_model_len=4096, kv_cache_memory_bytes=2 * 1024**3, max_num_seqs=16)
    model = load_language_model(config)
    assert isinstance(model, VllmModel)
    args = FakeAsyncLLM.instances[0].engine_args.kwargs
    assert args["model"] == str(model_dir)
    assert args["gpu_memory_utilization"] == 0.45
    assert args["max_model_len"] == 4096
    assert args["kv_cache_memory_bytes"] == 2 * 1024**3
    assert args["max_num_seqs"] == 16
    # Unset knobs are left to vLLM's defaults.
    assert "max_model_len" not in engine_kwargs(LlmConfig(backend="vllm"), "/m")


def test_no_gpu_is_a_clear_error(fake_vllm, model_dir, monkeypatch):
    install(monkeypatch, {"torch": fake_torch(cuda=False)})
    with pytest.raises(ConfigError, match=r"llm.backend 'vllm' needs a CUDA GPU.*LanguageModel.*num_gpus"):
        load_language_model(LlmConfig(backend="vllm", model=str(model_dir)))


def test_missing_vllm_package_is_a_clear_error(fake_vllm, model_dir, monkeypatch):
    install(monkeypatch, {"vllm": None})
    with pytest.raises(ConfigError, match=r"needs the Python package vllm \(pip install 'quillman\[gpu\]'\)"):
        load_language_model(LlmConfig(backend="vllm", model=str(model_dir)))


def test_missing_model_is_a_clear_error(fake_vllm, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="llm.model 'HuggingFaceH4/not-a-cached-model' is not in the Hugging Face cache"):
        load_language_model(LlmConfig(backend="vllm", model="HuggingFaceH4/not-a-cached-model"))
    with pytest.raises(ConfigError, match="llm.model"):
        load_language_model(LlmConfig(backend="vllm", model=str(tmp_path / "absent" / "deep" / "x")))


def test_memory_share_not_free_is_a_clear_error(fake_vllm, model_dir, monkeypatch):
    install(monkeypatch, {"torch": fake_torch(cuda=True, free_gib=30, total_gib=80)})
    with pytest.raises(ConfigError, match=r"llm.gpu_memory_utilization 0.5 asks vLLM for 40.0 GiB.*only 30.0 GiB"):
        load_language_model(LlmConfig(backend="vllm", model=str(model_dir), gpu_memory_utilization=0.5))


def test_vllm_memory_failure_names_the_settings(fake_vllm, model_dir):
    FakeAsyncLLM.start_error = ValueError(
        "The model's max seq len (32768) is larger than the maximum number of tokens that can be "
        "stored in KV cache (8000). Try increasing `gpu_memory_utilization` or decreasing `max_model_len`")
    with pytest.raises(ConfigError, match=r"llm.gpu_memory_utilization.*llm.max_model_len.*llm.kv_cache_memory_bytes"):
        load_language_model(LlmConfig(backend="vllm", model=str(model_dir)))
