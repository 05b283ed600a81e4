"""``quillman bench``: voice-to-voice latency of a running server, as callers feel it.

Each simulated caller holds one Realtime session and speaks synthesized questions at live
pace (20 ms frames), waits for the whole reply, pauses, and repeats. Reported per turn and in
aggregate: client-side voice-to-voice latency (last speech sample sent -> first reply audio
received), the server's per-stage timings, transcript WER, reply real-time factor, and turns
completed / failed / lost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from quillman.client import DEFAULT_URL, RealtimeClient
from quillman.speech import QUESTIONS, espeak, with_silence, word_error_rate

STAGES = ("turn_detected_ms", "transcript_ms", "first_token_ms", "first_sentence_ms",
          "first_audio_ms", "total_ms")


@dataclass
class TurnRecord:
    caller: int
    turn: int
    question: str
    status: str
    latency_ms: float | None
    wer: float | None
    reply_text: str
    reply_audio_s: float
    reply_rtf: float | None  # generation time / audio length
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(float(np.percentile(np.asarray(values), q)), 1)


async def _caller(url: str, caller: int, turns: int, clips: list[tuple[str, np.ndarray]],
                  pause_s: float, records: list[TurnRecord], deadline: float,
                  progress: "Progress") -> None:
    try:
        client = RealtimeClient(url)
        await client.connect()
    except Exception as exc:  # noqa: BLE001 - a refused caller counts as failed turns
        for turn in range(turns):
            records.append(TurnRecord(caller, turn, "", "failed", None, None, "", 0, None,
                                      error=f"connect: {exc}"))
            progress.step()
        return
    try:
        for turn in range(turns):
            if time.perf_counter() > deadline:
                break
            question, pcm = clips[(caller + turn) % len(clips)]
            try:
                result = await client.talk(pcm, client.rate, timeout=120)
            except Exception as exc:  # noqa: BLE001 - a hang or drop is a lost turn
                records.append(TurnRecord(caller, turn, question, "lost", None, None, "", 0, None,
                                          error=f"{type(exc).__name__}: {exc}"))
                progress.step()
                break
            total = result.timings.get("total_ms")
            first = result.timings.get("first_audio_ms")
            rtf = None
            if total is not None and first is not None and result.reply_audio_s > 0:
                rtf = round((total - first) / 1000 / result.reply_audio_s, 3)
            records.append(TurnRecord(
                caller, turn, question, result.status, result.latency_ms,
                None if result.user_transcript is None else round(word_error_rate(question, result.user_transcript), 3),
                result.reply_text.strip(), round(result.reply_audio_s, 2), rtf, result.timings,
                error=result.errors[0]["code"] if result.errors else None,
            ))
            progress.step()
            # The caller "listens" to part of the reply, then asks the next question.
            await client.stream_audio(np.zeros(0, dtype=np.int16), pad_silence_s=pause_s)
    finally:
        await client.close()


class Progress:
    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.enabled = total, 0, enabled
        self.start = time.perf_counter()

    def step(self) -> None:
        self.done += 1
        if self.enabled:
            width = 30
            filled = int(width * self.done / max(self.total, 1))
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} turns "
                             f"{time.perf_counter() - self.start:5.0f} s")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def summarize(records: list[TurnRecord], concurrency: int, wall_s: float) -> dict[str, Any]:
    completed = [r for r in records if r.status == "completed"]
    latencies = [r.latency_ms for r in completed if r.latency_ms is not None]
    stages = {
        stage: {"p50": percentile([r.timings[stage] for r in completed if stage in r.timings], 50),
                "p95": percentile([r.timings[stage] for r in completed if stage in r.timings], 95)}
        for stage in STAGES
    }
    wers = [r.wer for r in completed if r.wer is not None]
    rtfs = [r.reply_rtf for r in completed if r.reply_rtf is not None]
    return {
        "concurrency": concurrency,
        "wall_s": round(wall_s, 1),
        "turns": len(records),
        "completed": len(completed),
        "failed": sum(r.status == "failed" for r in records),
        "cancelled": sum(r.status == "cancelled" for r in records),
        "lost": sum(r.status == "lost" for r in records),
        "latency_ms": {"p50": percentile(latencies, 50), "p95": percentile(latencies, 95),
                       "p99": percentile(latencies, 99),
                       "mean": round(statistics.fmean(latencies), 1) if latencies else None},
        "server_stages_ms": stages,
        "wer_mean": round(statistics.fmean(wers), 3) if wers else None,
        "reply_rtf_mean": round(statistics.fmean(rtfs), 3) if rtfs else None,
    }


async def run_level(url: str, concurrency: int, turns: int, duration_s: float | None,
                    pause_s: float, show_progress: bool) -> dict[str, Any]:
    clips = [(q, with_silence(espeak(q), 24000, before_s=0.3)) for q in QUESTIONS]
    records: list[TurnRecord] = []
    deadline = time.perf_counter() + (duration_s or 1e9)
    progress = Progress(concurrency * turns, show_progress)
    start = time.perf_counter()
    await asyncio.gather(*(_caller(url, c, turns, clips, pause_s, records, deadline, progress)
                           for c in range(concurrency)))
    progress.close()
    summary = summarize(records, concurrency, time.perf_counter() - start)
    summary["records"] = [asdict(r) for r in records]
    return summary


def markdown_table(levels: list[dict[str, Any]]) -> str:
    lines = ["| callers | turns ok/failed/lost | v2v p50 | v2v p95 | v2v p99 | transcript p50 | "
             "first token p50 | first audio p50 | WER | reply RTF |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for s in levels:
        st = s["server_stages_ms"]
        lines.append(
            f"| {s['concurrency']} | {s['completed']}/{s['failed']}/{s['lost']} | {s['latency_ms']['p50']} | "
            f"{s['latency_ms']['p95']} | {s['latency_ms']['p99']} | {st['transcript_ms']['p50']} | "
            f"{st['first_token_ms']['p50']} | {st['first_audio_ms']['p50']} | {s['wer_mean']} | {s['reply_rtf_mean']} |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    levels = []
    for concurrency in [int(c) for c in str(args.concurrency).split(",")]:
        summary = asyncio.run(run_level(args.url, concurrency, args.turns, args.duration,
                                        args.pause_s, not args.quiet))
        levels.append(summary)
        s = summary
        print(f"callers={concurrency}: {s['completed']}/{s['turns']} completed, lost {s['lost']}, "
              f"v2v p50 {s['latency_ms']['p50']} ms p95 {s['latency_ms']['p95']} ms, WER {s['wer_mean']}",
              file=sys.stderr)
    report = {"url": args.url, "levels": levels}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    if args.markdown:
        print(markdown_table(levels))
    lost = sum(level["lost"] for level in levels)
    return 1 if lost else 0


def add_bench_parser(sub: Any) -> None:
    bench = sub.add_parser("bench", help="measure voice-to-voice latency with simulated callers")
    bench.add_argument("--url", default=DEFAULT_URL)
    bench.add_argument("--concurrency", default="1", help="callers, or a sweep like 1,2,4,8")
    bench.add_argument("--turns", type=int, default=10, help="turns per caller")
    bench.add_argument("--duration", type=float, default=None, help="stop starting turns after N s")
    bench.add_argument("--pause-s", type=float, default=1.0, help="silence between a reply and the next question")
    bench.add_argument("--json", help="write the full report here")
    bench.add_argument("--markdown", action="store_true", help="print a markdown table")
    bench.add_argument("--quiet", action="store_true", help="no progress bar")
    bench.set_defaults(run=run)
