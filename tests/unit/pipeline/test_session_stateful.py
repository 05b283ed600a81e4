"""A stateful Hypothesis test of one RealtimeSession: random interleavings of client events.

A ``RuleBasedStateMachine`` drives a session (fake models of tests/unit/conftest.py, real Silero
VAD, espeak-ng speech) through random sequences of real JSON frames sent with
``SessionDriver.send``. Rules: ``input_audio_buffer.append`` (silence; speech, speech with a
pause, slices of a two-phrase clip, at the session's current input rate, in frames of 10 ms to
1 s, odd sample counts), ``commit`` (alone or after some silence), ``clear``, turn detection off
(``null``) / on (``server_vad`` with random threshold, silence_duration_ms, prefix_padding_ms,
create_response, interrupt_response), any ``session.update`` (input/output formats at supported
and unsupported rates, invalid turn detection, instructions, voice, modalities),
``conversation.item.create`` (user/system/assistant) / ``conversation.item.truncate`` (a finished
or running reply, a client item, a user item, a made-up id), ``response.create`` (with options) /
``response.cancel`` (no id, latest, finished, made-up id), malformed frames (bad JSON, unknown,
unsupported or non-string type, missing fields, bad base64, odd byte counts), models made slow,
long-winded or failing, the loop left to run, and disconnect + a fresh session. Each client event
carries its own ``event_id``, so each ``error`` event is attributed to its frame. Sessions are
started with the default or a short history (8 items) and ``max_turn_s`` of 120 s or 3 s.

A small model of the session (what the client has declared and what it has seen) says, for each
frame, whether it must be accepted, must be refused with a given code, or may go either way
(a race the client cannot see, e.g. "has that response ended yet?"). Checked after every step:

- ``handle_frame`` returned (in the ingress an exception there ends the session's ``run()``)
  and the session task is still running; no coroutine was dropped without being awaited;
- every frame got exactly the errors its outcome allows (none when accepted, one with its
  ``event_id`` when refused; bad JSON: one without), none arrives later for an old frame, none
  arrives unattributed; model errors and failed responses only after an injected model failure;
- ``session.updated`` (exactly one per accepted update, none for a refused one) shows the model's
  rates, turn detection, flags and instructions; a commit that is accepted commits one turn;
- ``response.created`` / ``response.done`` pair up: at most one done per id, after its created,
  status completed/cancelled/failed, nothing of a response after its done, one response at a time
  on the wire, audio/text events only in responses of that modality, never more responses than
  were asked for, barge-in cancellations only after speech started with interrupt_response on;
- turn detection events only while it is on and only from appended audio; a turn server VAD
  commits has its speech_stopped first; each item committed once, added before it is done,
  ``previous_item_id`` always a known item.

When the session settles (a rule; the teardown) and at each disconnect:

- every committed turn (with create_response on) and every accepted ``response.create`` got
  exactly one response, created and done, and each committed user item one transcript (bounded
  wait); an accepted ``response.cancel`` ended some response ``cancelled``;
- after ``stop`` the session task ended without an exception, every fake model call was
  finalized and no asyncio task is left on the loop; at the teardown the session, with its models
  well again, still answers a text turn with ``completed``.

The test asserts the correct behaviour, so it fails where the session has bugs. Each bug it found
has a plain regression test at the bottom of this file, with its minimal event sequence.

Determinism: the machine runs on its own event loop whose default executor runs jobs inline, so
the VAD's ``asyncio.to_thread`` takes the same loop steps each time and a failing sequence replays
exactly; waits are loop steps and "slow" models are long replies in many chunks (one loop step
each). Only the "slow tokens" model change (``token_delay_s``) uses wall-clock time; it is left
out when shrinking, where a replay that differs would abort the run.

Scale: ``QUILLMAN_FUZZ_SCALE`` (the knob of test_fuzz.py) multiplies the number of sequences and
grows their length by its square root. CI-sized runs report a failing sequence as found; with a
scale above 1 (or ``QUILLMAN_FUZZ_SHRINK=1``) Hypothesis shrinks it and goes on looking for
distinct bugs (minutes). Run with ``-s`` to see how many sequences, steps, rules and frames ran.

Only the public surface of ``SessionDriver`` and ``FakeBackends`` is used, no private attribute of
the session: the task-leak check counts the tasks of the test's own loop.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import functools
import gc
import importlib.util
import json
import math
import os
import sys
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from quillman.audio import resample
from quillman.protocol import SUPPORTED_RATES_HZ
from quillman_bench.speech import espeak


def _load_unit_fakes():
    """tests/unit/conftest.py as a plain module (as test_fuzz.py loads it): FakeBackends,
    SessionDriver, fast_session_config. A state machine builds its sessions itself, so the
    function-scoped async fixtures don't fit; the classes are the ones the fixtures build."""
    name = "_quillman_unit_fakes"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


fakes = _load_unit_fakes()

SCALE = float(os.environ.get("QUILLMAN_FUZZ_SCALE", "1"))
# Shrinking a failing sequence replays it hundreds of times (minutes): CI-sized runs report the
# sequence as found (the regression tests below hold the minimal ones); deeper runs shrink it.
SHRINK = os.environ.get("QUILLMAN_FUZZ_SHRINK", "1" if SCALE > 1 else "0") != "0"
MACHINE_SETTINGS = settings(
    max_examples=max(1, int(30 * SCALE)),  # CI budget; QUILLMAN_FUZZ_SCALE=4 for a long run
    stateful_step_count=max(5, int(30 * math.sqrt(max(SCALE, 1.0)))),
    deadline=None, database=None, print_blob=True,
    phases=[Phase.explicit, Phase.reuse, Phase.generate] + ([Phase.shrink] if SHRINK else []),
    report_multiple_bugs=SHRINK,  # with shrinking, Hypothesis goes on looking for distinct bugs
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much],
)
STEP_TIMEOUT_S = 30.0  # a rule (or a settle) stuck this long is a hang: fail, don't stall
SETTLE_TIMEOUT_S = 8.0  # how long pending responses may take to end once nothing new comes
RESPONSE_STATUSES = {"completed", "cancelled", "failed"}
BAD_RATES = [0, 1, 12345, 96000, -24000]
PHRASES = ("What is the capital of France", "and how many people live there")
LONG_REPLY = "Sure, I can help you with that today." + " It is a fine question and the answer is long." * 6

TRIED: Counter[str] = Counter()  # rule / frame kind -> how many, over the module
RUNS: Counter[str] = Counter()  # sequences, steps
RULES: Counter[str] = Counter()  # rule -> how many times it ran


@pytest.fixture(scope="module", autouse=True)
def _report_tried():
    yield
    rules = ", ".join(f"{name} {n}" for name, n in RULES.most_common())
    kinds = ", ".join(f"{kind} {n}" for kind, n in TRIED.most_common())
    print(f"\nstateful: {RUNS['sequences']} sequences, {RUNS['steps']} steps, "
          f"{RUNS['sessions']} sessions\n  rules: {rules}\n  {sum(TRIED.values())} frames/actions: {kinds}")


# --- speech ------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _phrases_16k() -> tuple[np.ndarray, ...]:
    """espeak-ng, once per process."""
    return tuple(fakes.trim_silence(espeak(text, 16000)) for text in PHRASES)


@functools.lru_cache(maxsize=None)
def speech_at(rate: int) -> dict[str, np.ndarray]:
    """int16 speech at ``rate``: each phrase alone, and [0.3 s, A, 0.4 s pause, B, 0.9 s]."""
    a, b = (resample(p, 16000, rate) for p in _phrases_16k())
    clip = fakes.build_clip([a, b], rate, 0.3, [0.4], 0.9)
    return {"a": a, "b": b, "clip": clip.pcm}


def pcm_b64(pcm: np.ndarray) -> str:
    return base64.b64encode(np.asarray(pcm, dtype="<i2").tobytes()).decode("ascii")


# --- strategies --------------------------------------------------------------------------------

vad_settings = st.fixed_dictionaries({"type": st.just("server_vad")}, optional={
    "threshold": st.floats(0.05, 0.95).map(lambda x: round(x, 3)),
    "silence_duration_ms": st.integers(100, 1500),
    "prefix_padding_ms": st.integers(0, 1000),
    "create_response": st.booleans(),
    "interrupt_response": st.booleans(),
})
# Refused by the parser (out of range / unknown type): the whole update must change nothing.
invalid_vad = st.sampled_from([
    {"type": "server_vad", "threshold": 1.5}, {"type": "server_vad", "silence_duration_ms": 50},
    {"type": "server_vad", "prefix_padding_ms": -1}, {"type": "bogus_vad"},
])
audio_formats = st.one_of(
    st.sampled_from(SUPPORTED_RATES_HZ).map(lambda r: {"type": "audio/pcm", "rate": r}),
    st.sampled_from(BAD_RATES).map(lambda r: {"type": "audio/pcm", "rate": r}),
)  # (this model speaks pcm16; G.711 sessions have their own tests in test_g711_session.py)
session_updates = st.fixed_dictionaries({}, optional={
    "instructions": st.sampled_from(["Be terse.", "Talk like a pirate.", ""]),
    "input_format": audio_formats,
    "output_format": audio_formats,
    "turn_detection": st.one_of(st.none(), vad_settings, invalid_vad),
    "voice": st.sampled_from(["joe", "alloy", "nope"]),
    "output_modalities": st.sampled_from([["audio"], ["text"]]),
})


def _format_supported(fmt: dict | None) -> bool:
    return fmt is None or (fmt["type"] == "audio/pcm" and fmt["rate"] in SUPPORTED_RATES_HZ)


class InlineExecutor(concurrent.futures.ThreadPoolExecutor):
    """Runs each job at once in the caller (the loop's default executor in this test).

    The session runs Silero VAD with ``asyncio.to_thread``; on a real thread how many loop steps
    other tasks take meanwhile depends on timing, so a sequence would not replay the same way and
    Hypothesis could not shrink it. Inline, the loop still yields at the same awaits."""

    def submit(self, fn, /, *args, **kwargs):
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            future.set_exception(exc)
        return future


def counted(fn):
    """Count each rule run (RULES) for the report."""
    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        RULES[fn.__name__] += 1
        return fn(self, *args, **kwargs)

    return wrapper


class SessionMachine(RuleBasedStateMachine):
    """One client against one session at a time (a disconnect starts a fresh one)."""

    def __init__(self) -> None:
        super().__init__()
        RUNS["sequences"] += 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gc.collect()  # a clean slate (see teardown)
        self.loop = asyncio.new_event_loop()
        # VAD runs through asyncio.to_thread: inline, a run is deterministic and replays exactly.
        self.loop.set_default_executor(InlineExecutor())
        self.broken = False  # a check failed: the teardown only cleans up
        self.n = 0  # event ids
        self.driver: Any = None
        self.backends: Any = None
        self.history_limit = 10**6
        self.max_turn_s = 120.0

    # --- plumbing ---------------------------------------------------------------------------

    def _run(self, coro) -> Any:
        async def bounded() -> Any:  # one task: asyncio.wait_for would wrap coro in a second one
            async with asyncio.timeout(STEP_TIMEOUT_S):
                return await coro

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = self.loop.run_until_complete(bounded())
            except BaseException:
                self.broken = True
                raise
        self._check_warnings(caught)
        return result

    def _check_warnings(self, caught: list[warnings.WarningMessage]) -> None:
        """A coroutine the session made and dropped unawaited is work that silently never ran (and
        a RuntimeWarning in the server's log); other warnings go on to pytest."""
        never = [str(w.message) for w in caught
                 if issubclass(w.category, RuntimeWarning) and "never awaited" in str(w.message)]
        for w in caught:
            if str(w.message) not in never:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if never:
            self.broken = True
            raise AssertionError(f"coroutines dropped without being awaited: {never}")

    def _check(self, fn) -> None:
        try:
            fn()
        except BaseException:
            self.broken = True
            raise

    def eid(self) -> str:
        self.n += 1
        return f"ev_{self.n}"

    async def _open(self) -> None:
        RUNS["sessions"] += 1
        self.backends = fakes.FakeBackends()
        self.default_reply = self.backends.reply
        self.driver = fakes.SessionDriver(self.backends, fakes.fast_session_config(
            max_history_messages=self.history_limit, max_turn_s=self.max_turn_s))
        await self.driver.start()
        session = self.driver.events[0]["session"]
        # What the client has declared / seen (the model the expectations come from).
        self.rate_in = session["audio"]["input"]["format"]["rate"]
        self.rate_out = session["audio"]["output"]["format"]["rate"]
        td = session["audio"]["input"]["turn_detection"]
        self.vad_on = td is not None
        self.create_response = td["create_response"] if td else True
        self.interrupt_response = td["interrupt_response"] if td else True
        self.instructions = session["instructions"]
        self.buffered_ms = 0.0  # audio appended since the last commit/clear/committed turn
        self.buffered_no_vad_ms = 0.0  # the part of it appended while turn detection was off
        self.expected_responses = 0  # committed turns with create_response + accepted response.create
        self.accepted_cancels = 0
        self.failures_injected = False
        self.client_assistant_items: set[str] = set()
        self.deleted_items: set[str] = set()  # deleted by the client: unknown from then on
        self.errors_by_eid: Counter[str] = Counter()
        self.closing_at: int | None = None  # index of the first event sent by close()
        self.barge_ins_allowed = 0  # speech starts while interrupt_response was on

    # --- sending frames ---------------------------------------------------------------------

    async def frame(self, kind: str, event: dict | str, eid: str | None,
                    allowed: set[str | None]) -> tuple[str | None, list[dict]]:
        """Send one frame; check its errors against ``allowed`` (None = accepted).

        Returns (outcome, events that came while it was handled)."""
        TRIED[kind] += 1
        d = self.driver
        await d.drain()
        before = len(d.events)
        text = event if isinstance(event, str) else json.dumps(event)
        try:
            sent_type = json.loads(text).get("type")
        except (ValueError, AttributeError):
            sent_type = None
        try:
            await d.send(text)
        except Exception as exc:  # noqa: BLE001 - that is the finding
            raise AssertionError(
                f"handle_frame raised {type(exc).__name__}: {exc} on {kind} {text[:200]!r} "
                f"(in the ingress this ends the session's run())") from exc
        await d.drain()
        new = d.events[before:]
        mine, unattributed = [], []
        for e in new:
            if e["type"] != "error":
                continue
            err = e["error"]
            if eid is not None and err.get("event_id") == eid:
                mine.append(err)
            elif err.get("event_id") is None and err.get("code") == "model_error":
                assert self.failures_injected, f"model error without an injected failure: {err}"
            elif eid is None and err.get("event_id") is None and err["type"] == "invalid_request_error":
                mine.append(err)
            else:
                unattributed.append(err)
        assert not unattributed, f"errors not caused by {kind} {text[:120]!r}: {unattributed}"
        assert len(mine) <= 1, f"{kind} got {len(mine)} errors: {mine}"
        outcome = mine[0]["code"] if mine else None
        assert outcome in allowed, (
            f"{kind} {text[:200]!r}: expected {sorted(map(str, allowed))}, got {outcome!r} "
            f"({mine[0]['message'] if mine else 'accepted'})")
        if mine:
            assert mine[0]["type"] == "invalid_request_error" and mine[0]["message"]
            if eid is not None:
                self.errors_by_eid[eid] += 1
        # Turn detection runs on appended audio, and only while it is on.
        vad_events = [e["type"] for e in new if e["type"] in (
            "input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped")]
        is_append = sent_type == "input_audio_buffer.append"
        if self.interrupt_response:
            self.barge_ins_allowed += vad_events.count("input_audio_buffer.speech_started")
        assert not vad_events or (is_append and self.vad_on), \
            f"{vad_events} during {kind} (turn detection {'on' if self.vad_on else 'off'})"
        # Committed turns happen while a frame is handled (commit, or VAD during an append).
        committed = [e for e in new if e["type"] == "input_audio_buffer.committed"]
        is_commit = sent_type == "input_audio_buffer.commit"
        assert not committed or is_commit or (is_append and self.vad_on), \
            f"{len(committed)} turns committed during {kind} (turn detection on: {self.vad_on})"
        if is_append and self.vad_on:
            self._check_vad_commits(new)
        if committed:
            self.buffered_ms = self.buffered_no_vad_ms = 0.0
            if self.create_response:
                self.expected_responses += len(committed)
        self._check_alive()
        return outcome, new

    def append_allowed(self) -> set[str | None]:
        """Outcomes of a valid append: without turn detection, once more than max_turn_s of audio
        is uncommitted, appends are refused (even empty ones)."""
        full, limit_ms = "input_audio_buffer_full", self.max_turn_s * 1000
        if not self.vad_on and self.buffered_no_vad_ms > limit_ms + 50:
            return {full}
        if not self.vad_on and self.buffered_ms > limit_ms - 50:
            return {None, full}
        return {None}

    async def append_pcm(self, kind: str, pcm: np.ndarray, chunk: int, yields: int) -> None:
        for start in range(0, len(pcm), chunk):
            piece = pcm[start:start + chunk]
            eid = self.eid()
            outcome, _ = await self.frame(kind, {"type": "input_audio_buffer.append", "event_id": eid,
                                                 "audio": pcm_b64(piece)}, eid, self.append_allowed())
            if outcome is not None:
                continue
            ms = len(piece) * 1000.0 / self.rate_in
            self.buffered_ms += ms
            if not self.vad_on:
                self.buffered_no_vad_ms += ms
            for _ in range(yields):
                await asyncio.sleep(0)

    # --- what the client can tell from the events ---------------------------------------------

    def responses(self) -> tuple[dict[str, dict], dict[str, dict]]:
        created = {e["response"]["id"]: e for e in self.driver.of_type("response.created")}
        done = {e["response"]["id"]: e for e in self.driver.of_type("response.done")}
        return created, done

    def idle(self) -> bool:
        """Every response asked for has ended (so none is active)."""
        return len(self.driver.of_type("response.done")) == self.expected_responses

    def _check_alive(self) -> None:
        task = self.driver.task
        if task.done():
            exc = None if task.cancelled() else task.exception()
            raise AssertionError(f"the session task ended: {exc!r}") from exc

    def _check_responses(self) -> None:
        """Responses pair up, don't overlap and stream their own modality; barge-ins only when
        allowed; VAD events pair up; one user item per commit; items are added before use."""
        d = self.driver
        seen: dict[str, list[str]] = {}  # response id -> its output modalities
        done_ids: set[str] = set()
        open_ids: list[str] = []
        speaking: str | None = None  # item id of the speech_started not yet stopped/committed
        committed: set[str] = set()
        items: set[str] = set()  # ids of conversation.item.added so far
        barged_in = 0
        for index, e in enumerate(d.events):
            kind = e["type"]
            if kind == "response.created":
                rid = e["response"]["id"]
                assert rid not in seen, f"two response.created for {rid}"
                self._check_one_at_a_time(rid, open_ids, index)
                seen[rid] = e["response"]["output_modalities"]
                open_ids.append(rid)
            elif kind == "response.done":
                rid = e["response"]["id"]
                assert rid in seen, f"response.done before response.created for {rid}"
                assert rid not in done_ids, f"two response.done for {rid}"
                done_ids.add(rid)
                open_ids.remove(rid)
                status = e["response"]["status"]
                assert status in RESPONSE_STATUSES, f"response {rid} ended {status!r}"
                assert status != "failed" or self.failures_injected, \
                    f"response {rid} failed without an injected failure: {e['response']['status_details']}"
                details = e["response"].get("status_details") or {}
                barged_in += details.get("reason") == "turn_detected"
            elif "response_id" in e and kind != "error":
                rid = e["response_id"]
                assert rid in seen, f"{kind} of response {rid} before its response.created"
                assert rid not in done_ids, f"{kind} of response {rid} after its response.done"
                if kind.startswith("response.output_audio"):
                    assert "audio" in seen[rid], f"{kind} in a {seen[rid]} response"
                elif kind.startswith("response.output_text"):
                    assert "text" in seen[rid], f"{kind} in a {seen[rid]} response"
            elif kind == "input_audio_buffer.speech_started":
                speaking = e["item_id"]
            elif kind == "input_audio_buffer.speech_stopped":
                assert e["item_id"] == speaking, f"speech_stopped for {e['item_id']}, started: {speaking}"
            elif kind == "input_audio_buffer.committed":
                assert e["item_id"] not in committed, f"{e['item_id']} committed twice"
                committed.add(e["item_id"])
                speaking = None
            if kind in ("conversation.item.added", "input_audio_buffer.committed"):
                previous = e.get("previous_item_id")
                assert previous is None or previous in items, f"{kind}: previous_item_id {previous} unknown"
            if kind == "conversation.item.added":
                items.add(e["item"]["id"])
            elif kind == "conversation.item.done":
                assert e["item"]["id"] in items, f"conversation.item.done for {e['item']['id']} before added"
        d.client_conversation()  # every previous_item_id fits the order the client keeps
        assert len(seen) <= self.expected_responses, (
            f"{len(seen)} responses created, only {self.expected_responses} asked for "
            f"(committed turns with create_response + accepted response.create)")
        assert barged_in <= self.barge_ins_allowed, (
            f"{barged_in} responses cancelled by turn detection, only {self.barge_ins_allowed} "
            f"speech starts while interrupt_response was on")

    def _check_vad_commits(self, new: list[dict]) -> None:
        """A turn that server VAD commits has stopped first: speech_stopped, then committed (also
        when the server ends a turn at max_turn_s: the client must not think the user still talks)."""
        order = [(e["type"].rsplit(".", 1)[1], e["item_id"]) for e in new if e["type"] in (
            "input_audio_buffer.speech_stopped", "input_audio_buffer.committed")]
        committed = [item for kind, item in order if kind == "committed"]
        stopped_first = [item for i, (kind, item) in enumerate(order)
                         if kind == "committed" and i > 0 and order[i - 1] == ("speech_stopped", item)]
        assert committed == stopped_first, f"server VAD committed without speech_stopped first: {order}"

    def _check_one_at_a_time(self, rid: str, open_ids: list[str], index: int) -> None:
        """One response at a time on the wire: a queued one opens after the previous one's done.

        Not for what ``close()`` sends on a disconnect (nobody listens any more)."""
        if self.closing_at is None or index < self.closing_at:
            assert not open_ids, f"response {rid} created while {open_ids} had not ended"

    def _check_late_errors(self) -> None:
        d = self.driver
        counts = Counter(e["error"].get("event_id") for e in d.of_type("error"))
        for eid, n in counts.items():
            if eid is None:
                continue
            assert n == self.errors_by_eid[eid], (
                f"{n} errors for {eid} now, {self.errors_by_eid[eid]} when it was handled")

    def _unsettled(self) -> list[str]:
        """What is still to come: responses asked for, transcripts of committed user items."""
        d = self.driver
        missing = []
        done = len(d.of_type("response.done"))
        if done < self.expected_responses:
            missing.append(f"{self.expected_responses - done} of {self.expected_responses} response.done")
        # Each committed user item ends in exactly one transcription outcome: completed, or
        # failed (GA's input_audio_transcription.failed, when the injected ASR failure hit it).
        transcribed = Counter(e["item_id"] for e in [
            *d.of_type("conversation.item.input_audio_transcription.completed"),
            *d.of_type("conversation.item.input_audio_transcription.failed")])
        for e in d.of_type("input_audio_buffer.committed"):
            if transcribed[e["item_id"]] != 1:
                missing.append(f"{transcribed[e['item_id']]} transcription outcomes for {e['item_id']}")
        return missing

    async def settle_all(self) -> None:
        """Wait (bounded) until every response asked for has ended and every committed user item
        has its transcript; check that each came exactly once."""
        d = self.driver
        with contextlib.suppress(AssertionError):  # what is still missing is reported below
            await fakes.until(lambda: d.session.connection.outbox.empty() and not self._unsettled(), SETTLE_TIMEOUT_S)
        await d.settle()
        self._check_responses()
        created, done = self.responses()
        assert len(done) == self.expected_responses, (
            f"{self.expected_responses} responses asked for (committed turns with create_response + "
            f"accepted response.create), {len(created)} created, {len(done)} done after "
            f"{SETTLE_TIMEOUT_S} s; last events {d.types()[-12:]}")
        assert set(created) == set(done), f"created without done: {set(created) - set(done)}"
        assert not self._unsettled(), self._unsettled()
        if self.accepted_cancels:
            assert any(e["response"]["status"] == "cancelled" for e in done.values()), \
                "a response.cancel was accepted but no response ended cancelled"

    async def disconnect_and_check(self) -> None:
        d = self.driver
        await d.drain()
        self.closing_at = len(d.events)
        await d.stop()
        await asyncio.sleep(0)
        assert d.task.done()
        assert not d.task.cancelled() and d.task.exception() is None, \
            f"run() ended with {None if d.task.cancelled() else d.task.exception()!r}"
        # Everything the session had put reached the client before it closed.
        self._check_responses()
        created, done = self.responses()
        assert len(done) == len(created) == self.expected_responses, (
            f"at disconnect: {self.expected_responses} asked for, {len(created)} created, "
            f"{len(done)} done")
        for call in self.backends.asr_calls + self.backends.llm_calls + self.backends.tts_calls:
            assert call.finalized, f"a model call still running after disconnect: {call.args.keys()}"
        for _ in range(3):
            await asyncio.sleep(0)
        assert_no_task_left()
        gc.collect()  # what the closed session dropped is finalized now (see _check_warnings)

    # --- rules: setup -----------------------------------------------------------------------

    @initialize(history=st.sampled_from([10**6, 10**6, 8]),
                max_turn_s=st.sampled_from([120.0, 120.0, 3.0]))
    def start(self, history: int, max_turn_s: float) -> None:
        # history 8 is the default: old items leave it (truncating them may be refused).
        # max_turn_s 3: the whole clip is a turn too long (ended by the server), and without
        # turn detection appends beyond 3 s uncommitted are refused.
        self.history_limit = history
        self.max_turn_s = max_turn_s
        self._run(self._open())

    # --- rules: audio -----------------------------------------------------------------------

    @rule(kind=st.sampled_from(["speech", "speech+pause", "clip slice", "whole clip"]),
          which=st.sampled_from(["a", "b"]), cut=st.tuples(st.floats(0, 1), st.floats(0, 1)),
          frame_ms=st.sampled_from([10, 20, 50, 100, 100, 250, 1000]), odd=st.booleans(),
          yields=st.integers(0, 6))
    @counted
    def append_speech(self, kind, which, cut, frame_ms, odd, yields) -> None:
        speech = speech_at(self.rate_in)
        if kind == "speech":
            pcm = speech[which]
            start = int(cut[0] * 0.5 * len(pcm))
            pcm = pcm[start:]
        elif kind == "speech+pause":
            pause = np.zeros(int(0.8 * self.rate_in), np.int16)
            pcm = np.concatenate([speech[which], pause])
        elif kind == "clip slice":
            clip = speech["clip"]
            start = int(cut[0] * len(clip))
            pcm = clip[start:start + max(1, int(cut[1] * (len(clip) - start)))]
        else:
            pcm = speech["clip"]
        chunk = max(1, self.rate_in * frame_ms // 1000 + (1 if odd else 0))  # odd sample counts too
        self._run(self.append_pcm(f"append {kind}", pcm, chunk, yields))

    @rule(ms=st.sampled_from([1, 20, 60, 150, 400, 900]), frame_ms=st.sampled_from([20, 100]))
    @counted
    def append_silence(self, ms, frame_ms) -> None:
        pcm = np.zeros(max(1, self.rate_in * ms // 1000), np.int16)
        self._run(self.append_pcm("append silence", pcm, max(1, self.rate_in * frame_ms // 1000), 2))

    @rule(before_ms=st.sampled_from([0, 0, 0, 200, 500]))
    @counted
    def commit(self, before_ms) -> None:
        """Commit, maybe after some silence (the usual push-to-talk: audio, then commit)."""
        if before_ms:
            silence = np.zeros(self.rate_in * before_ms // 1000, np.int16)
            self._run(self.append_pcm("append silence", silence, self.rate_in // 10, 1))
        eid = self.eid()
        empty = "input_audio_buffer_commit_empty"
        if self.buffered_no_vad_ms >= 150:
            allowed = {None}  # nothing could have committed it: turn detection was off
        elif self.buffered_ms < 40:
            # Under 100 ms even with what the resampler held back, and too little to start a
            # turn (min_speech_ms 96, at most one 32 ms VAD window of older audio).
            allowed = {empty}
        else:
            allowed = {None, empty}  # server VAD may have committed or not
        outcome, new = self._run(self.frame("commit", {"type": "input_audio_buffer.commit",
                                                       "event_id": eid}, eid, allowed))
        n = sum(e["type"] == "input_audio_buffer.committed" for e in new)
        assert n == (1 if outcome is None else 0), f"commit ({outcome}) -> {n} committed events"

    @rule()
    @counted
    def clear(self) -> None:
        eid = self.eid()
        _, new = self._run(self.frame("clear", {"type": "input_audio_buffer.clear", "event_id": eid},
                                      eid, {None}))
        assert sum(e["type"] == "input_audio_buffer.cleared" for e in new) == 1
        self.buffered_ms = self.buffered_no_vad_ms = 0.0

    # --- rules: session.update --------------------------------------------------------------

    @rule()
    @counted
    def turn_detection_off(self) -> None:
        self._run(self.update({"turn_detection": None}))

    @rule(td=vad_settings)
    @counted
    def turn_detection_on(self, td) -> None:
        self._run(self.update({"turn_detection": td}))

    @rule(update=session_updates)
    @counted
    def update_session(self, update) -> None:
        self._run(self.update(update))

    async def update(self, u: dict) -> None:
        eid = self.eid()
        session: dict[str, Any] = {}
        audio_in: dict[str, Any] = {}
        audio_out: dict[str, Any] = {}
        fields = {"instructions": (session, "instructions"), "output_modalities": (session, "output_modalities"),
                  "input_format": (audio_in, "format"), "turn_detection": (audio_in, "turn_detection"),
                  "output_format": (audio_out, "format"), "voice": (audio_out, "voice")}
        for key, (part, name) in fields.items():
            if key in u:
                part[name] = u[key]
        if audio_in or audio_out:
            session["audio"] = {k: v for k, v in (("input", audio_in), ("output", audio_out)) if v}
        td = u.get("turn_detection")
        td_valid = td is None or (td.get("type") == "server_vad" and 0 < td.get("threshold", .5) < 1
                                  and td.get("silence_duration_ms", 500) >= 100
                                  and td.get("prefix_padding_ms", 0) >= 0)
        if not td_valid:
            expected = "invalid_event"
        elif not (_format_supported(u.get("input_format")) and _format_supported(u.get("output_format"))):
            expected = "unsupported_audio_format"
        else:
            expected = None
        kind = "session.update" + ("" if expected is None else f" ({expected})")
        if set(u) == {"turn_detection"}:
            kind = "turn_detection " + ("null" if td is None else td.get("type", "?"))
        outcome, new = await self.frame(kind, {"type": "session.update", "event_id": eid,
                                               "session": session}, eid, {expected})
        updated = [e for e in new if e["type"] == "session.updated"]
        if outcome is not None:
            assert not updated, "a refused session.update sent session.updated"
            return
        assert len(updated) == 1, f"{len(updated)} session.updated for one update"
        # The model: what the client asked for.
        if "instructions" in u:
            self.instructions = u["instructions"]
        if "input_format" in u:
            self.rate_in = u["input_format"]["rate"]
        if "output_format" in u:
            self.rate_out = u["output_format"]["rate"]
        if "turn_detection" in u:
            self.vad_on = td is not None
            if td is not None:
                self.create_response = td.get("create_response", True)
                self.interrupt_response = td.get("interrupt_response", True)
        shown = updated[0]["session"]
        assert shown["audio"]["input"]["format"]["rate"] == self.rate_in, shown["audio"]["input"]
        assert shown["audio"]["output"]["format"]["rate"] == self.rate_out, shown["audio"]["output"]
        assert shown["instructions"] == self.instructions
        shown_td = shown["audio"]["input"]["turn_detection"]
        assert (shown_td is not None) == self.vad_on, shown_td
        if shown_td is not None:
            assert shown_td["create_response"] == self.create_response
            assert shown_td["interrupt_response"] == self.interrupt_response
            for key in ("threshold", "silence_duration_ms", "prefix_padding_ms"):
                if td is not None and key in td:
                    assert shown_td[key] == pytest.approx(td[key]), (key, shown_td, td)

    # --- rules: conversation ----------------------------------------------------------------

    def known_item(self, pick: int) -> str | None:
        """An item of the conversation as the client knows it (None: it has none)."""
        items = self.driver.client_conversation()
        return items[pick % len(items)] if items else None

    def do_create_item(self, role, text, with_id, where, pick) -> None:
        eid = self.eid()
        item: dict[str, Any] = {"type": "message", "role": role, "content": [
            {"type": "output_text" if role == "assistant" else "input_text", "text": text}]}
        item_id = f"item_client_{self.n}"
        if with_id:
            item["id"] = item_id
        event = {"type": "conversation.item.create", "event_id": eid, "item": item}
        allowed = {None}
        unknown = "item_create_invalid_previous_item_id"
        if where == "root":
            event["previous_item_id"] = "root"
        elif where == "made up":
            event["previous_item_id"], allowed = f"item_made_up_{self.n}", {unknown}
        elif where == "known" and (after := self.known_item(pick)) is not None:
            # It may have left a small history meanwhile.
            event["previous_item_id"] = after
            allowed = {None, unknown} if self.history_limit < 10**6 else {None}
        outcome, new = self._run(self.frame(f"item.create {role} {where}", event, eid, allowed))
        if outcome is not None:
            return
        added = [e for e in new if e["type"] == "conversation.item.added"
                 and e["item"]["role"] == role and e["item"]["type"] == "message"]
        assert added, "conversation.item.create accepted without conversation.item.added"
        previous = {"root": None}.get(where, event.get("previous_item_id", added[-1].get("previous_item_id")))
        assert added[-1].get("previous_item_id") == previous, (where, added[-1])
        if with_id:
            assert added[-1]["item"]["id"] == item_id
            if role == "assistant":
                self.client_assistant_items.add(item_id)

    def do_delete_or_retrieve(self, action, which, pick) -> None:
        item_id = self.known_item(pick) if which == "known" else None
        kind = "delete" if action == "delete" else "retrieve"
        unknown = f"item_{kind}_invalid_item_id"
        allowed = {unknown}
        if item_id is None:
            item_id = f"item_made_up_{self.n}"
        else:  # it may belong to the response in progress, or have left a small history
            allowed = {None, "invalid_event"} if action == "delete" else {None}
            if self.history_limit < 10**6:
                allowed.add(unknown)
        eid = self.eid()
        outcome, new = self._run(self.frame(f"item.{kind} {which}", {
            "type": f"conversation.item.{kind}", "event_id": eid, "item_id": item_id}, eid, allowed))
        answers = [e for e in new if e["type"] in ("conversation.item.deleted", "conversation.item.retrieved")]
        if outcome is None:
            assert len(answers) == 1, answers
            assert (answers[0].get("item_id") or answers[0]["item"]["id"]) == item_id, answers
            if action == "delete":
                self.client_assistant_items.discard(item_id)
                self.deleted_items.add(item_id)
        else:
            assert not answers, answers

    def do_truncate(self, target_kind, pick, audio_end_ms) -> None:
        d = self.driver
        _, done = self.responses()
        refused, unknown = "invalid_event", "item_truncate_invalid_item_id"
        small_history = self.history_limit < 10**6  # old items may have left it: either way
        gone = {unknown} if small_history else set()
        item_id, allowed = f"item_made_up_{self.n}", {unknown}
        if target_kind == "done reply" and done:
            # Every reply's message is in the conversation (one without text too).
            body = list(done.values())[pick % len(done)]["response"]
            item_id = body["output"][0]["id"]
            allowed = {unknown} if item_id in self.deleted_items else {None} | gone
        elif target_kind == "running reply":
            running = [e["item"]["id"] for e in d.of_type("response.output_item.added")
                       if e["item"]["id"] not in {b["response"]["output"][0]["id"] for b in done.values()}]
            if running:
                item_id, allowed = running[pick % len(running)], {None, refused} | gone
        elif target_kind == "client item" and self.client_assistant_items:
            item_id = sorted(self.client_assistant_items)[pick % len(self.client_assistant_items)]
            allowed = {None} | gone
        elif target_kind == "user item":
            users = [e["item_id"] for e in d.of_type("input_audio_buffer.committed")]
            if users:  # not an assistant message
                item_id, allowed = users[pick % len(users)], {refused} | gone
        eid = self.eid()
        outcome, new = self._run(self.frame(f"truncate {target_kind}", {
            "type": "conversation.item.truncate", "event_id": eid, "item_id": item_id,
            "content_index": 0, "audio_end_ms": audio_end_ms}, eid, allowed))
        truncated = [e for e in new if e["type"] == "conversation.item.truncated"]
        assert len(truncated) == (1 if outcome is None else 0), truncated

    def do_response_create(self, options) -> None:
        eid = self.eid()
        busy = "conversation_already_has_active_response"
        allowed = {None} if self.idle() else {None, busy}
        event = {"type": "response.create", "event_id": eid, **({"response": options} if options else {})}
        outcome, _ = self._run(self.frame("response.create", event, eid, allowed))
        if outcome is None:
            self.expected_responses += 1

    def do_response_cancel(self, which) -> None:
        created, done = self.responses()
        not_active = "response_cancel_not_active"
        event: dict[str, Any] = {"type": "response.cancel"}
        allowed = {not_active} if self.idle() else {None, not_active}
        if which == "latest" and created:
            event["response_id"] = list(created)[-1]
            if event["response_id"] in done:
                allowed = {not_active}
        elif which == "finished" and done:
            event["response_id"] = list(done)[0]
            allowed = {not_active}
        elif which == "made up":
            event["response_id"] = "resp_made_up"
            allowed = {not_active}
        eid = event["event_id"] = self.eid()
        outcome, _ = self._run(self.frame(f"response.cancel {which}", event, eid, allowed))
        if outcome is None:
            self.accepted_cancels += 1

    # --- rules: garbage ---------------------------------------------------------------------

    @rule(case=st.sampled_from([
        ("append invalid base64", {"type": "input_audio_buffer.append", "audio": "AAA"},
         "invalid_base64", True),
        ("append invalid base64", {"type": "input_audio_buffer.append", "audio": "@@@@"},
         "invalid_base64", True),
        ("append invalid base64", {"type": "input_audio_buffer.append", "audio": "QQ==QQ=="},
         "invalid_base64", True),
        ("append odd byte count", {"type": "input_audio_buffer.append", "audio": "AAAA"},  # 3 bytes
         "invalid_audio_length", True),
        ("append 3 samples", {"type": "input_audio_buffer.append", "audio": "AAAAAAAA"}, None, True),
        ("append empty audio", {"type": "input_audio_buffer.append", "audio": ""}, None, True),
        ("bad JSON", "{", "invalid_json", False),
        ("bad JSON", "not json at all", "invalid_json", False),
        ("bad JSON", "[1, 2]", "invalid_json", False),
        ("unknown type", {"type": "no.such.event"}, "unknown_event_type", True),
        ("unsupported type", {"type": "output_audio_buffer.clear"}, "unsupported_event", True),
        ("unknown item", {"type": "conversation.item.delete", "item_id": "x"}, "item_delete_invalid_item_id", True),
        ("unknown item", {"type": "conversation.item.retrieve", "item_id": "x"}, "item_retrieve_invalid_item_id",
         True),
        ("non-string type", {"type": 5}, "invalid_event", True),
        ("missing field", {"type": "input_audio_buffer.append"}, "invalid_event", True),
        ("missing field", {"type": "conversation.item.create"}, "invalid_event", True),
        ("bad value", {"type": "conversation.item.truncate", "item_id": "x", "audio_end_ms": -1},
         "invalid_event", True),
        ("bad value", {"type": "response.create", "response": {"max_output_tokens": 0}},
         "invalid_event", True),
    ]))
    @counted
    def malformed(self, case) -> None:
        kind, frame, code, has_id = case
        eid = self.eid() if has_id else None
        if has_id:
            frame = json.dumps({**frame, "event_id": eid})
        # The valid appends (empty, 3 samples) may meet a full buffer; the others fail parsing first.
        self._run(self.frame(kind, frame, eid, self.append_allowed() if code is None else {code}))

    # --- rules: models, time, connection ------------------------------------------------------

    def do_models(self, change, after) -> None:
        TRIED[f"models: {change}"] += 1
        b = self.backends
        if change == "fast":
            b.token_delay_s, b.reply, b.tts_chunks = 0.0, self.default_reply, 2
        elif change == "long replies":  # deterministic: each token and chunk is a loop step
            b.reply, b.tts_chunks = LONG_REPLY, 6
        elif change == "slow tokens":
            # Wall-clock time: the one thing that makes a sequence replay differently. Not when
            # shrinking (a replay that differs makes Hypothesis give up on the whole run).
            b.token_delay_s = 0.002
        elif change == "llm fails next":
            b.llm_fail_calls[len(b.llm_calls)] = after
            self.failures_injected = True
        elif change == "llm fails at once":
            b.llm_fail_calls[len(b.llm_calls)] = 0
            self.failures_injected = True
        elif change == "asr fails":
            b.asr_fail = True
            self.failures_injected = True
        elif change == "asr works":
            b.asr_fail = False

    def do_wait(self, steps) -> None:
        """Let the loop run ``steps`` times; or until every response has ended (they pair up)."""
        TRIED[f"wait {steps}"] += 1
        if steps == "until idle":
            self._run(self.settle_all())
        else:
            self._run(self.yield_steps(steps))

    async def yield_steps(self, steps: int) -> None:
        for _ in range(steps):
            await asyncio.sleep(0)

    # --- dispatching rules (fewer rules: each of the others comes up more often) ---------------

    @rule(action=st.one_of(
        st.tuples(st.just("item"), st.sampled_from(["user", "user", "system", "assistant"]),
                  st.sampled_from(["hello", "What time is it?", "", "one two three four five six"]),
                  st.booleans(), st.sampled_from(["end", "end", "root", "known", "made up"]),
                  st.integers(0, 1000)),
        st.tuples(st.just("truncate"), st.sampled_from(["done reply", "done reply", "running reply",
                                                        "client item", "user item", "made up"]),
                  st.integers(0, 1000), st.sampled_from([0, 150, 800, 600000])),
        st.tuples(st.sampled_from(["delete", "retrieve"]), st.sampled_from(["known", "known", "made up"]),
                  st.integers(0, 1000)),
    ))
    @counted
    def conversation(self, action) -> None:
        """conversation.item.create (user/system/assistant text, at the end, the start, after a
        known item or an unknown one), .truncate, .delete or .retrieve."""
        if action[0] == "item":
            self.do_create_item(*action[1:])
        elif action[0] == "truncate":
            self.do_truncate(*action[1:])
        else:
            self.do_delete_or_retrieve(*action)

    @rule(action=st.one_of(
        st.tuples(st.just("create"), st.one_of(st.none(), st.fixed_dictionaries({}, optional={
            "output_modalities": st.sampled_from([["audio"], ["text"]]),
            "instructions": st.just("Answer in one word."),
            "max_output_tokens": st.integers(1, 30),
            "metadata": st.just({"k": "v"}),
        }))),
        st.tuples(st.just("cancel"), st.sampled_from(["none", "none", "latest", "finished", "made up"])),
    ))
    @counted
    def response(self, action) -> None:
        """response.create (with options) or response.cancel (none / by id / made-up id)."""
        if action[0] == "create":
            self.do_response_create(action[1])
        else:
            self.do_response_cancel(action[1])

    @rule(action=st.one_of(
        st.tuples(st.just("models"), st.sampled_from([
            "fast", "long replies", "long replies", "llm fails next", "llm fails at once",
            "asr fails", "asr works"] + ([] if SHRINK else ["slow tokens"])), st.integers(0, 5)),
        st.tuples(st.just("wait"), st.sampled_from([1, 10, 100, 1000, "until idle"])),
    ))
    @counted
    def models_and_time(self, action) -> None:
        """Make the fake models slow, failing or fast again; or let time pass / let all settle."""
        if action[0] == "models":
            self.do_models(*action[1:])
        else:
            self.do_wait(action[1])

    @rule()
    @counted
    def disconnect_and_reconnect(self) -> None:
        TRIED["disconnect + reconnect"] += 1
        self._run(self.disconnect_and_check())
        self._run(self._open())

    # --- invariants -------------------------------------------------------------------------

    @invariant()
    def session_alive_and_consistent(self) -> None:
        if self.driver is None:
            return  # before the initialize rule
        RUNS["steps"] += 1
        if self.broken:
            return

        def check() -> None:
            self._check_alive()
            self._check_responses()
            self._check_late_errors()

        self._check(check)

    def teardown(self) -> None:
        # Not while a failure propagates (hypothesis calls teardown in a finally): only clean up.
        checking = self.driver is not None and not self.broken and sys.exc_info()[0] is None
        try:
            if checking:
                self._run(self._final())
        finally:
            self._close()
        # What this sequence dropped is finalized now, while it is the one to blame (automatic
        # collection is off: garbage of one sequence must not fail the next one's replay).
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            gc.collect()
        if checking:
            self._check_warnings(caught)

    async def _final(self) -> None:
        """After draining: counts consistent; the session still answers; then disconnect."""
        await self.settle_all()
        b = self.backends
        b.token_delay_s, b.llm_fail_calls, b.asr_fail = 0.0, {}, False
        await self.frame("final: item", {"type": "conversation.item.create", "event_id": "ev_final_item",
                                          "item": {"type": "message", "role": "user", "content": [
                                              {"type": "input_text", "text": "still there?"}]}},
                         "ev_final_item", {None})
        await self.frame("final: response.create", {"type": "response.create", "event_id": "ev_final"},
                         "ev_final", {None})
        self.expected_responses += 1
        await self.settle_all()
        last = self.driver.of_type("response.done")[-1]["response"]
        assert last["status"] == "completed", last["status_details"]
        self.driver.assert_client_order()  # at rest: the client's copy is the server's order
        await self.disconnect_and_check()

    def _close(self) -> None:
        loop = self.loop
        try:
            if self.driver is not None and self.driver.task is not None and not self.driver.task.done():
                try:
                    loop.run_until_complete(asyncio.wait_for(self.driver.stop(), 10))
                except BaseException:  # noqa: BLE001 - already failing: just clean up
                    pass
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.wait(pending, timeout=10))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()


def assert_no_task_left() -> None:
    """No task of the (closed) session is left on this loop: the loop is this test's own, so
    any task but the current one is a leak. Public asyncio API only."""
    current = asyncio.current_task()
    left = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    assert not left, "tasks left after disconnect: " + ", ".join(
        f"{t.get_name()} {t.get_coro()!r}" for t in left)


def test_session_state_machine():
    started = time.monotonic()
    # No automatic collection during the run: what a session drops is finalized by the
    # gc.collect() of its disconnect, inside a step, where _check_warnings sees it.
    enabled = gc.isenabled()
    gc.disable()
    try:
        run_state_machine_as_test(SessionMachine, settings=MACHINE_SETTINGS)
    finally:
        if enabled:
            gc.enable()
        print(f"\nstateful machine: {time.monotonic() - started:.1f} s")


# --- regressions: one per bug the machine found (minimal sequences) ---------------------------------
#
# Each asserts the correct behaviour, so it fails until its bug is fixed. They use the ordinary
# fixtures of tests/unit/conftest.py (``driver``, ``make_driver``, ``backends``, speech clips).

SILENCE_200MS = np.zeros(4800, np.int16)  # at the session's default 24 kHz
VAD_OFF = {"type": "session.update", "session": {"audio": {"input": {"turn_detection": None}}}}
VAD_ON = {"type": "session.update",
          "session": {"audio": {"input": {"turn_detection": {"type": "server_vad"}}}}}
USER_ITEM = {"type": "conversation.item.create", "item": {
    "type": "message", "role": "user", "content": [{"type": "input_text", "text": "question"}]}}


def pending_tasks() -> list[asyncio.Task]:
    current = asyncio.current_task()
    return [t for t in asyncio.all_tasks() if t is not current and not t.done()]


@pytest.mark.usefixtures("hang_guard")
async def test_regression_server_vad_back_on_after_a_manual_commit(driver, backends, short_speech_24k):
    """Bug 1: turn_detection null -> append -> commit -> append -> server_vad -> append: the append
    raises ValueError "cannot reshape array of size N into shape (512)" (engines/vad.py, called
    from RealtimeSession._run_vad) out of handle_frame, which ends the session in the ingress.
    (The VAD cursor still points into audio that was dropped once committed without VAD.)"""
    await driver.send(VAD_OFF)
    await driver.append(SILENCE_200MS)
    await driver.send({"type": "input_audio_buffer.commit"})
    await driver.append(SILENCE_200MS)
    await driver.send(VAD_ON)
    await driver.append(SILENCE_200MS)  # raises today
    await driver.append(short_speech_24k.pcm)
    await driver.wait_for("input_audio_buffer.committed", count=2)
    await driver.wait_for("response.done", count=2)
    assert not driver.task.done()
    assert driver.errors() == []


@pytest.mark.usefixtures("hang_guard")
async def test_regression_cancelling_a_text_response_mid_stream_ends_it_cancelled(driver, backends):
    """Bug 2: response.create (output_modalities text), LLM still streaming, response.cancel: the
    response ends "failed" with a model_error "RuntimeError: aclose(): asynchronous generator is
    already running" instead of "cancelled" (Response._iter_with_timeout closes the LLM stream
    while aio.wait_for's cancelled inner task is still running it)."""
    backends.llm_hang_calls = {0: 3}  # three tokens, then the LLM waits
    await driver.send(USER_ITEM)
    await driver.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
    await driver.wait_for("response.output_text.delta")
    await driver.send({"type": "response.cancel"})
    done = await driver.wait_for("response.done")
    assert done["response"]["status"] == "cancelled", done["response"]["status_details"]
    await driver.drain()
    assert driver.errors() == []


@pytest.mark.usefixtures("hang_guard")
async def test_regression_cancelled_audio_response_leaves_no_task(make_driver, backends):
    """Bug 3: an audio response cancelled while its LLM is still producing the next sentence
    (response.cancel, a barge-in or a disconnect): ordered_fanout's pending ``pending.get()`` task
    is never cancelled; after the disconnect a Queue.get task is left pending forever (later
    "Task was destroyed but it is pending!")."""
    d = await make_driver()
    backends.llm_hang_calls = {0: 3}  # no sentence yet: the fan-out waits for its first one
    await d.send(USER_ITEM)
    await d.send({"type": "response.create"})
    await d.wait_for("response.created")
    await d.settle()
    await d.send({"type": "response.cancel"})
    done = await d.wait_for("response.done")
    assert done["response"]["status"] == "cancelled"
    await d.stop()
    await asyncio.sleep(0)
    assert [t.get_coro() for t in pending_tasks()] == []


@pytest.mark.usefixtures("hang_guard")
async def test_regression_no_coroutine_dropped_unawaited(make_driver, backends, phrases_24k):
    """Bug 4: audio in big frames (here 4 s): the pause starts a speculative response and the
    speech resuming in the same frame cancels it before it ran: its transcript coroutine
    (UserTurn.join_transcripts) is never awaited, "RuntimeWarning: coroutine
    'UserTurn.join_transcripts.<locals>.join' was never awaited" (one per such turn)."""
    clip = fakes.build_clip(list(phrases_24k), 24000, 0.3, [0.3], 1.0)  # A, 300 ms pause, B
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        d = await make_driver()
        await d.append(clip.pcm, frame_ms=4000)
        await d.wait_for("response.done")
        await d.stop()
        gc.collect()
    never = [str(w.message) for w in caught if "never awaited" in str(w.message)]
    assert never == []
    assert d.errors() == []


@pytest.mark.usefixtures("hang_guard")
async def test_regression_cancel_reaches_the_response_in_progress(driver, backends):
    """Bug 5: a response in progress (R1), a turn committed meanwhile (its response R2 queued
    behind R1), response.cancel: the session cancels the queued R2, which the client has not
    seen: R2's response.created + response.done (cancelled) arrive while R1 still streams, and R1
    goes on, no longer cancellable (response.cancel is refused: not active) while a new
    response.create is accepted and streams alongside it."""
    backends.llm_hang_calls = {0: 3}
    await driver.send(VAD_OFF)
    await driver.send(USER_ITEM)
    await driver.send({"type": "response.create"})
    first = (await driver.wait_for("response.created"))["response"]["id"]
    await driver.append(SILENCE_200MS)
    await driver.send({"type": "input_audio_buffer.commit"})
    await driver.send({"type": "response.cancel", "event_id": "ev_cancel"})
    done = await driver.wait_for("response.done")
    # The client cancels what it sees in progress; nothing else opens before that ends.
    assert done["response"]["id"] == first, [e["response"]["id"] for e in driver.of_type("response.created")]
    assert done["response"]["status"] == "cancelled"
    backends.llm_release.set()
    await driver.settle()
    first_done = driver.events.index(done)
    assert all(driver.events.index(e) > first_done for e in driver.of_type("response.created")
               if e["response"]["id"] != first)
    assert driver.errors() == []


@pytest.mark.usefixtures("hang_guard")
async def test_regression_turn_ended_at_max_turn_s_has_speech_stopped(make_driver, backends, session_config,
                                                                      paused_speech_24k):
    """Bug 6: a spoken turn longer than max_turn_s is committed by the server with
    input_audio_buffer.committed but no input_audio_buffer.speech_stopped before it: a client
    that follows speech_started/speech_stopped still thinks the user is talking."""
    d = await make_driver(session_config(max_turn_s=2.0))
    await d.append(paused_speech_24k.pcm)
    await d.wait_for("input_audio_buffer.committed")
    await d.settle()
    turn_events = [(e["type"].rsplit(".", 1)[1], e["item_id"]) for e in d.events if e["type"] in (
        "input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed")]
    first_item = turn_events[0][1]
    assert turn_events[:3] == [("speech_started", first_item), ("speech_stopped", first_item),
                               ("committed", first_item)], turn_events


@pytest.mark.usefixtures("hang_guard")
async def test_regression_speculation_committed_behind_a_text_response_waits_for_it(driver, backends,
                                                                                  phrases_24k):
    """Bug 7 (found by CI's run of the machine): speech, then a pause (server VAD starts a
    speculative reply, unseen), a response.create meanwhile (accepted: nothing is on the wire),
    then the turn ends: the speculation's held response.created went out at once while the text
    response still streamed, two responses open on the wire. The committed speculation must wait
    for the text response's response.done, then come out whole."""
    await driver.send(VAD_ON)
    backends.llm_hang_calls = {0: 3, 1: 3}  # the text response and the speculation wait
    await driver.append(np.concatenate([SILENCE_200MS, phrases_24k[0], np.zeros(8400, np.int16)]))  # 350 ms
    await driver.settle()
    await driver.send(USER_ITEM)
    await driver.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
    text_id = (await driver.wait_for("response.created"))["response"]["id"]
    await driver.append(np.zeros(24000, np.int16))  # the turn ends
    await driver.wait_for("input_audio_buffer.committed")
    await driver.settle()
    assert [e["response"]["id"] for e in driver.of_type("response.created")] == [text_id], "\n".join(driver.types())
    backends.llm_release.set()
    await driver.wait_for("response.done", count=2)
    created = [driver.events.index(e) for e in driver.of_type("response.created")]
    done = [driver.events.index(e) for e in driver.of_type("response.done")]
    assert len(created) == 2 and created[0] < done[0] < created[1] < done[1], driver.types()
    assert [e["response"]["status"] for e in driver.of_type("response.done")] == ["completed", "completed"]
    assert driver.errors() == []
