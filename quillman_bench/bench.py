"""``quillman bench``: voice-to-voice latency of a running server, as callers feel it.

Each simulated caller holds one Realtime session and speaks synthesized questions (espeak-ng)
at live pace in 20 ms frames, keeps its microphone open (silence) until the whole reply has
arrived, listens for a moment, and asks the next one. Reported per turn and per level: client
side voice-to-voice latency (last speech sample sent -> first reply audio byte received)
p50/p95/p99, the server's per-stage timings (``response.done`` -> ``timings``), transcript WER,
reply real-time factor, turns completed / failed / cancelled / lost, and the machine's CPU use.

``--transport websocket,webrtc`` runs every level over both transports on the same run (WebRTC:
an aiortc caller on ``POST /v1/realtime/calls``, :mod:`quillman_bench.webrtc_talker`); their
levels are labelled ``webrtc:<variant>``.

``--baseline`` runs every level twice: the streaming pipeline and the server's naive sequential
one (``session.quillman.pipeline = "sequential"``: whole utterance transcribed after it ends ->
full LLM reply -> one synthesis -> send), and reports their ratio. ``--start`` runs
``serve run`` for the duration of the benchmark instead of targeting ``--url``.

  quillman bench --concurrency 1,2,4 --turns 10 --baseline --json out.json --markdown --plot out.png

Percentiles are linearly interpolated (quillman_bench.report.percentile).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np

from quillman.client import DEFAULT_URL, RealtimeClient
from quillman_bench.machine import CpuSampler, cpu_summary, machine_info
from quillman_bench.plot import plot
from quillman_bench.report import (DEFAULT_SLO_MS, TurnRecord, build_report, markdown_report, reply_rtf,
                                      summarize)
from quillman_bench.speech import QUESTIONS, espeak, with_silence, word_error_rate

TURN_TIMEOUT_S = 120.0


# --- callers ---------------------------------------------------------------------------------------


class Progress:
    def __init__(self, total: int, enabled: bool, label: str = ""):
        self.total, self.done, self.enabled, self.label = total, 0, enabled, label
        self.start = time.perf_counter()

    def step(self) -> None:
        self.done += 1
        if self.enabled:
            width = 30
            filled = int(width * self.done / max(self.total, 1))
            sys.stderr.write(f"\r{self.label}[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
                             f"turns {time.perf_counter() - self.start:5.0f} s")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


# A run's variants: "streaming" is what a client that chooses nothing gets (the streaming
# pipeline with the server's default turn detection: semantic_vad in serve_config.yaml),
# "server_vad" the same pipeline with the silence-only detector, "sequential" the naive baseline
# (whole utterance -> whole reply -> one synthesis, server_vad).
VARIANTS = ("streaming", "server_vad")


TRANSPORTS = ("websocket", "webrtc")
WEBRTC_PREFIX = "webrtc:"


async def _connect(url: str, mode: str) -> RealtimeClient:
    if mode.startswith(WEBRTC_PREFIX):
        from quillman_bench.webrtc_talker import WebRtcTalker

        inner = mode[len(WEBRTC_PREFIX):]
        talker = WebRtcTalker(url, None if inner == "streaming" else {"type": "server_vad"})
        await talker.connect(session={"quillman": {"pipeline": "sequential" if inner == "sequential" else "streaming"}})
        return talker
    client = RealtimeClient(url, turn_detection=None if mode == "streaming" else {"type": "server_vad"})
    pipeline = "sequential" if mode == "sequential" else "streaming"
    await client.connect(session={"quillman": {"pipeline": pipeline}})
    granted = (client.session.get("quillman") or {}).get("pipeline", "streaming")
    if granted != pipeline:
        await client.close()
        raise RuntimeError(f"the server did not switch to the {pipeline} pipeline (session says {granted!r})")
    return client


async def _caller(url: str, caller: int, turns: int, clips: list[tuple[str, np.ndarray]],
                  pause_s: float, records: list[TurnRecord], deadline: float, progress: Progress,
                  mode: str = "streaming", stagger_s: float = 0.0, first_turn: int = 0,
                  together: asyncio.Barrier | None = None) -> None:
    """``together``: every caller starts each turn at the same moment (the worst case for
    the machine: all their critical paths at once); else starts are spread over ``stagger_s``."""
    rng = random.Random(caller * 1000 + first_turn)
    await asyncio.sleep(stagger_s * rng.random())  # callers don't all start speaking at once
    try:
        await _turns(url, caller, turns, clips, pause_s, records, deadline, progress, mode, first_turn,
                     together, rng)
    finally:
        if together is not None:
            await together.abort()  # callers still waiting go on without this one


async def _turns(url: str, caller: int, turns: int, clips: list[tuple[str, np.ndarray]], pause_s: float,
                 records: list[TurnRecord], deadline: float, progress: Progress, mode: str, first_turn: int,
                 together: asyncio.Barrier | None, rng: random.Random) -> None:
    client: RealtimeClient | None = None
    for turn in range(first_turn, first_turn + turns):
        if time.perf_counter() > deadline:
            break
        question, pcm = clips[(caller + turn) % len(clips)]
        if client is None:
            try:
                client = await _connect(url, mode)
            except Exception as exc:  # noqa: BLE001 - a refused caller: its turns are not run
                # 503 at the handshake is admission control turning the caller away (counted
                # apart); anything else is a failure.
                status = "refused" if "503" in str(exc) else "failed"
                records.append(TurnRecord(caller, turn, question, status, None, None, "", 0, None,
                                          error=f"connect: {type(exc).__name__}: {exc}", mode=mode))
                progress.step()
                continue
        if together is not None:
            try:
                await together.wait()
            except asyncio.BrokenBarrierError:
                pass  # another caller is done: no one left to start with
        try:
            result = await client.talk(pcm, client.rate, timeout=TURN_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - no response.done: a lost turn
            records.append(TurnRecord(caller, turn, question, "lost", None, None, "", 0, None,
                                      error=f"{type(exc).__name__}: {exc}", mode=mode))
            progress.step()
            await client.close()
            client = None  # the next turn reconnects
            continue
        records.append(TurnRecord(
            caller, turn, question, result.status, result.latency_ms,
            None if result.user_transcript is None
            else round(word_error_rate(question, result.user_transcript), 3),
            result.reply_text.strip(), round(result.reply_audio_s, 2),
            reply_rtf(result.timings, result.reply_audio_s), result.timings,
            error=result.errors[0].get("code") if result.errors else None, mode=mode,
            underrun_s=result.underrun_s,
        ))
        progress.step()
        # The caller listens a moment (mic open, silence), then asks the next question.
        try:
            await client.stream_audio(np.zeros(0, dtype=np.int16),
                                      pad_silence_s=pause_s * (1.0 if together else rng.uniform(0.5, 1.5)))
        except Exception:  # noqa: BLE001 - the socket dropped between turns: reconnect
            await client.close()
            client = None
    if client is not None:
        await client.close()


def spoken_questions(sample_rate_hz: int = 24000) -> list[tuple[str, np.ndarray]]:
    return [(q, with_silence(espeak(q, sample_rate_hz), sample_rate_hz, before_s=0.3)) for q in QUESTIONS]


@dataclass
class Block:
    """One stretch of callers in one pipeline: its turns, how long it took and the CPU samples."""

    mode: str
    records: list[TurnRecord]
    wall_s: float
    cpu: dict[str, Any]


async def run_block(url: str, concurrency: int, turns: int, duration_s: float | None, pause_s: float,
                    progress: Progress, mode: str, clips: list[tuple[str, np.ndarray]],
                    first_turn: int = 0, together: bool = False) -> Block:
    records: list[TurnRecord] = []
    deadline = time.perf_counter() + (duration_s or 1e9)
    sampler = CpuSampler()
    sampler.start()
    start = time.perf_counter()
    barrier = asyncio.Barrier(concurrency) if together and concurrency > 1 else None
    await asyncio.gather(*(_caller(url, c, turns, clips, pause_s, records, deadline, progress, mode,
                                   stagger_s=pause_s if concurrency > 1 and not together else 0.0,
                                   first_turn=first_turn, together=barrier)
                           for c in range(concurrency)))
    wall = time.perf_counter() - start
    return Block(mode, records, wall, await sampler.stop())


def _level_summary(blocks: list[Block], concurrency: int, mode: str) -> dict[str, Any]:
    records = sorted((r for b in blocks for r in b.records), key=lambda r: (r.caller, r.turn))
    summary = summarize(records, concurrency, sum(b.wall_s for b in blocks), mode,
                        cpu_summary([b.cpu for b in blocks]))
    summary["records"] = [asdict(r) for r in records]
    return summary


def split_turns(turns: int, rounds: int) -> list[int]:
    """``turns`` per caller spread over ``rounds`` blocks (earlier blocks get the remainder)."""
    rounds = max(1, min(rounds, turns))
    return [turns // rounds + (1 if r < turns % rounds else 0) for r in range(rounds)]


async def run_levels(url: str, concurrency: int, turns: int, duration_s: float | None, pause_s: float,
                     show_progress: bool, modes: list[str], rounds: int = 1,
                     clips: list[tuple[str, np.ndarray]] | None = None, together: bool = False) -> list[dict[str, Any]]:
    """One concurrency level in every mode. With several modes the turns are split into
    ``rounds`` blocks that alternate between the modes (streaming, sequential, streaming, ...),
    so slow drift of a shared machine's background load hits both modes alike, while callers of
    different modes never overlap. Returns one summary per mode."""
    clips = clips or spoken_questions()
    shares = split_turns(turns, rounds)
    label = "/".join(m[:3] for m in modes)
    progress = Progress(concurrency * turns * len(modes), show_progress, label=f"{label:>7} x{concurrency:<3} ")
    blocks: list[Block] = []
    first_turn = 0
    for share in shares:
        for mode in modes:
            blocks.append(await run_block(url, concurrency, share, duration_s and duration_s * share / turns,
                                          pause_s, progress, mode, clips, first_turn, together))
        first_turn += share
    progress.close()
    return [_level_summary([b for b in blocks if b.mode == mode], concurrency, mode) for mode in modes]


async def run_level(url: str, concurrency: int, turns: int, duration_s: float | None,
                    pause_s: float, show_progress: bool, mode: str = "streaming",
                    clips: list[tuple[str, np.ndarray]] | None = None) -> dict[str, Any]:
    """One concurrency level in one pipeline."""
    (summary,) = await run_levels(url, concurrency, turns, duration_s, pause_s, show_progress, [mode], 1, clips)
    return summary


async def warm_up(url: str, turns: int, clips: list[tuple[str, np.ndarray]], modes: list[str]) -> None:
    """Turns that are not measured: lazy initialisation and caches should not land in p99."""
    for mode in modes:
        records: list[TurnRecord] = []
        await _caller(url, 0, turns, clips, 0.2, records, 1e18, Progress(turns, False), mode)


# --- command ---------------------------------------------------------------------------------------


def parse_concurrency(text: str) -> list[int]:
    values = [int(c) for c in str(text).split(",") if c.strip()]
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"--concurrency wants positive integers like 1,2,4; got {text!r}")
    return values


def parse_variants(text: str) -> list[str]:
    values = [v.strip() for v in str(text).split(",") if v.strip()]
    if not values or any(v not in VARIANTS for v in values):
        raise argparse.ArgumentTypeError(f"--variants wants streaming and/or server_vad; got {text!r}")
    return values


def parse_transports(text: str) -> list[str]:
    values = [v.strip() for v in str(text).split(",") if v.strip()]
    if not values or any(v not in TRANSPORTS for v in values):
        raise argparse.ArgumentTypeError(f"--transport wants websocket and/or webrtc; got {text!r}")
    return values


def _run_sweep(url: str, args: argparse.Namespace) -> dict[str, Any]:
    variants = list(args.variants) + (["sequential"] if args.baseline else [])
    modes = [m for t in args.transport for m in (variants if t == "websocket" else
                                                   [WEBRTC_PREFIX + v for v in variants])]
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    clips = spoken_questions()
    if args.warmup_turns:
        print(f"warm-up: {args.warmup_turns} turn(s) per mode", file=sys.stderr)
        asyncio.run(warm_up(url, args.warmup_turns, clips, modes))
    levels = []
    for concurrency in args.concurrency:
        for s in asyncio.run(run_levels(url, concurrency, args.turns, args.duration, args.pause_s,
                                        not args.quiet, modes, args.rounds if len(modes) > 1 else 1, clips, args.together)):
            levels.append(s)
            print(f"{s['mode']} x{concurrency}: {s['completed']}/{s['turns']} completed, {s['failed']} failed, "
                  f"{s['lost']} lost; v2v p50 {s['latency_ms']['p50']} ms p95 {s['latency_ms']['p95']} ms; "
                  f"WER {s['wer_mean']}; CPU {s['cpu'].get('mean_pct')}% mean", file=sys.stderr)
    settings = {"concurrency": args.concurrency, "turns": args.turns, "together": args.together,
                "transports": args.transport,
                "duration_s": args.duration, "pause_s": args.pause_s, "warmup_turns": args.warmup_turns,
                "modes": modes, "rounds": len(split_turns(args.turns, args.rounds)) if len(modes) > 1 else 1,
                "questions": len(clips), "chunk_ms": 20}
    return build_report(url, levels, settings, args.slo_ms, machine=machine_info(), started_at=started)


def _measure_alone(config_path: str, report: dict[str, Any]) -> dict[str, Any]:
    """The critical-path stages alone, on the sweep's own inputs (quillman_bench.alone)."""
    from quillman.doctor import load_app_config
    from quillman_bench import alone

    print("stages alone: the same engines and inputs, one call at a time ...", file=sys.stderr)
    replies = [r["reply_text"] for level in report["levels"] for r in level.get("records", []) if r.get("reply_text")]
    result = alone.measure(load_app_config(config_path), spoken_questions(), 24000, replies)
    for level in report["levels"]:
        level["in_situ_over_alone"] = alone.in_situ_ratios(level, result)
    return result


def run(args: argparse.Namespace) -> int:
    from quillman_bench.server_process import ServerStartError, realtime_server

    if args.api_key:
        os.environ["QUILLMAN_API_KEY"] = args.api_key  # every RealtimeClient picks it up

    try:
        with realtime_server(args.url, args.start, args.config, args.port) as url:
            report = _run_sweep(url, args)
            if args.alone if args.alone is not None else args.start:
                report["alone"] = _measure_alone(args.config, report)
    except ServerStartError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    if args.markdown:
        print(markdown_report(report))
    if args.plot:
        if plot(report, args.plot):
            print(f"plot: {args.plot}", file=sys.stderr)
    return 1 if report["totals"]["lost"] else 0


BENCH_HELP = "measure voice-to-voice latency with simulated callers"


def add_arguments(bench: argparse.ArgumentParser) -> None:
    bench.add_argument("--url", default=DEFAULT_URL, help="Realtime websocket of a running server")
    bench.add_argument("--api-key", default=None,
                       help="sent as 'Authorization: Bearer' (default: $QUILLMAN_API_KEY)")
    bench.add_argument("--start", action="store_true",
                       help="run `serve run --config` for the benchmark (instead of targeting --url)")
    bench.add_argument("--config", default="serve_config.yaml", help="with --start: the Serve config")
    bench.add_argument("--port", type=int, default=None, help="with --start: serve on this port instead")
    bench.add_argument("--concurrency", type=parse_concurrency, default=[1],
                       help="callers, or a sweep like 1,2,4,8")
    bench.add_argument("--turns", type=int, default=10, help="turns per caller and level")
    bench.add_argument("--duration", type=float, default=None,
                       help="per level: start no new turn after this many seconds")
    bench.add_argument("--pause-s", type=float, default=1.0,
                       help="mean silence between a reply and the next question")
    bench.add_argument("--together", action="store_true",
                       help="callers start every turn at the same moment (default: starts spread over --pause-s)")
    bench.add_argument("--warmup-turns", type=int, default=1, help="unmeasured turns before the sweep, per mode")
    bench.add_argument("--baseline", action="store_true",
                       help="also run every level through the server's sequential pipeline and report the ratio")
    bench.add_argument("--variants", type=parse_variants, default=list(VARIANTS),
                       help="comma-separated: streaming (the server's own turn detection: what users get), "
                            "server_vad; measured in alternating blocks of one run")
    bench.add_argument("--transport", type=parse_transports, default=["websocket"],
                       help="comma-separated: websocket, webrtc (both: measured in alternating blocks of one run)")
    bench.add_argument("--rounds", type=int, default=2,
                       help="with several variants: alternate them in this many blocks per level")
    bench.add_argument("--slo-ms", type=float, default=DEFAULT_SLO_MS,
                       help="report the largest concurrency whose p95 stays under this")
    bench.add_argument("--alone", action=argparse.BooleanOptionalAction, default=None,
                       help="after the sweep, time each critical-path stage's engine alone on the same inputs "
                            "(in this process, the --config's engine settings; default: with --start)")
    bench.add_argument("--json", help="write the full report (levels, per-turn records) here")
    bench.add_argument("--markdown", action="store_true", help="print markdown tables")
    bench.add_argument("--plot", help="write a PNG: latency vs concurrency and stacked per-stage bars")
    bench.add_argument("--quiet", action="store_true", help="no progress bar")
    bench.set_defaults(run=run)


def add_bench_parser(sub: Any) -> argparse.ArgumentParser:
    """``bench`` as a subcommand of another parser's subparsers."""
    bench = sub.add_parser("bench", help=BENCH_HELP, description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(bench)
    return bench


def build_parser(prog: str = "quillman bench") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """``quillman bench ARGS`` (``quillman.cli`` hands the arguments after ``bench`` here);
    ``quillman bench qa ARGS`` scores answers instead (quillman_bench.qa), ``quillman bench
    turns ARGS`` replays the labeled turn-taking set (quillman_bench.turn_replay), ``quillman
    bench asr ARGS`` the ASR's word error rate per input format (quillman_bench.asr_bench),
    ``quillman bench replay ARGS`` counts replayed answers (quillman_bench.replay), ``quillman
    bench webrtc-leaks ARGS`` opens and closes WebRTC calls in a loop (quillman_bench.webrtc_leaks)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["turns"]:
        from quillman_bench.turn_replay import main as turns_main

        return turns_main(argv[1:])
    if argv[:1] == ["qa"]:
        from quillman_bench.qa import main as qa_main

        return qa_main(argv[1:])
    if argv[:1] == ["replay"]:
        from quillman_bench.replay import main as replay_main

        return replay_main(argv[1:])
    if argv[:1] == ["webrtc-leaks"]:
        from quillman_bench.webrtc_leaks import main as leaks_main

        return leaks_main(argv[1:])
    if argv[:1] == ["asr"]:
        from quillman_bench.asr_bench import main as asr_main

        return asr_main(argv[1:])
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
