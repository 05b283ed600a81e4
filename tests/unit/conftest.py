"""Shared fixtures for the unit tests: fake models, a session driver, synthesized speech.

Everything here is fast and deterministic: no Ray, no network, no real ASR/LLM/TTS. The only
real model is Silero VAD (a tiny ONNX file shipped in faster-whisper), and test speech comes
from espeak-ng, synthesized once per test session.
"""

from __future__ import annotations

import asyncio
import time
import base64
import concurrent.futures
import contextlib
import faulthandler
import gc
import json
import sys
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pytest

from quillman.config import LlmConfig, SessionConfig, VadConfig
from quillman.engines.asr.base import ASR_SAMPLE_RATE_HZ, Transcript
from quillman.engines.vad import SileroVad
from quillman.pipeline.session import RealtimeSession
from quillman_bench.speech import espeak

PHRASE_A = "What is the capital of France"
PHRASE_B = "and how many people live there"
EVENT_TIMEOUT_S = 5.0
TEST_HANG_LIMIT_S = 30.0
REST_STEPS = 20  # loop steps in a row without a change that make a session "at rest" (settle())


async def until(condition: Callable[[], object], timeout_s: float = EVENT_TIMEOUT_S,
                what: str = "the condition") -> None:
    """Wait until ``condition()`` holds, looking again at every step of the event loop: the
    state the test waits for decides, never a wall-clock interval (the timeout only bounds a hang)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"{what} not reached within {timeout_s} s")
        await asyncio.sleep(0)


class CountingExecutor(concurrent.futures.ThreadPoolExecutor):
    """The loop's default executor (``asyncio.to_thread``: the VAD, the turn model) that knows
    how much work it has in flight, so a test can wait until no thread is still working."""

    def __init__(self) -> None:
        super().__init__(thread_name_prefix="test-executor")
        self.in_flight = 0

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[override]
        self.in_flight += 1  # on the loop's thread, as run_in_executor calls it
        future = super().submit(fn, *args, **kwargs)
        loop = asyncio.get_running_loop()
        future.add_done_callback(lambda _: self._done(loop))
        return future

    def _done(self, loop: asyncio.AbstractEventLoop) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed before the work ended
            loop.call_soon_threadsafe(self._count_done)

    def _count_done(self) -> None:
        self.in_flight -= 1


EXECUTORS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, CountingExecutor] = weakref.WeakKeyDictionary()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """No garbage collection while pytest renders a failure.

    Rendering parses the test's source with ``ast.parse``; on CPython 3.11 a collection in the
    middle of it that finalizes a leaked async generator (exactly what some failing tests here
    are about) raises "SystemError: AST constructor recursion depth mismatch" and ends the
    whole run with an INTERNALERROR.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@pytest.fixture
def hang_guard():
    """For tests that take well under a second: one stuck for 30 s dumps every stack and exits,
    so a deadlock shows where it is instead of stalling the suite. Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("hang_guard")``."""
    faulthandler.dump_traceback_later(TEST_HANG_LIMIT_S, exit=True, file=sys.stderr)
    yield
    faulthandler.cancel_dump_traceback_later()


# --- synthesized speech ----------------------------------------------------------------------


def trim_silence(pcm: np.ndarray, level: int = 300) -> np.ndarray:
    """Cut espeak's own leading/trailing silence so the true speech bounds are known."""
    loud = np.nonzero(np.abs(pcm.astype(np.int32)) > level)[0]
    return pcm[loud[0]:loud[-1] + 1]


@dataclass(frozen=True)
class SpokenClip:
    """int16 mono audio at ``rate`` with the true speech bounds (in samples of ``rate``)."""

    pcm: np.ndarray
    rate: int
    phrases: tuple[tuple[int, int], ...]  # (start, end) of each phrase

    def ms(self, sample: int) -> float:
        return sample * 1000.0 / self.rate

    @property
    def speech_start_ms(self) -> float:
        return self.ms(self.phrases[0][0])

    @property
    def speech_end_ms(self) -> float:
        return self.ms(self.phrases[-1][1])

    @property
    def duration_ms(self) -> float:
        return self.ms(len(self.pcm))


def build_clip(phrases: list[np.ndarray], rate: int, lead_s: float, gaps_s: list[float],
               tail_s: float) -> SpokenClip:
    parts = [np.zeros(int(lead_s * rate), np.int16)]
    bounds = []
    cursor = len(parts[0])
    for i, phrase in enumerate(phrases):
        parts.append(phrase)
        bounds.append((cursor, cursor + len(phrase)))
        cursor += len(phrase)
        gap = gaps_s[i] if i < len(gaps_s) else tail_s
        parts.append(np.zeros(int(gap * rate), np.int16))
        cursor += int(gap * rate)
    return SpokenClip(np.concatenate(parts), rate, tuple(bounds))


@pytest.fixture(scope="session")
def make_clip() -> Callable[..., SpokenClip]:
    """``build_clip`` for tests that lay out their own phrases and gaps."""
    return build_clip


@pytest.fixture(scope="session")
def phrases_16k() -> tuple[np.ndarray, np.ndarray]:
    return trim_silence(espeak(PHRASE_A, 16000)), trim_silence(espeak(PHRASE_B, 16000))


@pytest.fixture(scope="session")
def phrases_24k() -> tuple[np.ndarray, np.ndarray]:
    return trim_silence(espeak(PHRASE_A, 24000)), trim_silence(espeak(PHRASE_B, 24000))


@pytest.fixture(scope="session")
def paused_speech_16k(phrases_16k) -> SpokenClip:
    """[0.5 s silence, phrase A, 400 ms pause, phrase B, 1 s silence] at 16 kHz."""
    return build_clip(list(phrases_16k), 16000, 0.5, [0.4], 1.0)


@pytest.fixture(scope="session")
def paused_speech_24k(phrases_24k) -> SpokenClip:
    """The same at 24 kHz (the protocol's rate)."""
    return build_clip(list(phrases_24k), 24000, 0.5, [0.4], 1.0)


@pytest.fixture(scope="session")
def short_speech_24k(phrases_24k) -> SpokenClip:
    """[0.3 s silence, phrase A, 1 s silence] at 24 kHz: one short spoken turn."""
    return build_clip([phrases_24k[0]], 24000, 0.3, [], 1.0)


@pytest.fixture(scope="session")
def two_turns_24k(phrases_24k) -> SpokenClip:
    """[0.3 s silence, phrase A, 1.2 s silence, phrase B, 1 s silence]: two separate turns."""
    return build_clip(list(phrases_24k), 24000, 0.3, [1.2], 1.0)


# --- fake models -------------------------------------------------------------------------------


@dataclass
class CallLog:
    """What one fake model call saw: its arguments and how it ended."""

    args: dict[str, Any]
    started: bool = False
    completed: bool = False  # ran to its end
    cancelled: bool = False  # saw CancelledError or GeneratorExit (closed)
    finalized: bool = False  # its finally block ran
    outputs: list[Any] = field(default_factory=list)

    def __enter__(self) -> "CallLog":
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: Any) -> None:
        """The call's body ends: ran through, cancelled or closed, or failed."""
        if kind is None:
            self.completed = True
        elif issubclass(kind, (asyncio.CancelledError, GeneratorExit)):
            self.cancelled = True
        self.finalized = True


class FakeBackends:
    """Deterministic fakes for transcribe / generate / synthesize (see pipeline.backends).

    Behaviour is set by attributes; per-call behaviour by call index (``llm_hang_calls`` etc.).
    Every call is logged with whether it completed, saw cancellation and ran its finally.
    """

    def __init__(self) -> None:
        # ASR
        self.transcripts: list[str] = []  # returned in call order; then ``default_transcript``
        self.end_confidence: float | None = None  # every transcript's Transcript.end_confidence
        self.default_transcript = "hello there"
        self.asr_fail = False
        self.asr_hang = False
        self.asr_calls: list[CallLog] = []
        # "Hanging" calls wait for these; a test may set one to let them go on.
        self.asr_release = asyncio.Event()
        self.llm_release = asyncio.Event()
        self.tts_release = asyncio.Event()
        # LLM
        self.reply = "Sure, I can help you with that today. It is a fine question."
        self.replies: dict[int, str] = {}  # call index -> reply
        self.token_delay_s = 0.0
        self.llm_hang_calls: dict[int, int] = {}  # call index -> wait for llm_release after n tokens
        self.llm_fail_calls: dict[int, int] = {}  # call index -> raise after this many tokens
        self.llm_calls: list[CallLog] = []
        self.usage = None  # a quillman.engines.llm.base.Usage to end each stream with
        self.tool_calls: dict[int, list] = {}  # call index -> ToolCallDeltas after its text
        self.prefill_calls: list[CallLog] = []
        # TTS
        self.samples_per_word = 240
        self.tts_chunks = 2
        self.tts_hang_after_first_chunk = False
        self.tts_hang = False
        self.tts_delays: dict[int, float] = {}  # call index -> delay before its audio
        self.tts_calls: list[CallLog] = []

    # ASR -------------------------------------------------------------------------------------
    async def transcribe(self, pcm: np.ndarray, language: str | None, deadline: float | None = None) -> Transcript:
        log = CallLog({"pcm": np.array(pcm, copy=True), "language": language}, started=True)
        self.asr_calls.append(log)
        try:
            await asyncio.sleep(0)
            if self.asr_hang:
                await self.asr_release.wait()
            if self.asr_fail:
                raise RuntimeError("fake ASR failure")
            text = self.transcripts.pop(0) if self.transcripts else self.default_transcript
            log.completed = True
            log.outputs.append(text)
            return Transcript(text=text, language=language or "en",
                              audio_s=len(pcm) / ASR_SAMPLE_RATE_HZ, inference_ms=1.0,
                              end_confidence=self.end_confidence)
        except asyncio.CancelledError:
            log.cancelled = True
            raise
        finally:
            log.finalized = True

    # LLM -------------------------------------------------------------------------------------
    @staticmethod
    def tokens(text: str) -> list[str]:
        words = text.split(" ")
        return [words[0]] + [" " + w for w in words[1:]]

    async def generate(self, request):
        index = len(self.llm_calls)
        log = CallLog({"messages": [dict(m) for m in request.messages], "params": request.params,
                       "request": request}, started=True)
        self.llm_calls.append(log)
        reply = self.replies.get(index, self.reply)
        hang_after = self.llm_hang_calls.get(index)
        fail_after = self.llm_fail_calls.get(index)
        tokens = self.tokens(reply) if reply else []
        with log:
            for n, token in enumerate(tokens):
                if hang_after is not None and n == hang_after:
                    await self.llm_release.wait()
                if fail_after is not None and n >= fail_after:
                    raise RuntimeError("fake LLM failure")
                await asyncio.sleep(self.token_delay_s)  # the model's time per token (slow tokens)
                log.outputs.append(token)
                yield token
            for delta in self.tool_calls.get(index, ()):
                yield delta
            if hang_after is not None and hang_after >= len(tokens):
                await self.llm_release.wait()
            if self.usage is not None:  # as engines that count tokens end their stream
                yield self.usage

    async def prefill(self, request):
        self.prefill_calls.append(CallLog({"messages": [dict(m) for m in request.messages], "request": request},
                                          started=True, completed=True, finalized=True))
        return None

    # TTS -------------------------------------------------------------------------------------
    async def synthesize(self, text: str, voice: str, sample_rate_hz: int, deadline: float | None = None):
        index = len(self.tts_calls)
        log = CallLog({"text": text, "voice": voice, "rate": sample_rate_hz, "deadline": deadline,
                       "called_at": time.time()}, started=True)
        self.tts_calls.append(log)
        with log:
            if self.tts_hang:
                await self.tts_release.wait()
            await asyncio.sleep(self.tts_delays.get(index, 0))  # the synthesis's length (a slow sentence)
            n = max(1, len(text.split())) * self.samples_per_word
            # Sample value = 1 + call index: the order of audio shows the order of sentences.
            pcm = np.full(n, index + 1, dtype=np.int16)
            for piece in np.array_split(pcm, self.tts_chunks):
                log.outputs.append(len(piece))
                yield piece
                await asyncio.sleep(0)
                if self.tts_hang_after_first_chunk and not self.tts_release.is_set():
                    await self.tts_release.wait()


@pytest.fixture
def backends() -> FakeBackends:
    return FakeBackends()


# --- session driver -------------------------------------------------------------------------------


def b64(pcm: np.ndarray) -> str:
    return base64.b64encode(np.asarray(pcm, dtype="<i2").tobytes()).decode("ascii")


def fast_session_config(**overrides: Any) -> SessionConfig:
    """Session settings for tests: audio may be fed far faster than real time."""
    # No example exchanges: tests check the prompt's exact messages (test_answers.py has them).
    # No prefill from partial transcripts: scripted transcripts go to the turns' own ASR calls
    # in order (test_prefill.py turns it on).
    values = {"max_audio_ahead_s": 3600.0, "model_timeout_s": 10.0, "few_shot": [], "prefill_during_speech": False}
    # Fed faster than real time, a turn is hundreds of events in a few ms: no rate limit here.
    optional = {"max_events_per_s": 1e9, "event_burst": 10**9, "idle_timeout_s": 3600.0}
    values.update({k: v for k, v in optional.items() if k in SessionConfig.model_fields})
    values.update(overrides)
    return SessionConfig(**values)


@pytest.fixture
def session_config():
    """``session_config(**overrides)``: SessionConfig for tests (fast feeding allowed)."""
    return fast_session_config


# FakeBackends returns scripted transcripts in call order; a draft at a short silence that speech
# breaks (early_asr_ms) would take one. Tests of drafts turn them on (test_asr_drafts.py).
SCRIPTED_VAD = VadConfig(early_asr_ms=0)


class SessionDriver:
    """Runs a RealtimeSession like the ingress does and records every event it sends."""

    def __init__(self, backends: FakeBackends, config: SessionConfig | None = None,
                 vad_config: VadConfig | None = None,
                 make_vad: Callable[[], Callable[[np.ndarray], np.ndarray]] = SileroVad,
                 end_of_turn: Any = None, llm: LlmConfig | None = None,
                 mcp: Any = None, mcp_connector: Any = None):
        self.backends = backends
        self.events: list[dict[str, Any]] = []
        self._client_order: list[str] = []  # client_conversation() so far
        self._client_seen = 0
        self._inbox: asyncio.Queue[str | None] = asyncio.Queue()
        self._recorded = asyncio.Event()  # set at each event; wait_for() waits on it
        self._executor: CountingExecutor | None = None
        self.session = RealtimeSession(
            backends, config or fast_session_config(), vad_config or SCRIPTED_VAD, make_vad,
            send=self._record, llm=llm or LlmConfig(), end_of_turn=end_of_turn,
            mcp=mcp, mcp_connector=mcp_connector,
        )
        self.task: asyncio.Task | None = None

    async def _record(self, frame: str) -> None:
        # What the socket would carry: one JSON text per event.
        self.events.append(json.loads(frame))
        self._recorded.set()

    async def start(self) -> "SessionDriver":
        loop = asyncio.get_running_loop()
        if loop not in EXECUTORS:  # one per loop: the drivers of a test share it
            EXECUTORS[loop] = CountingExecutor()
            loop.set_default_executor(EXECUTORS[loop])
        self._executor = EXECUTORS[loop]
        self.task = asyncio.create_task(self.session.run(self._inbox.get))
        await self.wait_for("session.created")
        return self

    async def stop(self) -> None:
        """The client disconnects: ``receive`` returns None and run() cleans up."""
        if self.task is not None and not self.task.done():
            self._inbox.put_nowait(None)
            await asyncio.wait_for(self.task, EVENT_TIMEOUT_S)

    # client side ------------------------------------------------------------------------------
    async def send(self, event: dict[str, Any] | str) -> None:
        frame = event if isinstance(event, str) else json.dumps(event)
        await self.session.handle_frame(frame)

    async def append(self, pcm: np.ndarray, rate: int = 24000, frame_ms: int = 20,
                     yields_per_frame: int = 10) -> None:
        """Stream int16 audio as ``input_audio_buffer.append`` frames of ``frame_ms``.

        Faster than real time, but between frames the loop runs ``yields_per_frame`` times, so
        the fake models (which finish within a few steps) progress as they would during the
        20 ms a real client takes per frame. This keeps the interleaving deterministic.
        """
        step = rate * frame_ms // 1000
        for start in range(0, len(pcm), step):
            await self.send({"type": "input_audio_buffer.append", "audio": b64(pcm[start:start + step])})
            for _ in range(yields_per_frame):
                await asyncio.sleep(0)

    async def text_turn(self, text: str, **response: Any) -> dict[str, Any]:
        """A user text item and a response; returns that response's ``response.done``."""
        await self.drain()  # count what was already put, not only what the sender got to
        done_before = len(self.of_type("response.done"))
        await self.ask(text, **response)
        return await self.wait_for("response.done", count=done_before + 1, fail_on_request_error=True)

    async def ask(self, text: str, **response: Any) -> None:
        """A user text item and ``response.create``, without waiting for the response."""
        await self.send({"type": "conversation.item.create",
                         "item": {"type": "message", "role": "user",
                                  "content": [{"type": "input_text", "text": text}]}})
        await self.send({"type": "response.create", **({"response": response} if response else {})})

    # server side ------------------------------------------------------------------------------
    def of_type(self, event_type: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == event_type]

    def types(self, since: int = 0) -> list[str]:
        return [e["type"] for e in self.events[since:]]

    def errors(self) -> list[dict[str, Any]]:
        return [e["error"] for e in self.of_type("error")]

    def client_conversation(self) -> list[str]:
        """The item ids in order as a client keeps them from the events: each item right after
        its ``previous_item_id`` (at the start when that is null), deleted ones dropped. Fails
        on an event that does not fit the order so far (an item added twice or after an unknown
        one, an item done before added or before its previous item)."""
        order = self._client_order  # kept between calls: only the new events are read
        for e in self.events[self._client_seen:]:
            self._client_seen += 1
            kind, previous = e["type"], e.get("previous_item_id")
            if kind == "conversation.item.added":
                item_id = e["item"]["id"]
                assert item_id not in order, f"{item_id} added twice"
                assert previous is None or previous in order, f"{item_id} added after unknown {previous}"
                order.insert(0 if previous is None else order.index(previous) + 1, item_id)
            elif kind == "conversation.item.done":
                item_id = e["item"]["id"]
                assert item_id in order, f"{item_id} done before added (or after deleted)"
                assert previous is None or previous in order[:order.index(item_id)], \
                    f"{item_id} done after {previous}, which is not before it: {order}"
            elif kind == "input_audio_buffer.committed":
                assert previous is None or previous in order, f"committed after unknown {previous}"
            elif kind == "conversation.item.deleted":
                assert e["item_id"] in order, f"{e['item_id']} deleted, never added"
                order.remove(e["item_id"])
        return list(order)

    def assert_client_order(self) -> None:
        """At rest: the client's copy holds the server's items in the server's order (and may
        still hold items the server cut from its bounded history)."""
        client = self.client_conversation()
        server = [item_id for item_id, _ in self.session.conversation.items]
        assert set(server) <= set(client), f"server items the client never got: {set(server) - set(client)}"
        assert [i for i in client if i in set(server)] == server, f"client {client} vs server {server}"

    async def wait_for(self, event_type: str, count: int = 1, timeout: float = EVENT_TIMEOUT_S,
                       fail_on_request_error: bool = False) -> dict[str, Any]:
        """The ``count``-th event of this type (1-based), waiting for it if needed.

        With ``fail_on_request_error``, a new client-error event (the request was refused, so
        what we wait for will never come) fails at once instead of after the timeout.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        errors_before = len(self.errors())
        while True:
            self._recorded.clear()
            found = self.of_type(event_type)
            if len(found) >= count:
                return found[count - 1]
            refused = [e for e in self.errors()[errors_before:] if e["type"] == "invalid_request_error"]
            if fail_on_request_error and refused:
                raise AssertionError(f"refused while waiting for {event_type!r}: {refused}")
            try:
                async with asyncio.timeout_at(deadline):
                    await self._recorded.wait()  # the next event the session sends
            except TimeoutError:
                raise AssertionError(
                    f"no {count}x {event_type!r} within {timeout} s; got {self.types()}") from None

    async def drain(self) -> None:
        """Wait until every event the session has put so far has been sent (recorded)."""
        outbox = self.session.connection.outbox  # the harness knows the queue
        loop = asyncio.get_running_loop()
        deadline = loop.time() + EVENT_TIMEOUT_S
        while not outbox.empty() and loop.time() < deadline:
            await asyncio.sleep(0)
        await asyncio.sleep(0)  # the sender's last send

    async def settle(self) -> None:
        """Run the loop until the session is at rest: every event it put is sent, no thread
        (VAD, turn model) is working for it, and nothing changed for ``REST_STEPS`` loop steps
        (events, queued bytes, tasks). What a test then finds missing will not come by itself.
        Loop steps, not wall time: a fake that sleeps (``token_delay_s``) is not at rest, wait
        for its event instead."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + EVENT_TIMEOUT_S
        outbox = self.session.connection.outbox
        calm, last = 0, None
        while calm < REST_STEPS:
            state = (len(self.events), outbox.queued_bytes, len(asyncio.all_tasks()))
            busy = not outbox.empty() or (self._executor is not None and self._executor.in_flight > 0)
            calm = 0 if busy or state != last else calm + 1
            last = state
            if loop.time() > deadline:
                raise AssertionError(f"the session never came to rest within {EVENT_TIMEOUT_S} s; got {self.types()[-10:]}")
            await asyncio.sleep(0)


@pytest.fixture
async def driver(make_driver):
    """A started session with default settings (server VAD on, fast feeding allowed)."""
    return await make_driver()


@pytest.fixture
async def make_driver(backends):
    """Build (and start) a driver with custom settings; every one is stopped at the end."""
    drivers: list[SessionDriver] = []

    async def make(config: SessionConfig | None = None, vad_config: VadConfig | None = None,
                   fakes: FakeBackends | None = None, **options: Any) -> SessionDriver:
        d = SessionDriver(fakes or backends, config, vad_config, **options)
        drivers.append(d)
        return await d.start()

    yield make
    for d in drivers:
        try:
            await d.stop()
        except (AssertionError, asyncio.TimeoutError):  # a failed test must not hang the suite
            d.task.cancel()
