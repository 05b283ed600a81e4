"""llama.cpp with continuous batching: many conversations share one model, token by token.

One worker thread owns a llama.cpp context with ``n_slots`` sequences. Each step it decodes one
batch holding the next token of every generating sequence plus prompt tokens of the sequences
still evaluating their prompt (at most ``prefill_chunk_tokens`` per step, so one long prompt never
stalls the others' replies). A new request therefore starts within one step instead of waiting
for whole replies of other sessions (head-of-line blocking).

Slots are per session: a session's next turn goes back to its slot, whose KV cache already holds
the conversation so far, and only the tokens after the common prefix are evaluated. A request
without a free slot waits; waiting requests and prompt evaluation are served earliest deadline
first. When all slots hold idle sessions, the least recently used one is evicted.

A *prefill* (:meth:`BatchedLlamaCpp.prefill`) evaluates a prompt into its session's slot and
generates nothing: while the user is still speaking, the prompt with the words heard so far, so
that at the end of the turn only the last words are left to evaluate. It is bulk work: it runs
only when no token is due, gives its slot up to any real request (the tokens it evaluated stay
cached), and never waits for a slot its session's reply is using.

The llama.cpp calls are blocking and not thread-safe: only the worker thread makes them. The
asyncio side talks to it through a lock-protected list of new requests and a per-request
``asyncio.Queue`` fed with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import ctypes
import logging
import math
import random
import threading
import time
from dataclasses import dataclass, field
from typing import AsyncIterator

from quillman.engines.llm import tools as tool_format
from quillman.engines.llm.base import Capabilities, Delta, GenerationRequest, Usage
from quillman.engines.llm.tool_values import last_user_text
from quillman.errors import ModelError
from quillman.priority import POLL_S, NodePriority
from quillman.scheduling import READING_PACE

logger = logging.getLogger(__name__)

_END = object()
_PENALTY_LAST_N = 64  # tokens the repetition penalties look back over
# A step evaluating at least this many prompt tokens uses n_threads_batch (see _step).
BATCH_THREADS_FROM_TOKENS = 64


@dataclass
class _Job:
    """One request as the worker sees it."""

    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue
    submitted: float = field(default_factory=time.perf_counter)
    cancelled: bool = False
    prompt: list[int] = field(default_factory=list)
    slot: "_Slot | None" = None
    to_eval: list[int] = field(default_factory=list)  # prompt tokens not yet in the KV cache
    cached: int = 0
    generated: int = 0
    last_token: int | None = None
    sampler: object = None
    parser: tool_format.ToolCallParser | None = None  # text -> text without markup, and calls
    decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace"))
    started: float | None = None

    burst_done: float | None = None  # Unix time the pacing's burst was complete
    prefill: bool = False  # evaluate the prompt only (see the module docstring)

    def urgency(self) -> tuple[float, float]:
        deadline = self.request.deadline
        return (math.inf if deadline is None else deadline, self.submitted)

    def in_burst(self) -> bool:
        """Still on the prompt or the first clause (the part the listener is waiting for)."""
        pacing = self.request.pacing or READING_PACE
        return bool(self.to_eval) or self.generated < pacing.burst_tokens

    def next_token_due(self) -> float:
        """Unix time the next token is needed (see Pacing); inf: no deadline at all."""
        if self.to_eval:  # the prompt: due with the first token
            return self.urgency()[0]
        pacing = self.request.pacing or READING_PACE
        if self.generated < pacing.burst_tokens or self.burst_done is None:
            return self.urgency()[0]
        ahead_s = (self.generated - pacing.burst_tokens) / pacing.tokens_per_s
        return self.burst_done + ahead_s - pacing.lead_s

    def put(self, item: object) -> None:
        try:
            self.loop.call_soon_threadsafe(self.out.put_nowait, item)
        except RuntimeError:  # the consumer's loop is gone (shutdown)
            pass


@dataclass
class _Slot:
    seq_id: int
    tokens: list[int] = field(default_factory=list)  # what the KV cache holds for this sequence
    session_id: str | None = None
    last_used: float = 0.0
    job: _Job | None = None


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class BatchedLlamaCpp:
    capabilities = Capabilities(tools=True, session_cache=True, deadlines=True, pacing=True, prefill=True)

    """A :class:`~quillman.engines.llm.base.LanguageModel` over one llama.cpp context."""

    def __init__(self, model_path: str, *, n_threads: int, n_threads_batch: int, n_ctx: int,
                 n_slots: int, prefill_chunk_tokens: int, priority: NodePriority | None = None):
        import llama_cpp
        from llama_cpp import _internals
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self._ll = llama_cpp
        self._internals = _internals
        self.n_ctx = n_ctx  # per sequence
        self.n_slots = n_slots
        self._chunk = max(1, prefill_chunk_tokens)
        # The machine's critical-path rule (quillman.priority): steps holding a turn's prompt or
        # first clause are critical; running replies ahead of their pace waits for others' critical work.
        self._priority = priority
        model_params = llama_cpp.llama_model_default_params()
        self._model = _internals.LlamaModel(path_model=model_path, params=model_params, verbose=False)
        ctx_params = llama_cpp.llama_context_default_params()
        ctx_params.n_ctx = n_ctx * n_slots
        ctx_params.n_seq_max = n_slots
        # Separate KV buffers per sequence: sessions share no prefix (each has its own history),
        # and each gets the full n_ctx.
        ctx_params.kv_unified = False
        ctx_params.n_batch = max(self._chunk + n_slots, 64)
        ctx_params.n_ubatch = ctx_params.n_batch
        ctx_params.n_threads = n_threads
        ctx_params.n_threads_batch = n_threads_batch
        self._threads, self._threads_batch = n_threads, n_threads_batch
        self._threads_now = -1
        self._ctx = _internals.LlamaContext(model=self._model, params=ctx_params, verbose=False)
        self._memory = llama_cpp.llama_get_memory(self._ctx.ctx)
        self._batch = _internals.LlamaBatch(n_tokens=ctx_params.n_batch, embd=0, n_seq_max=1, verbose=False)
        self._n_batch = ctx_params.n_batch
        self._vocab = self._model.vocab
        metadata = self._model.metadata()
        template = metadata.get("tokenizer.chat_template")
        if not template:
            raise ModelError(f"{model_path} has no chat template in its metadata")
        eos, bos = self._model.token_eos(), self._model.token_bos()
        self._format = Jinja2ChatFormatter(
            template=template, eos_token=self._model.token_get_text(eos) if eos != -1 else "",
            bos_token=self._model.token_get_text(bos) if bos != -1 else "")
        self._slots = [_Slot(seq_id=i) for i in range(n_slots)]
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._incoming: list[_Job] = []
        self._waiting: list[_Job] = []  # tokenized, no slot yet (worker thread only)
        self._closed = False
        self._piece = ctypes.create_string_buffer(64)
        self._score_ctx = None  # made on the first tool choice (_loglik)
        self._expansions: dict[tuple[str, str], str] = {}
        self._worker = threading.Thread(target=self._run, name="llama-batch", daemon=True)
        self._worker.start()
        logger.info("llama.cpp batched engine: %d slots x %d tokens, chunk %d", n_slots, n_ctx, self._chunk)

    # --- asyncio side -------------------------------------------------------------------------

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        async for delta in self._submit(_Job(request=request, loop=asyncio.get_running_loop(),
                                             out=asyncio.Queue())):
            yield delta

    async def prefill(self, request: GenerationRequest) -> Usage | None:
        """Evaluate ``request``'s prompt into its session's cache; nothing is generated. None
        when it was not done (preempted before it began, its session's slot busy, tools in use)."""
        usage = None
        async for delta in self._submit(_Job(request=request, loop=asyncio.get_running_loop(),
                                             out=asyncio.Queue(), prefill=True)):
            if isinstance(delta, Usage):
                usage = delta
        return usage

    async def _submit(self, job: _Job) -> AsyncIterator[Delta]:
        with self._wake:
            if self._closed:
                raise ModelError("the language model is shut down")
            self._incoming.append(job)
            self._wake.notify()
        try:
            while True:
                item = await job.out.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            # Barge-in, disconnect or done: the worker drops the job at its next step.
            with self._wake:
                job.cancelled = True
                self._wake.notify()

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._worker.join(timeout=5)

    # --- worker thread ------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._closed and not self._incoming and not self._has_work():
                    self._wake.wait()
                if self._closed:
                    return
                incoming, self._incoming = self._incoming, []
            try:
                for job in incoming:
                    self._accept(job)
                self._assign_slots()
                if not self._step():
                    with self._wake:  # gave way to critical work elsewhere: look again shortly
                        self._wake.wait(timeout=POLL_S)
            except Exception as exc:  # noqa: BLE001 - fail the requests in flight, keep serving
                logger.exception("llama.cpp batch step failed")
                self._fail_all(ModelError(f"the language model failed: {exc}"))

    def _has_work(self) -> bool:
        return bool(self._waiting) or any(slot.job is not None for slot in self._slots)

    def _accept(self, job: _Job) -> None:
        if job.cancelled:
            job.put(_END)
            return
        self._preempt_prefills(job.request.session_id)
        if job.prefill and tool_format.tools_in_use(job.request.tools, job.request.tool_choice):
            job.put(_END)  # the tool choice reads the whole question: the prompt is not known yet
            return
        try:
            # "required" over several tools and "auto": one tool (or none) chosen by the model's
            # likelihood of the user's words after each tool's description (tools.choose_tool).
            job.request = tool_format.choose_tool(job.request, self._loglik)
            job.prompt = self._tokenize(job.request)
            job.sampler = self._sampler(job.request)
        except Exception as exc:  # noqa: BLE001 - a template, tokenizer or grammar error fails this request only
            job.put(ModelError(f"the prompt could not be prepared: {exc}"))
            return
        # Every generation, tools or not: the history may show calls the model imitates.
        job.parser = tool_format.ToolCallParser(
            tool.name for tool in tool_format.tools_in_use(job.request.tools, job.request.tool_choice))
        if len(job.prompt) + 1 >= self.n_ctx:
            job.put(ModelError(f"the prompt ({len(job.prompt)} tokens) does not fit the model's "
                               f"context ({self.n_ctx} tokens, llm.n_ctx)"))
            return
        self._waiting.append(job)

    def _tokenize(self, request: GenerationRequest) -> list[int]:
        messages = tool_format.render_messages(request.messages, request.tools, request.tool_choice)
        text = self._format(messages=messages).prompt
        # The template holds BOS and the special tokens itself.
        return self._model.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def _preempt_prefills(self, session_id: str | None) -> None:
        """A new request of ``session_id`` supersedes its prefills: a waiting one is dropped, a
        running one ends where it is (what it evaluated stays in the slot's cache)."""
        if session_id is None:
            return
        for job in [j for j in self._waiting if j.prefill and j.request.session_id == session_id]:
            self._waiting.remove(job)
            job.put(_END)
        for slot in self._slots:
            if slot.job is not None and slot.job.prefill and slot.session_id == session_id:
                self._end_prefill(slot)

    def _end_prefill(self, slot: _Slot) -> None:
        job = slot.job
        self._release(slot)
        job.put(Usage(input_tokens=len(job.prompt) - len(job.to_eval), output_tokens=0, cached_tokens=job.cached,
                      queued_ms=round(((job.started or job.submitted) - job.submitted) * 1000, 1)))
        job.put(_END)

    def _assign_slots(self) -> None:
        self._waiting = [job for job in self._waiting if not self._drop_if_cancelled(job)]
        self._waiting.sort(key=_Job.urgency)
        for job in list(self._waiting):
            slot = self._slot_for(job)
            if slot is None and not job.prefill:
                # A prefill holds a slot only until a real request needs it.
                prefilling = [s for s in self._slots if s.job is not None and s.job.prefill]
                if prefilling:
                    slot = max(prefilling, key=lambda s: s.job.urgency())
                    self._end_prefill(slot)
            if slot is None and job.prefill:
                # A prefill never waits: by the time a slot is free its words are stale.
                self._waiting.remove(job)
                job.put(_END)
                continue
            if slot is None:
                break  # every slot is generating: wait for one (in deadline order)
            self._waiting.remove(job)
            self._start(job, slot)

    def _slot_for(self, job: _Job) -> _Slot | None:
        free = [slot for slot in self._slots if slot.job is None]
        if not free:
            return None
        session_id = job.request.session_id
        if session_id is not None:
            for slot in free:
                if slot.session_id == session_id:
                    return slot
            if job.prefill and any(slot.session_id == session_id for slot in self._slots):
                return None  # its session's reply is still running there
        # Another session's idle slot: the one sharing the longest prefix with this prompt (the
        # system prompt and few-shot turns every session starts with), least recently used
        # among equals; that session's cache beyond the shared prefix is lost.
        return max(free, key=lambda slot: (common_prefix(slot.tokens, job.prompt), -slot.last_used))

    def _start(self, job: _Job, slot: _Slot) -> None:
        reuse = common_prefix(slot.tokens, job.prompt)
        if not job.prefill:
            reuse = min(reuse, len(job.prompt) - 1)  # the last prompt token is evaluated for its logits
        self._ll.llama_memory_seq_rm(self._memory, slot.seq_id, reuse, -1)
        slot.tokens = slot.tokens[:reuse]
        slot.session_id = job.request.session_id
        slot.job = job
        job.slot = slot
        job.cached = reuse
        job.to_eval = job.prompt[reuse:]
        job.started = time.perf_counter()
        if job.prefill and not job.to_eval:
            self._end_prefill(slot)

    def _sampler(self, request: GenerationRequest):
        params = request.params
        sampler = self._internals.LlamaSampler()
        tools = tool_format.tools_in_use(request.tools, request.tool_choice)
        if tools:  # first: the other samplers only ever see tokens the grammar allows
            # The arguments' grammar is narrowed to the values the user said (tool_values).
            grammar = tool_format.tool_grammar(tools, last_user_text(request.messages), self._expand)
            self._add_grammar(sampler, grammar,
                              lazy=not tool_format.forced(request.tool_choice))
        if params.repeat_penalty != 1.0 or params.frequency_penalty != 0.0:
            sampler.add_penalties(self._ll.llama_vocab_n_tokens(self._vocab), _PENALTY_LAST_N,
                                  params.repeat_penalty, params.frequency_penalty, 0.0)
        if params.temperature <= 0:
            sampler.add_greedy()
        else:
            sampler.add_top_p(params.top_p, 1)
            sampler.add_temp(params.temperature)
            sampler.add_dist(random.getrandbits(32))
        return sampler

    def _add_grammar(self, sampler, grammar: str, lazy: bool) -> None:
        ll = self._ll
        vocab = self._vocab
        if lazy:  # text until the model writes <tool_call>, then the grammar
            patterns = (ctypes.c_char_p * 1)(tool_format.LAZY_TRIGGER.encode("utf-8"))
            tokens = (ll.llama_token * 0)()
            grammar_sampler = ll.llama_sampler_init_grammar_lazy_patterns(
                vocab, grammar.encode("utf-8"), b"root", patterns, 1, tokens, 0)
        else:
            grammar_sampler = ll.llama_sampler_init_grammar(vocab, grammar.encode("utf-8"), b"root")
        if not grammar_sampler:
            sampler.close()
            raise ValueError("the tools' JSON Schemas did not make a valid grammar")
        ll.llama_sampler_chain_add(sampler.sampler, grammar_sampler)

    SCORE_TOKENS = 256  # context + text tokens a tool choice scores (longer turns: their start)

    def _loglik(self, context: str, text: str) -> float:
        """The model's log-likelihood of ``text`` after ``context`` (worker thread only), on a
        small context of its own (the slots' KV caches are not touched)."""
        import numpy as np

        ll = self._ll
        self._scoring_context()
        head = self._model.tokenize(context.encode("utf-8"), add_bos=True, special=False)
        tail = self._model.tokenize(text.strip().encode("utf-8"), add_bos=False, special=False)
        tokens = (head + tail)[:self.SCORE_TOKENS]
        ll.llama_memory_clear(ll.llama_get_memory(self._score_ctx.ctx), True)
        batch = self._score_batch.batch
        for i, token in enumerate(tokens):
            self._add(batch, i, token, i, 0, i >= len(head) - 1)
        batch.n_tokens = len(tokens)
        if ll.llama_decode(self._score_ctx.ctx, batch) != 0:
            raise RuntimeError("llama_decode failed while choosing a tool")
        total = 0.0
        for i in range(len(head) - 1, len(tokens) - 1):
            logits = np.ctypeslib.as_array(ll.llama_get_logits_ith(self._score_ctx.ctx, i), shape=(self._n_vocab,))
            top = float(logits.max())
            total += float(logits[tokens[i + 1]]) - top - math.log(float(np.exp(logits - top).sum()))
        return total

    EXPAND_TOKENS = 6

    def _expand(self, value: str, description: str) -> str:
        """What the model says an enum's code stands for ("USD" -> "US Dollar"), greedy, a few
        tokens; cached (worker thread only). tool_values uses it to hear "dollars" as USD."""
        key = (value, description)
        if key not in self._expansions:
            prompt = f"{description.strip().rstrip('.')}.\n{value} stands for the"
            self._expansions[key] = self._greedy(prompt, self.EXPAND_TOKENS).split("\n")[0]
        return self._expansions[key]

    def _greedy(self, prompt: str, max_tokens: int) -> str:
        import numpy as np

        self._scoring_context()
        ll = self._ll
        tokens = self._model.tokenize(prompt.encode("utf-8"), add_bos=True, special=False)[:self.SCORE_TOKENS - max_tokens]
        ll.llama_memory_clear(ll.llama_get_memory(self._score_ctx.ctx), True)
        batch = self._score_batch.batch
        out = b""
        pos = 0
        for step in range(max_tokens + 1):
            for i, token in enumerate(tokens):
                self._add(batch, i, token, pos + i, 0, i == len(tokens) - 1)
            batch.n_tokens = len(tokens)
            if ll.llama_decode(self._score_ctx.ctx, batch) != 0:
                raise RuntimeError("llama_decode failed while reading a tool's schema")
            pos += len(tokens)
            if step == max_tokens:
                break
            logits = np.ctypeslib.as_array(ll.llama_get_logits_ith(self._score_ctx.ctx, len(tokens) - 1),
                                           shape=(self._n_vocab,))
            token = int(logits.argmax())
            if ll.llama_vocab_is_eog(self._vocab, token):
                break
            out += self._token_bytes(token)
            tokens = [token]
        return out.decode("utf-8", errors="replace").strip()

    def _scoring_context(self) -> None:
        ll = self._ll
        if self._score_ctx is None:
            params = ll.llama_context_default_params()
            params.n_ctx = params.n_batch = params.n_ubatch = self.SCORE_TOKENS
            params.n_seq_max = 1
            params.n_threads = params.n_threads_batch = self._threads_batch
            self._score_ctx = self._internals.LlamaContext(model=self._model, params=params, verbose=False)
            self._score_batch = self._internals.LlamaBatch(n_tokens=self.SCORE_TOKENS, embd=0, n_seq_max=1,
                                                           verbose=False)
            self._n_vocab = ll.llama_vocab_n_tokens(self._vocab)

    def _drop_if_cancelled(self, job: _Job) -> bool:
        if job.cancelled:
            if job.sampler is not None:
                job.sampler.close()
                job.sampler = None
            job.put(_END)
        return job.cancelled

    def _release(self, slot: _Slot) -> None:
        job = slot.job
        slot.job = None
        slot.last_used = time.perf_counter()
        if job is not None and job.sampler is not None:
            job.sampler.close()
            job.sampler = None

    def _step(self) -> bool:
        """One llama_decode over the chosen sequences; False if it gave way instead (every
        reply ahead of its pace while critical work runs elsewhere on the machine)."""
        for slot in self._slots:
            if slot.job is not None and slot.job.cancelled:
                job = slot.job
                self._release(slot)
                job.put(_END)
        active = [slot for slot in self._slots if slot.job is not None]
        if not active:
            return True
        batch = self._batch.batch
        n = 0
        logits_at: list[tuple[_Slot, int]] = []
        # Earliest deadline first, one unit of work per step while anything is due: on a CPU a
        # step costs about the same per token whether the tokens come from one sequence or
        # from several (measured: 4 sequences together 46 tok/s, one alone 42), so splitting
        # the cores between due replies only delays all of them; the most urgent one gets the
        # step. When nothing is due (every reply ahead of its pace), all sequences run.
        now = time.time()
        ready = [s for s in active if s.job.to_eval or s.job.last_token is not None]
        # A new turn's prompt and first clause go before paced tokens of replies already
        # speaking, even those behind their pace: on an overloaded machine plain EDF would
        # let late replies starve new turns (their tokens' due times are already past).
        due = sorted((s for s in ready if s.job.next_token_due() <= now),
                     key=lambda s: (not s.job.in_burst(), s.job.next_token_due()))
        if not due and ready and self._priority is not None and self._priority.busy(include_self=False):
            return False  # running ahead can wait: the cores go to another stage's critical work
        chosen = due[:1] if due else ready
        critical = any(s.job.in_burst() and s.job.urgency()[0] <= now for s in chosen)
        generating = [s for s in chosen if not s.job.to_eval]
        for slot in generating:
            token = slot.job.last_token
            self._add(batch, n, token, len(slot.tokens), slot.seq_id, True)
            slot.tokens.append(token)
            logits_at.append((slot, n))
            n += 1
        # Then prompt evaluation, most urgent first, within the step's token budget.
        budget = min(self._chunk, self._n_batch - n)
        prompt_tokens = 0
        for slot in sorted((s for s in chosen if s.job.to_eval), key=lambda s: s.job.urgency()):
            if budget <= 0:
                break
            job = slot.job
            take = job.to_eval[:budget]
            job.to_eval = job.to_eval[len(take):]
            for i, token in enumerate(take):
                last = not job.to_eval and i == len(take) - 1 and not job.prefill
                self._add(batch, n, token, len(slot.tokens), slot.seq_id, last)
                slot.tokens.append(token)
                if last:
                    logits_at.append((slot, n))
                n += 1
            budget -= len(take)
            prompt_tokens += len(take)
        batch.n_tokens = n
        if n == 0:
            return True
        # llama.cpp would use n_threads_batch for any step of more than one token. Its threads
        # meet at a spinning barrier after every op: with the other cores busy (TTS, ASR, other
        # sessions) a descheduled thread stalls the step many times over. Decode steps and short
        # prompt suffixes run on n_threads; only a long prompt (a cold session) gets the batch
        # threads.
        threads = self._threads_batch if prompt_tokens >= BATCH_THREADS_FROM_TOKENS else self._threads
        if threads != self._threads_now:
            self._ll.llama_set_n_threads(self._ctx.ctx, threads, threads)
            self._threads_now = threads
        with self._priority.critical() if critical and self._priority is not None else contextlib.nullcontext():
            status = self._ll.llama_decode(self._ctx.ctx, batch)
        if status != 0:
            raise RuntimeError(f"llama_decode returned {status}")
        for slot, index in logits_at:
            self._sample(slot, index)
        for slot in chosen:
            if slot.job is not None and slot.job.prefill and not slot.job.to_eval:
                self._end_prefill(slot)
        return True

    @staticmethod
    def _add(batch, i: int, token: int, pos: int, seq_id: int, logits: bool) -> None:
        batch.token[i] = token
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq_id
        batch.logits[i] = logits

    def _sample(self, slot: _Slot, index: int) -> None:
        job = slot.job
        # llama_sampler_sample accepts the token itself (a second accept would feed the grammar
        # and the penalties twice).
        token = job.sampler.sample(self._ctx, index)
        end = self._ll.llama_vocab_is_eog(self._vocab, token)
        if not end:
            job.generated += 1
            pacing = job.request.pacing or READING_PACE
            if job.generated == pacing.burst_tokens:
                job.burst_done = time.time()
            text = job.decoder.decode(self._token_bytes(token))
            if text:
                self._put_text(job, text)
            job.last_token = token
        full = len(slot.tokens) + 1 >= self.n_ctx
        if end or job.generated >= job.request.params.max_tokens or full:
            tail = job.decoder.decode(b"", final=True)
            if tail:
                self._put_text(job, tail)
            if job.parser is not None:
                for delta in job.parser.finish():
                    job.put(delta)
            job.put(Usage(input_tokens=len(job.prompt), output_tokens=job.generated,
                          cached_tokens=job.cached,
                          queued_ms=round((job.started - job.submitted) * 1000, 1)))
            job.put(_END)
            self._release(slot)

    @staticmethod
    def _put_text(job: _Job, text: str) -> None:
        if job.parser is None:
            job.put(text)
            return
        for delta in job.parser.feed(text):
            job.put(delta)

    def _token_bytes(self, token: int) -> bytes:
        n = self._ll.llama_token_to_piece(self._vocab, token, self._piece, len(self._piece), 0, False)
        return self._piece.raw[:max(n, 0)]

    def _fail_all(self, error: ModelError) -> None:
        for slot in self._slots:
            if slot.job is not None:
                job = slot.job
                self._release(slot)
                # Its KV cache may be half-written: start the session afresh next time.
                self._ll.llama_memory_seq_rm(self._memory, slot.seq_id, 0, -1)
                slot.tokens, slot.session_id = [], None
                job.put(error)
        for job in self._waiting:
            job.put(error)
        self._waiting = []
