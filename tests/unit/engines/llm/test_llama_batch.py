"""The batched llama.cpp engine on the shipped SmolLM2 weights: interleaving, per-session
prefix reuse, deadline order, cancellation. Behaviour only; speed is measured by the bench."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import pytest

from quillman.engines.llm.base import GenerationParams, GenerationRequest, Pacing, Usage
from quillman.engines.llm.llama_batch import BatchedLlamaCpp, common_prefix
from quillman.engines.llm.llama_cpp import resolve_gguf_path
from quillman.errors import ModelError

GREEDY = GenerationParams(max_tokens=24, temperature=0.0, top_p=1.0)
SYSTEM = {"role": "system", "content": "You are a helpful assistant."}


def chat(question: str) -> list[dict]:
    return [SYSTEM, {"role": "user", "content": question}]


def smollm(n_slots: int, prefill_chunk_tokens: int):
    engine = BatchedLlamaCpp(resolve_gguf_path("smollm2-135m"), n_threads=1, n_threads_batch=1,
                             n_ctx=512, n_slots=n_slots, prefill_chunk_tokens=prefill_chunk_tokens)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def engine():
    yield from smollm(n_slots=2, prefill_chunk_tokens=16)


@pytest.fixture(scope="module")
def one_slot():
    yield from smollm(n_slots=1, prefill_chunk_tokens=64)


class TokenLog(list):
    """The names of streams, one per token as it comes; ``await log.until(pred)`` wakes on each."""

    def __init__(self) -> None:
        super().__init__()
        self._grew = asyncio.Event()

    def append(self, name) -> None:
        super().append(name)
        self._grew.set()

    async def until(self, predicate, timeout_s: float = 30.0) -> None:
        async with asyncio.timeout(timeout_s):
            while not predicate(self):
                self._grew.clear()
                await self._grew.wait()


async def collect(engine, request, log=None, name=None):
    text, usage = [], None
    async for delta in engine.stream(request):
        if isinstance(delta, Usage):
            usage = delta
            continue
        text.append(delta)
        if log is not None:
            log.append(name)
    return "".join(text), usage


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([1, 2], [1, 2]) == 2


async def test_a_stream_ends_with_its_usage(engine):
    text, usage = await collect(engine, GenerationRequest(chat("What is the capital of France?"), GREEDY))
    assert text.strip()
    assert usage.input_tokens > 10 and 0 < usage.output_tokens <= GREEDY.max_tokens


async def test_concurrent_requests_interleave_token_by_token(engine):
    log = TokenLog()
    long = GenerationParams(max_tokens=40, temperature=0.0, top_p=1.0)
    first = asyncio.create_task(collect(engine, GenerationRequest(chat("Tell me a long story."), long), log, "a"))
    await log.until(lambda log: "a" in log)  # a is generating when b arrives
    second = asyncio.create_task(collect(engine, GenerationRequest(chat("Say hello."), long), log, "b"))
    await asyncio.gather(first, second)
    # b's first token came while a was still generating: no head-of-line blocking.
    assert log.index("b") < len(log) - 1 - log[::-1].index("a")


async def test_a_session_reuses_its_prompt_prefix(engine):
    history = chat("Name a colour.")
    _, first = await collect(engine, GenerationRequest(history, GREEDY, session_id="s-reuse"))
    reply, _ = await collect(engine, GenerationRequest(history, GREEDY, session_id="s-reuse"))
    follow_up = history + [{"role": "assistant", "content": reply}, {"role": "user", "content": "Another one?"}]
    _, second = await collect(engine, GenerationRequest(follow_up, GREEDY, session_id="s-reuse"))
    assert first.cached_tokens == 0 or first.cached_tokens < first.input_tokens
    assert second.cached_tokens >= first.input_tokens - 1  # the whole earlier prompt was kept


async def test_a_new_session_reuses_the_shared_prefix_and_evicts_the_idle_history(one_slot):
    first = chat("Tell me about the moon.")
    reply, a1 = await collect(one_slot, GenerationRequest(first, GREEDY, session_id="A"))
    _, b = await collect(one_slot, GenerationRequest(chat("Name a fruit."), GREEDY, session_id="B"))
    follow_up = first + [{"role": "assistant", "content": reply}, {"role": "user", "content": "And the sun?"}]
    _, a2 = await collect(one_slot, GenerationRequest(follow_up, GREEDY, session_id="A"))
    # B started from A's slot: the system prompt they share was not evaluated again ...
    assert 0 < b.cached_tokens < a1.input_tokens - 3
    # ... and A's history was gone when A came back (one slot): only the shared prefix was left.
    assert a2.cached_tokens < a1.input_tokens - 3


async def test_waiting_requests_start_earliest_deadline_first(one_slot):
    order: list[str] = []
    long = GenerationParams(max_tokens=30, temperature=0.0, top_p=1.0)
    log = TokenLog()
    busy = asyncio.create_task(collect(one_slot, GenerationRequest(chat("Count to twenty."), long), log, "busy"))
    await log.until(len)  # its first token: the slot is taken, the next three wait

    async def run(name: str, deadline: float):
        async for delta in one_slot.stream(GenerationRequest(chat(f"Say {name}."), GREEDY, deadline=deadline)):
            if not order or order[-1] != name:
                order.append(name)
            if isinstance(delta, Usage):
                return

    now = time.time()
    waiters = [asyncio.create_task(run("late", now + 9)), asyncio.create_task(run("soon", now + 1)),
               asyncio.create_task(run("never", None))]
    await asyncio.gather(busy, *waiters)
    assert order == ["soon", "late", "never"]


async def test_closing_a_stream_frees_its_slot(one_slot):
    stream = one_slot.stream(GenerationRequest(chat("Tell me a very long story."),
                                               GenerationParams(max_tokens=400, temperature=0.0, top_p=1.0)))
    await anext(stream)
    await stream.aclose()  # barge-in
    text, usage = await collect(one_slot, GenerationRequest(chat("Say yes."), GREEDY))
    assert text and usage.output_tokens > 0


async def test_a_prompt_longer_than_the_context_fails_that_request_only(one_slot):
    with pytest.raises(ModelError, match="does not fit"):
        await collect(one_slot, GenerationRequest(chat("word " * 600), GREEDY))
    text, _ = await collect(one_slot, GenerationRequest(chat("Say yes."), GREEDY))
    assert text


async def test_a_paced_reply_ahead_of_its_pace_gives_way_to_a_due_one(engine):
    """A spoken reply well ahead of playback pauses while a new turn's first tokens are due."""
    log = TokenLog()
    slow = Pacing(burst_tokens=2, tokens_per_s=0.5, lead_s=0.0)  # after 2 tokens: one every 2 s
    ahead = asyncio.create_task(collect(engine, GenerationRequest(
        chat("Tell me a long story."), GenerationParams(max_tokens=6, temperature=0.0, top_p=1.0),
        deadline=time.time(), pacing=slow), log, "paced"))
    await log.until(lambda log: log.count("paced") >= 3)
    urgent = await collect(engine, GenerationRequest(chat("Say hello."), GREEDY, deadline=time.time()), log, "urgent")
    assert urgent[0]
    # While the urgent reply ran, the paced one (not due for seconds) made no progress.
    first, last = log.index("urgent"), len(log) - 1 - log[::-1].index("urgent")
    assert "paced" not in log[first:last + 1]
    await ahead


class HeldMachine:
    """A NodePriority stand-in: other processes' critical work comes and goes on the test's word."""

    def __init__(self) -> None:
        self.others_busy = False
        self.held = 0
        self.critical_steps = 0
        self.gave_way = 0  # times the engine asked about others' work and was told to wait
        self._asked = threading.Condition()

    def busy(self, include_self: bool = True) -> bool:
        answer = self.others_busy or (include_self and self.held > 0)
        if answer and not include_self:
            with self._asked:
                self.gave_way += 1
                self._asked.notify_all()
        return answer

    async def engine_gave_way(self, times: int) -> None:
        """Once the engine (its thread) has given way ``times`` more times. Its tokens from
        before then are on the loop already: they were handed over before it asked."""
        target = self.gave_way + times

        def wait() -> bool:
            with self._asked:
                return self._asked.wait_for(lambda: self.gave_way >= target, timeout=30)
        assert await asyncio.to_thread(wait), "the engine never gave way"

    @contextlib.contextmanager
    def critical(self):
        self.held += 1
        self.critical_steps += 1
        try:
            yield
        finally:
            self.held -= 1


async def test_a_reply_ahead_of_its_pace_waits_while_the_machine_has_critical_work():
    """Another stage's critical work (the next turn's first TTS chunk, its last ASR segment)
    holds back a reply that is ahead of its pace; the prompt and first clause are critical."""
    machine = HeldMachine()
    engine = BatchedLlamaCpp(resolve_gguf_path("smollm2-135m"), n_threads=1, n_threads_batch=1, n_ctx=512,
                             n_slots=1, prefill_chunk_tokens=64, priority=machine)
    try:
        log = TokenLog()
        slow = Pacing(burst_tokens=2, tokens_per_s=0.2, lead_s=0.0)  # after 2 tokens: not due for seconds
        paced = asyncio.create_task(collect(engine, GenerationRequest(
            chat("Tell me a long story."), GenerationParams(max_tokens=8, temperature=0.0, top_p=1.0),
            deadline=time.time(), pacing=slow), log, "paced"))
        await log.until(lambda log: len(log) >= 2)
        assert machine.critical_steps >= 2  # the prompt and the burst ran as critical work
        machine.others_busy = True
        await machine.engine_gave_way(1)
        held_at = len(log)
        await machine.engine_gave_way(3)
        assert len(log) == held_at  # ahead of its pace and the machine busy: no progress
        critical_before = machine.critical_steps
        machine.others_busy = False  # the critical work ended: it runs ahead again
        text, usage = await asyncio.wait_for(paced, 30)
        assert usage.output_tokens == 8 and machine.critical_steps == critical_before
    finally:
        engine.close()


async def test_a_prefill_leaves_only_the_last_words_to_evaluate(engine):
    heard_so_far = chat("What is the capital city of")
    usage = await engine.prefill(GenerationRequest(heard_so_far, GREEDY, session_id="s-prefill"))
    assert usage is not None and usage.output_tokens == 0
    text, final = await collect(engine, GenerationRequest(chat("What is the capital city of France?"), GREEDY,
                                                          session_id="s-prefill"))
    assert text.strip()
    # Everything up to the words the partial transcript already had was in the cache.
    assert final.cached_tokens >= usage.input_tokens - 8
    assert final.input_tokens - final.cached_tokens <= 12


async def test_a_request_takes_the_slot_from_a_prefill_in_progress(one_slot):
    long_question = GenerationRequest(
        chat("Please tell me, " + "in great detail and with many examples, " * 12 + "why"), GREEDY, session_id="P")
    # Submitted together (the prefill first); the turn needs the only slot and gets it without
    # waiting for the prefill, which ends where it was (at most one step of its prompt done).
    ended, (text, _) = await asyncio.gather(
        one_slot.prefill(long_question), collect(one_slot, GenerationRequest(chat("Say hello."), GREEDY, session_id="Q")))
    assert text.strip()
    whole = await one_slot.prefill(long_question)
    assert whole is not None and whole.output_tokens == 0
    assert ended is None or ended.input_tokens < whole.input_tokens


async def test_a_prefill_of_a_session_with_tools_in_use_is_skipped(engine):
    from quillman.engines.llm.base import Tool
    weather = Tool("get_weather", "The weather in a city.", {"type": "object", "properties": {
        "city": {"type": "string"}}, "required": ["city"]})
    request = GenerationRequest(chat("What is the weather in"), GREEDY, session_id="s-tools",
                                tools=(weather,), tool_choice="auto")
    assert await engine.prefill(request) is None
