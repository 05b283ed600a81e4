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
"""

from __future__ import annotations

import inspect
import logging
import uuid
from typing import Any, AsyncIterator

from quillman.config import LlmConfig
from quillman.engines.gpu import import_optional, require_cuda, resolve_model_dir, staggered_start
from quillman.engines.llm.base import Delta, GenerationParams, Message, Usage
from quillman.errors import ConfigError

logger = logging.getLogger(__name__)

_SETTING = "llm.backend 'vllm'"
_GIB = 1024**3
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
        "disable_log_stats": True,
    }
    if config.max_model_len is not None:
        kwargs["max_model_len"] = config.max_model_len
    if config.kv_cache_memory_bytes is not None:
        kwargs["kv_cache_memory_bytes"] = config.kv_cache_memory_bytes
    if config.max_num_seqs is not None:
        kwargs["max_num_seqs"] = config.max_num_seqs
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


class VllmModel:
    def __init__(self, engine: Any, *, tokenizer: Any = None, name: str = "vllm"):
        self._engine = engine
        self._tokenizer = tokenizer
        self.name = name
        vllm = import_optional("vllm", _SETTING)
        self._sampling_params_cls = vllm.SamplingParams
        self._delta = import_optional("vllm.sampling_params", _SETTING, "vllm").RequestOutputKind.DELTA

    @classmethod
    def from_config(cls, config: LlmConfig) -> "VllmModel":
        torch = require_cuda(_SETTING, "LanguageModel")
        vllm = import_optional("vllm", _SETTING)
        model_path = resolve_model_dir(config.model, "llm.model", ("config.json",))
        staggered_start(config.startup_delay_s, "llm.startup_delay_s")
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
        try:
            engine = engine_cls.from_engine_args(args)
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
        logger.info("vLLM engine ready for %s (%s)", config.model, model_path)
        return cls(engine, name=config.model)

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
        # vLLM batches and caches prefixes (enable_prefix_caching) on its own: session_id and
        # deadline need no handling here.
        params = request.params
        prompt = await self.render(request.messages)
        sampling = self._sampling_params_cls(
            max_tokens=params.max_tokens, temperature=params.temperature, top_p=params.top_p,
            output_kind=self._delta,
        )
        request_id = f"quillman-{uuid.uuid4().hex}"
        outputs = self._engine.generate(prompt, sampling, request_id)
        finished = False
        generated = 0
        try:
            async for output in outputs:
                for completion in output.outputs:
                    generated += len(getattr(completion, "token_ids", None) or ())
                    if completion.text:
                        yield completion.text
                finished = finished or output.finished
            yield Usage(input_tokens=len(prompt["prompt_token_ids"]), output_tokens=generated)
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
