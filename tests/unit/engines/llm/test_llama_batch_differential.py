"""Differential test of the batched llama.cpp engine: its answers equal a fresh context's.

The batched engine keeps each conversation's evaluated prompt in a slot's KV cache and reuses
the common prefix on the next request; requests share decode steps, prompts are evaluated in
chunks, requests are cancelled mid-prompt and mid-generation (barge-in, a speculation the user
talked over), slots pass from one session to another. Any slip in that bookkeeping (the KV cache
holding other tokens than the engine believes) makes a reply that answers the wrong prompt:
"The capital city of France is Paris." again, for a question about the moon.

A Hypothesis state machine drives the real engine on the shipped SmolLM2 weights with random
interleavings of: sessions (more than the engine's slots, so slots are evicted and reused across
sessions, and requests without a session), prompts that extend a session's history, repeat it,
or diverge from it (a speculative request's partial transcript, then the final one), requests
left to finish, cancelled right away (before or during prompt evaluation) or after some tokens,
deadlines and pacing. At temperature 0 every request that completes must produce exactly the
text a fresh llama.cpp context (its own model, cleared KV cache, the whole prompt in one batch)
produces for the same prompt with the same sampler chain: each token the engine produced is the
greedy choice of a fresh context given the same prompt and the tokens before it. Exact equality
of whole texts cannot be the test: two correct evaluations of one prompt in other batch shapes
(a cached prefix, then the rest; or 16-token chunks) differ by ~0.1 in the logits, which flips
near-ties (measured: "Le" 29.46 vs "The" 29.42 in one batch, 29.34 vs 29.47 after a cached
prefix). So a token within ``TIE_LOGITS`` of the fresh context's best is accepted, and the
reference follows the engine's choice from there (teacher forcing).

Scale: ``QUILLMAN_FUZZ_SCALE`` multiplies the number of runs (CI: about 25 compared
sequences; ``QUILLMAN_FUZZ_SCALE=80`` over 2,000). Run with ``-s`` for the counts.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule, run_state_machine_as_test

from quillman.config import SessionConfig
from quillman.engines.llm.base import GenerationParams, GenerationRequest, Pacing, Usage
from quillman.engines.llm.llama_batch import BatchedLlamaCpp
from quillman.engines.llm.llama_cpp import resolve_gguf_path

SCALE = float(os.environ.get("QUILLMAN_FUZZ_SCALE", "1"))
N_SLOTS = 2
N_CTX = 1024
CHUNK = 16  # prompt tokens per step: a ~110-token prompt takes several steps (mid-prompt cancels)
SESSIONS = ["s0", "s1", "s2", None]  # three sessions on two slots, and requests without one

QUESTIONS = [
    "What is the capital city of France?", "Tell me a short fact about the moon.",
    "Name a fruit that is yellow.", "How many legs does a spider have?",
    "What colour is the sky?", "Who wrote Romeo and Juliet?", "What is two plus two?",
    "Why do leaves fall in autumn?", "What is the largest ocean?", "How do I boil an egg?",
    "Tell me", "What is the capital",  # partial transcripts: a speculation's prompt
]


def base_messages() -> list[dict]:
    """The server's prompt head: its instructions and few-shot exchanges."""
    config = SessionConfig()
    messages = [{"role": "system", "content": config.instructions}]
    for question, answer in config.few_shot:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return messages


# Logits differ by up to ~0.15 between two correct evaluations of one prompt that split it into
# other batches (float sums in another order: measured on this model, one batch vs a cached
# prefix + the rest); a stale or foreign KV cache answers another prompt, far beyond this.
TIE_LOGITS = 0.5


class FreshContext:
    """The reference: a llama.cpp context of its own (its own model), cleared before every
    prompt, the whole prompt evaluated in one batch, greedy with the engine's sampling."""

    def __init__(self, model_path: str, engine: BatchedLlamaCpp):
        import ctypes

        import llama_cpp
        from llama_cpp import _internals

        self._ll = llama_cpp
        self._engine = engine  # for its prompt rendering (stateless)
        self._model = _internals.LlamaModel(path_model=model_path, params=llama_cpp.llama_model_default_params(),
                                            verbose=False)
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = N_CTX
        params.n_batch = params.n_ubatch = N_CTX
        params.n_threads = params.n_threads_batch = 1
        self._ctx = _internals.LlamaContext(model=self._model, params=params, verbose=False)
        self._memory = llama_cpp.llama_get_memory(self._ctx.ctx)
        self._batch = _internals.LlamaBatch(n_tokens=N_CTX, embd=0, n_seq_max=1, verbose=False)
        vocab = self._model.vocab
        self._n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        piece = ctypes.create_string_buffer(64)
        self._pieces = []
        for token in range(self._n_vocab):
            n = llama_cpp.llama_token_to_piece(vocab, token, piece, len(piece), 0, False)
            self._pieces.append(piece.raw[:max(n, 0)])
        self._eog = [t for t in range(self._n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)]
        self.max_margin = 0.0  # the largest tie the engine's choices were forgiven

    def _decode(self, tokens: list[int], start: int) -> None:
        batch = self._batch.batch
        for i, token in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, start + i, 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = i == len(tokens) - 1
        batch.n_tokens = len(tokens)
        assert self._ll.llama_decode(self._ctx.ctx, batch) == 0

    def _logits(self, history: list[int], params: GenerationParams) -> np.ndarray:
        raw = self._ll.llama_get_logits_ith(self._ctx.ctx, -1)
        logits = np.ctypeslib.as_array(raw, shape=(self._n_vocab,)).astype(np.float64)
        for token in set(history[-64:]):  # llama.cpp's repetition penalty on generated tokens
            value = logits[token]
            logits[token] = value / params.repeat_penalty if value > 0 else value * params.repeat_penalty
        return logits

    def check(self, request: GenerationRequest, text: str) -> str | None:
        """None if every token of ``text`` is the greedy choice of a fresh context given the
        tokens before it (within TIE_LOGITS), else what went wrong."""
        params = request.params
        prompt = self._engine._tokenize(request)  # noqa: SLF001 - the same rendering, by design
        self._ll.llama_memory_clear(self._memory, True)
        self._decode(prompt, 0)
        remaining, history = text.encode("utf-8"), []
        for step in range(params.max_tokens):
            logits = self._logits(history, params)
            best = int(np.argmax(logits))
            if not remaining:  # the engine ended here: with an end-of-generation token
                margin = logits[best] - max(logits[t] for t in self._eog)
                if margin > TIE_LOGITS:
                    return f"ended after {text!r}; a fresh context goes on with {self._pieces[best]!r} (by {margin:.2f})"
                self.max_margin = max(self.max_margin, margin)
                return None
            if best not in self._eog and remaining.startswith(self._pieces[best]) and self._pieces[best]:
                token = best
            else:
                candidates = [t for t in range(self._n_vocab) if self._pieces[t] and remaining.startswith(self._pieces[t])]
                if not candidates:
                    return f"{remaining!r} is no token's text"
                token = max(candidates, key=lambda t: logits[t])
                margin = logits[best] - logits[token]
                if margin > TIE_LOGITS:
                    said = text.encode("utf-8")[:len(text.encode("utf-8")) - len(remaining)].decode("utf-8", "replace")
                    return (f"after {said!r} the engine said {self._pieces[token]!r}; a fresh context says "
                            f"{self._pieces[best]!r} (by {margin:.2f} logits)")
                self.max_margin = max(self.max_margin, margin)
            remaining = remaining[len(self._pieces[token]):]
            history.append(token)
            if step + 1 < params.max_tokens:
                self._decode([token], len(prompt) + step)
        return None if not remaining else f"the engine said more than max_tokens: {remaining!r}"


@dataclass
class InFlight:
    request: GenerationRequest
    session: str | None
    task: asyncio.Task
    stop_after: int | None  # close the stream after this many text deltas (None: to the end)
    deltas: list[str] = field(default_factory=list)
    usage: Usage | None = None


@dataclass
class Counts:
    compared: int = 0
    cancelled: int = 0
    cached_tokens: int = 0
    mismatches: list[str] = field(default_factory=list)


COUNTS = Counts()


@pytest.fixture(scope="module")
def engines():
    path = resolve_gguf_path("smollm2-135m")
    engine = BatchedLlamaCpp(path, n_threads=1, n_threads_batch=1, n_ctx=N_CTX, n_slots=N_SLOTS,
                             prefill_chunk_tokens=CHUNK)
    yield engine, FreshContext(path, engine)
    engine.close()


def make_machine(engine: BatchedLlamaCpp, reference: FreshContext):
    class EngineMachine(RuleBasedStateMachine):
        """Sessions talk to the engine; completed replies are checked against the reference."""

        @initialize()
        def setup(self) -> None:
            self.loop = asyncio.new_event_loop()
            self.histories: dict[str | None, list[dict]] = {s: base_messages() for s in SESSIONS}
            self.last_prompt: dict[str | None, list[dict]] = {}
            self.inflight: list[InFlight] = []
            self.progressed = asyncio.Event()  # set at each delta and at each request's end

        # --- requests ----------------------------------------------------------------------

        def _submit(self, session: str | None, messages: list[dict], max_tokens: int, stop_after: int | None,
                    deadline_s: float | None, paced: bool) -> None:
            request = GenerationRequest(
                messages=messages, params=GenerationParams(max_tokens=max_tokens, temperature=0.0, top_p=1.0,
                                                           repeat_penalty=1.1),
                session_id=session, deadline=None if deadline_s is None else time.time() + deadline_s,
                pacing=Pacing(burst_tokens=3, tokens_per_s=60.0, lead_s=0.05) if paced else None)
            entry = InFlight(request, session, task=None, stop_after=stop_after)  # type: ignore[arg-type]

            async def consume() -> None:
                stream = engine.stream(request)
                try:
                    async for delta in stream:
                        if isinstance(delta, Usage):
                            entry.usage = delta
                            continue
                        entry.deltas.append(delta)
                        self.progressed.set()
                        if entry.stop_after is not None and len(entry.deltas) >= entry.stop_after:
                            return  # mid-generation cancel: the stream is closed below
                finally:
                    await stream.aclose()

            entry.task = self.loop.create_task(consume())
            entry.task.add_done_callback(lambda _: self.progressed.set())
            self.last_prompt[session] = messages
            self.inflight.append(entry)
            self.loop.run_until_complete(asyncio.sleep(0))  # the request reaches the engine

        @rule(turns=st.lists(st.tuples(
            st.sampled_from(SESSIONS), st.sampled_from(QUESTIONS), st.integers(3, 10),
            st.one_of(st.none(), st.none(), st.integers(1, 4)),  # most run to the end
            st.one_of(st.none(), st.floats(0, 2)), st.booleans()), min_size=1, max_size=3))
        def ask(self, turns):
            """New turns (one to three sessions at once): the session's history and a new user
            message; some are closed after a few tokens (barge-in)."""
            for session, question, max_tokens, stop_after, deadline_s, paced in turns:
                messages = self.histories[session] + [{"role": "user", "content": question}]
                self._submit(session, messages, max_tokens, stop_after, deadline_s, paced)

        @precondition(lambda self: self.last_prompt)
        @rule(data=st.data(), max_tokens=st.integers(3, 10), stop_after=st.one_of(st.none(), st.integers(1, 4)))
        def repeat_or_diverge(self, data, max_tokens, stop_after):
            """The session's previous prompt again, or with its last user message replaced (the
            committed turn after a speculation on a partial transcript)."""
            session = data.draw(st.sampled_from(sorted(self.last_prompt, key=str)))
            messages = list(self.last_prompt[session])
            if data.draw(st.booleans()):
                messages[-1] = {"role": "user", "content": data.draw(st.sampled_from(QUESTIONS))}
            self._submit(session, messages, max_tokens, stop_after, None, data.draw(st.booleans()))

        @precondition(lambda self: self.inflight)
        @rule(data=st.data())
        def cancel(self, data):
            """Barge-in / a dropped speculation: wherever the request is (waiting for a slot,
            evaluating its prompt, generating)."""
            entry = data.draw(st.sampled_from(self.inflight))
            entry.task.cancel()

        @rule(deltas=st.integers(1, 5))
        def let_it_run(self, deltas):
            """The requests in flight move on by ``deltas`` text deltas between them (or all end):
            progress the engine makes, not a wall-clock time it may or may not fill."""
            self.loop.run_until_complete(asyncio.wait_for(self._progress(deltas), 120))

        async def _progress(self, deltas: int) -> None:
            target = sum(len(entry.deltas) for entry in self.inflight) + deltas
            while sum(len(entry.deltas) for entry in self.inflight) < target and \
                    not all(entry.task.done() for entry in self.inflight):
                self.progressed.clear()
                await self.progressed.wait()

        @precondition(lambda self: self.inflight)
        @rule(data=st.data())
        def finish_one(self, data):
            self._settle(data.draw(st.sampled_from(self.inflight)))

        # --- checks ------------------------------------------------------------------------

        def _settle(self, entry: InFlight) -> None:
            try:
                self.loop.run_until_complete(asyncio.wait_for(asyncio.shield(entry.task), 120))
            except asyncio.CancelledError:
                pass
            self.inflight.remove(entry)
            if entry.task.cancelled() or entry.usage is None:
                COUNTS.cancelled += 1
                return
            text = "".join(entry.deltas)
            problem = reference.check(entry.request, text)
            COUNTS.compared += 1
            COUNTS.cached_tokens += entry.usage.cached_tokens
            if SCALE > 1 and COUNTS.compared % 100 == 0:  # long runs: progress on the terminal
                print(f"differential: {COUNTS.compared} compared, {len(COUNTS.mismatches)} mismatches",
                      file=sys.stderr, flush=True)
            if problem is not None:
                COUNTS.mismatches.append(f"{entry.request.messages[-1]['content']!r} (session {entry.session}, "
                                         f"cached {entry.usage.cached_tokens}): {problem}")
            assert problem is None, COUNTS.mismatches[-1]
            if entry.session is not None and entry.request.messages == self.last_prompt.get(entry.session):
                # The reply joins the session's history: the next turn extends this prompt.
                self.histories[entry.session] = entry.request.messages + [{"role": "assistant", "content": text}]

        @invariant()
        def engine_alive(self):
            assert engine._worker.is_alive()  # noqa: SLF001

        def teardown(self):
            try:
                for entry in list(self.inflight):
                    self._settle(entry)
            finally:  # after a failed check too: nothing left running on the loop
                tasks = [entry.task for entry in self.inflight]
                for task in tasks:
                    task.cancel()
                if tasks:
                    self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
                self.loop.close()

    return EngineMachine


def test_batched_engine_matches_a_fresh_context(engines):
    engine, reference = engines
    machine = make_machine(engine, reference)
    run_state_machine_as_test(machine, settings=settings(
        max_examples=max(1, int(2 * SCALE)), stateful_step_count=30, deadline=None, derandomize=SCALE <= 1,
        suppress_health_check=list(HealthCheck), database=None))
    print(f"\ndifferential: {COUNTS.compared} sequences compared, {COUNTS.cancelled} cancelled, "
          f"{COUNTS.cached_tokens} prompt tokens reused, {len(COUNTS.mismatches)} mismatches, "
          f"largest tie forgiven {reference.max_margin:.3f} logits")
    assert COUNTS.compared >= 2 * SCALE
