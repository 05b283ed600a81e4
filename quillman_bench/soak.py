"""Soak test: N concurrent spoken sessions for M minutes, with barge-ins and disconnects mixed in.

  python -m quillman_bench.soak --sessions 4 --minutes 5 --json soak.json        # a running server
  python -m quillman_bench.soak --start --sessions 4 --minutes 10 --json soak.json  # serve run for the soak

Each simulated user keeps a microphone open (20 ms frames at live pace: silence, then an
espeak-ng question when it speaks) and holds a few turns per connection, then hangs up and
calls again. A turn is one of:
- normal: ask, wait for the whole reply;
- barge-in: ask, and ask again as soon as the reply starts (``response.created``); the reply
  ends ``cancelled`` if it was still being produced, and the interruption gets its own answer;
- disconnect: ask, and drop the socket mid-turn (while speaking, after the commit, or after
  the first reply audio); the server must cancel the work, the user calls again.

Checked, from the client side: every committed turn (``input_audio_buffer.committed``) of a
connection that did not hang up gets exactly one ``response.done`` (responses of a session run
in commit order, so the k-th ``response.done`` answers the k-th commit); no ``response.done``
without a commit; no ``error`` events. From the server side (the Ray processes behind the port on
this machine, found with psutil by :mod:`quillman_bench.server`): replica PIDs unchanged (no
crash or restart), ``/healthz`` healthy throughout, and each deployment's resident memory (its
replicas' process trees) before (after a warm-up) and after.

Prints a summary; ``--json`` writes everything. Exit status 0 when nothing was lost, nothing
crashed and memory grew less than ``--max-growth-mb`` per deployment.
Latency percentiles: :func:`quillman_bench.report.percentile` (linear interpolation).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from websockets.protocol import State

from quillman.client import DEFAULT_URL, RealtimeClient
from quillman_bench.report import mean, percentile
from quillman_bench.server import DEPLOYMENTS, ServerProcesses, healthz
from quillman_bench.speech import QUESTIONS, spoken_question
from quillman_bench.server_process import http_url, serve_run

TURN_TIMEOUT_S = 120.0
FRAME_MS = 20
RATE_HZ = 24000
LEAD_IN_SAMPLES = int(0.35 * RATE_HZ)  # an interruption starts at once: skip the clip's lead-in silence


# --- one simulated user -------------------------------------------------------------------------


@dataclass
class Stats:
    connections: int = 0
    connect_failures: int = 0
    committed: int = 0
    response_done: int = 0
    lost: int = 0  # committed, connection kept, and no response.done
    abandoned: int = 0  # committed, then the user hung up before the answer (expected)
    extra: int = 0  # response.done without a committed turn, or twice for one response
    stalls: int = 0  # a turn that got no answer within TURN_TIMEOUT_S
    statuses: Counter = field(default_factory=Counter)
    actions: Counter = field(default_factory=Counter)
    barge_ins_cancelled: int = 0
    errors: Counter = field(default_factory=Counter)
    first_audio_ms: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class Mic:
    """A live microphone: 20 ms frames at real-time pace; silence unless a clip is queued."""

    def __init__(self, client: RealtimeClient):
        self.client = client
        self.clips: asyncio.Queue[np.ndarray] = asyncio.Queue()
        self.speaking = False
        self.task = asyncio.create_task(self._run())

    def say(self, pcm: np.ndarray) -> None:
        self.clips.put_nowait(pcm)

    async def _run(self) -> None:
        step = RATE_HZ * FRAME_MS // 1000
        silence = np.zeros(step, dtype=np.int16)
        start, sent = time.perf_counter(), 0
        current, offset = None, 0
        while True:
            if current is None and not self.clips.empty():
                current, offset = self.clips.get_nowait(), 0
            if current is not None:
                frame = current[offset:offset + step]
                offset += step
                if offset >= len(current):
                    current = None
            else:
                frame = silence
            self.speaking = current is not None
            await self.client.send_audio(frame)
            sent += 1
            delay = start + sent * FRAME_MS / 1000 - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


class Connection:
    """One socket: reads every event and keeps the per-connection ledger (and the totals, live)."""

    def __init__(self, client: RealtimeClient, stats: Stats):
        self.client = client
        self.stats = stats
        self.committed = 0
        self.done = 0
        self.created = 0  # response.created events (visible responses)
        self.audio_started = 0  # responses whose first audio arrived
        self._audio_ids: set[str] = set()
        self.done_ids: set[str] = set()
        self.changed = asyncio.Event()
        self.closed = False
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                try:
                    event = await self.client.next_event(timeout=1.0)
                except asyncio.TimeoutError:
                    if self.client.ws.state is State.CLOSED:
                        return  # the socket is gone: nothing more will come
                    continue
                kind = event["type"]
                if kind == "input_audio_buffer.committed":
                    self.committed += 1
                    self.stats.committed += 1
                elif kind == "response.created":
                    self.created += 1
                elif kind == "response.output_audio.delta" and event["response_id"] not in self._audio_ids:
                    self._audio_ids.add(event["response_id"])
                    self.audio_started += 1
                elif kind == "response.done":
                    response = event["response"]
                    if response["id"] in self.done_ids or self.done >= self.committed:
                        self.stats.extra += 1
                        self.stats.notes.append(f"unexpected response.done {response['id']} {response['status']}")
                    self.done_ids.add(response["id"])
                    self.done += 1
                    self.stats.response_done += 1
                    self.stats.statuses[response["status"]] += 1
                    first_audio = (response.get("timings") or {}).get("first_audio_ms")
                    if response["status"] == "completed" and first_audio is not None:
                        self.stats.first_audio_ms.append(first_audio)
                elif kind == "error":
                    self.stats.errors[event["error"].get("code", "?")] += 1
                    self.stats.notes.append(f"error {event['error']}"[:300])
                self.changed.set()
        except (asyncio.TimeoutError, asyncio.CancelledError):
            pass
        except Exception:  # noqa: BLE001 - the socket closed
            pass
        finally:
            self.closed = True
            self.changed.set()

    async def until(self, predicate, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            remaining = deadline - time.monotonic()
            if self.closed or remaining <= 0:
                return False
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), min(remaining, 1.0))
            except asyncio.TimeoutError:
                pass
        return True

    def answered(self) -> bool:
        return self.done >= self.committed

    async def stop(self) -> None:
        self.reader.cancel()
        await asyncio.gather(self.reader, return_exceptions=True)


async def user(index: int, url: str, api_key: str | None, deadline: float, stats: Stats,
               clips: list[np.ndarray], barge_in: float, disconnect: float, seed: int,
               warmed: list[bool], plan: str = "random") -> None:
    """One caller until ``deadline``; ``warmed[index]`` turns True after its first answered turn.

    ``plan``: "random" draws each turn's action (``barge_in`` / ``disconnect`` shares); "cycle"
    rotates barge-in, normal, disconnect, normal (each user starting elsewhere), so a short run
    is sure to hold every kind.
    """
    rng = random.Random(seed * 1000 + index)
    rotation = ["barge_in", "normal", "disconnect", "normal"]
    turn_number = index
    await asyncio.sleep(rng.uniform(0, 2.0))  # users don't all start speaking at once
    while time.monotonic() < deadline:
        client = RealtimeClient(url, api_key=api_key)
        try:
            await client.connect()
        except Exception as exc:  # noqa: BLE001 - refused or the server is down
            stats.connect_failures += 1
            stats.notes.append(f"connect: {type(exc).__name__}: {exc}"[:300])
            await client.close()
            await asyncio.sleep(1.0)
            continue
        stats.connections += 1
        conn = Connection(client, stats)
        mic = Mic(client)
        hung_up = False
        try:
            for _ in range(rng.randint(2, 4)):
                if time.monotonic() >= deadline:
                    break
                roll = rng.random()
                if not warmed[index]:
                    action = "normal"
                elif plan == "cycle":
                    action = rotation[turn_number % len(rotation)]
                    turn_number += 1
                else:
                    action = ("barge_in" if roll < barge_in else
                              "disconnect" if roll < barge_in + disconnect else "normal")
                stats.actions[action] += 1
                before, audio_before, created_before = conn.committed, conn.audio_started, conn.created
                mic.say(clips[rng.randrange(len(clips))])
                if action == "normal":
                    ok = await conn.until(lambda: conn.committed > before and conn.answered(), TURN_TIMEOUT_S)
                    warmed[index] = warmed[index] or ok
                elif action == "barge_in":
                    # Talk over the reply as soon as it starts (it is generated faster than it
                    # plays, so later the server would have nothing left to cancel).
                    ok = await conn.until(lambda: conn.created > created_before or (
                        conn.committed > before and conn.answered()), TURN_TIMEOUT_S)
                    cancelled_before = stats.statuses["cancelled"]
                    mic.say(clips[rng.randrange(len(clips))][LEAD_IN_SAMPLES:])
                    ok = ok and await conn.until(lambda: conn.committed >= before + 2 and conn.answered(),
                                                 TURN_TIMEOUT_S)
                    if stats.statuses["cancelled"] > cancelled_before:
                        stats.barge_ins_cancelled += 1
                else:
                    point = rng.choice(["speaking", "committed", "audio"])
                    if point == "speaking":
                        await asyncio.sleep(rng.uniform(0.3, 1.0))
                    elif point == "committed":
                        await conn.until(lambda: conn.committed > before, TURN_TIMEOUT_S)
                    else:
                        await conn.until(lambda: conn.audio_started > audio_before or (
                            conn.committed > before and conn.answered()), TURN_TIMEOUT_S)
                    stats.actions[f"disconnect_{point}"] += 1
                    hung_up = True
                    break
                if not ok:
                    stats.stalls += 1
                    stats.notes.append(f"user {index}: {action} turn not answered within {TURN_TIMEOUT_S:g} s "
                                       f"(committed {conn.committed}, done {conn.done}, closed {conn.closed})")
                    break
                # A pause with the mic open, then the next question.
                await asyncio.sleep(rng.uniform(0.3, 1.5))
            if not hung_up:
                # Hang up politely: the mic stays open until every committed turn is answered.
                await conn.until(conn.answered, TURN_TIMEOUT_S)
        finally:
            for step, cleanup in (("mic", mic.stop), ("close", client.close), ("reader", conn.stop)):
                try:
                    await asyncio.wait_for(cleanup(), 20)
                except Exception as exc:  # noqa: BLE001 - reported; the user goes on
                    stats.notes.append(f"user {index}: {step} cleanup failed: {type(exc).__name__}: {exc}"[:300])
            pending = max(0, conn.committed - conn.done)
            if hung_up:
                stats.abandoned += pending
            else:
                stats.lost += pending
        if hung_up:
            await asyncio.sleep(rng.uniform(0.1, 0.5))


# --- the run --------------------------------------------------------------------------------------


async def soak(url: str, sessions: int, minutes: float, api_key: str | None = None, seed: int = 0,
               barge_in: float = 0.25, disconnect: float = 0.2, warmup_s: float | None = None,
               max_growth_mb: float = 150.0, progress: bool = True, plan: str = "random") -> dict[str, Any]:
    server = ServerProcesses(url)
    clips = [spoken_question(q, RATE_HZ) for q in QUESTIONS]
    status, _ = healthz(url)
    if status != 200:
        raise SystemExit(f"{http_url(url)}/healthz answered {status}: start the server first")
    replicas_start = server.replicas()
    memory_start = server.memory_mb(replicas_start)
    timeline: list[dict[str, Any]] = []
    health = {"checks": 0, "failures": 0, "final": None}
    stats = Stats()
    duration_s = minutes * 60
    warmup_s = min(30.0, duration_s * 0.2) if warmup_s is None else warmup_s
    start = time.monotonic()
    deadline = start + duration_s
    memory_before: dict[str, float] = {}
    warmed = [False] * sessions

    async def watch() -> None:
        nonlocal memory_before
        while True:
            await asyncio.sleep(5)
            code, _ = await asyncio.to_thread(healthz, url)
            health["checks"] += 1
            if code != 200:
                health["failures"] += 1
            elapsed = time.monotonic() - start
            sample = await asyncio.to_thread(server.memory_mb)
            timeline.append({"t_s": round(elapsed, 1), "load1": round(psutil.getloadavg()[0], 2), **sample})
            if not memory_before and elapsed >= warmup_s and all(warmed):
                memory_before = sample
                timeline[-1]["before"] = True
            if progress:
                print(f"[{elapsed:6.0f} s] connections {stats.connections} committed {stats.committed} "
                      f"answered {stats.response_done} lost {stats.lost} errors {sum(stats.errors.values())} "
                      f"mem {sample}", file=sys.stderr, flush=True)

    watcher = asyncio.create_task(watch())
    users = [asyncio.create_task(user(i, url, api_key, deadline, stats, clips, barge_in, disconnect, seed, warmed,
                                      plan), name=f"user-{i}") for i in range(sessions)]
    # Every user ends by itself (each wait is bounded); if one does not, that is a finding.
    _, stuck = await asyncio.wait(users, timeout=duration_s + 2 * TURN_TIMEOUT_S + 60)
    for task in stuck:
        stats.stalls += 1
        stats.notes.append(f"{task.get_name()} did not finish: {_stack(task)}")
        task.cancel()
    await asyncio.gather(*users, return_exceptions=True)
    wall_s = time.monotonic() - start
    watcher.cancel()
    await asyncio.gather(watcher, return_exceptions=True)
    # Everything hung up: let the server finish cancelling, then look at it.
    await asyncio.sleep(3)
    code, body = healthz(url)
    health["final"] = code
    replicas_end = server.replicas()
    memory_after = server.memory_mb(replicas_end)
    if not memory_before:  # too short to warm up: compare with the start
        memory_before = memory_start
    memory_before = {k: v for k, v in memory_before.items() if k in DEPLOYMENTS}
    restarted = sorted(name for name in DEPLOYMENTS if replicas_start.get(name) != replicas_end.get(name))
    memory = {name: {"start": memory_start.get(name), "before": memory_before.get(name),
                     "after": memory_after.get(name),
                     "peak": max([s.get(name) or 0 for s in timeline] + [memory_after.get(name) or 0]),
                     "growth": None if memory_before.get(name) is None or memory_after.get(name) is None
                     else round(memory_after[name] - memory_before[name], 1)}
              for name in DEPLOYMENTS if name in memory_after or name in memory_start}
    local = any(replicas_start.values())
    problems = []
    if stats.lost:
        problems.append(f"{stats.lost} committed turns got no response.done")
    if stats.extra:
        problems.append(f"{stats.extra} response.done without a committed turn")
    if stats.stalls:
        problems.append(f"{stats.stalls} turns stalled")
    if stats.errors:
        problems.append(f"error events: {dict(stats.errors)}")
    if stats.committed == 0:
        problems.append("no turn was committed")
    if code != 200:
        problems.append(f"/healthz {code} at the end")
    if health["failures"]:
        problems.append(f"/healthz failed {health['failures']} of {health['checks']} checks")
    if local and restarted:
        problems.append(f"replicas restarted: {restarted}")
    sessions_left = (body.get("deployments", {}).get("Ingress", {}) or {}).get("sessions")
    if sessions_left:
        problems.append(f"the Ingress still holds {sessions_left} sessions")
    for name, m in memory.items():
        if m["growth"] is not None and m["growth"] > max_growth_mb:
            problems.append(f"{name} grew {m['growth']} MB (limit {max_growth_mb:g})")
    latencies = stats.first_audio_ms
    report = {
        "url": url, "sessions": sessions, "minutes": minutes, "wall_s": round(wall_s, 1), "seed": seed,
        "plan": plan, "max_growth_mb": max_growth_mb,
        "session_minutes": round(sessions * wall_s / 60, 1),
        "connections": stats.connections, "connect_failures": stats.connect_failures,
        "turns": {"committed": stats.committed, "response_done": stats.response_done,
                  **{s: stats.statuses.get(s, 0) for s in ("completed", "cancelled", "failed")},
                  "lost": stats.lost, "abandoned_by_disconnect": stats.abandoned, "extra": stats.extra,
                  "stalls": stats.stalls},
        "actions": dict(stats.actions), "barge_ins_cancelled": stats.barge_ins_cancelled,
        "errors": dict(stats.errors),
        "machine": {"cpus": os.cpu_count(),
                    "load1_mean": mean([s["load1"] for s in timeline], 2)},
        "first_audio_ms": {"n": len(latencies), "p50": percentile(latencies, 50),
                           "p95": percentile(latencies, 95), "p99": percentile(latencies, 99)},
        "replicas": {"start": replicas_start, "end": replicas_end, "restarted": restarted, "local": local},
        "memory_mb": memory, "memory_timeline": timeline,
        "healthz": health, "ingress_sessions_after": sessions_left,
        "problems": problems, "ok": not problems, "notes": stats.notes[:50],
    }
    return report


def _stack(task: asyncio.Task) -> str:
    return " <- ".join(f"{frame.f_code.co_name}:{frame.f_lineno}" for frame in task.get_stack(limit=8))


def _dump_tasks(*_: Any) -> None:
    """``kill -USR1 <pid>``: where every task of the driver is waiting, on stderr."""
    for task in asyncio.all_tasks():
        print(f"{task.get_name()}: {_stack(task)}", file=sys.stderr, flush=True)


def summary_line(report: dict[str, Any]) -> str:
    t = report["turns"]
    mem = ", ".join(f"{name} {m['before']}->{m['after']} MB" for name, m in report["memory_mb"].items())
    return (f"soak {report['sessions']} sessions x {report['wall_s'] / 60:.1f} min: {report['connections']} "
            f"connections, {t['committed']} committed turns, {t['response_done']} response.done "
            f"({t['completed']} completed, {t['cancelled']} cancelled, {t['failed']} failed), lost {t['lost']}, "
            f"abandoned by disconnect {t['abandoned_by_disconnect']}, actions {report['actions']}, "
            f"restarted {report['replicas']['restarted'] or 'none'}; memory {mem or 'n/a (not local)'}; "
            f"{'OK' if report['ok'] else 'PROBLEMS: ' + '; '.join(report['problems'])}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quillman_bench.soak",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("QUILLMAN_URL", DEFAULT_URL))
    parser.add_argument("--sessions", type=int, default=4, help="concurrent users")
    parser.add_argument("--minutes", type=float, default=5.0)
    server_keys = [k.strip() for k in os.environ.get("QUILLMAN_API_KEYS", "").split(",") if k.strip()]
    parser.add_argument("--api-key", default=os.environ.get("QUILLMAN_API_KEY") or next(iter(server_keys), None),
                        help="sent as a bearer token (default: $QUILLMAN_API_KEY, else the first of "
                             "$QUILLMAN_API_KEYS, the server's own)")
    parser.add_argument("--barge-in", type=float, default=0.25, help="share of turns interrupted")
    parser.add_argument("--disconnect", type=float, default=0.2, help="share of turns hung up on")
    parser.add_argument("--warmup-s", type=float, default=None,
                        help="memory 'before' is taken this long after the start, once every user has had "
                             "an answer (default: 20%% of the run, at most 30 s)")
    parser.add_argument("--max-growth-mb", type=float, default=150.0,
                        help="a deployment's memory may grow this much from 'before' to 'after'")
    parser.add_argument("--plan", choices=("random", "cycle"), default="random",
                        help="random: draw each turn's action; cycle: rotate barge-in, normal, disconnect, normal")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", action="store_true",
                        help="run `serve run --config` on --port for the duration instead of using --url")
    parser.add_argument("--config", default="serve_config.yaml")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--json", help="write the full report here")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGUSR1, _dump_tasks)
    with contextlib.ExitStack() as stack:
        if args.start:
            server = stack.enter_context(serve_run(args.config, args.port))
            args.url = server.url.replace("http://", "ws://") + "/v1/realtime"
            print(f"started {args.config} at {server.url} (log {server.log_path})", file=sys.stderr)
        report = asyncio.run(soak(args.url, args.sessions, args.minutes, args.api_key, args.seed, args.barge_in,
                                  args.disconnect, args.warmup_s, args.max_growth_mb, not args.quiet, args.plan))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    print(summary_line(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
