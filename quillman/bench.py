"""``quillman bench``: voice-to-voice latency of a running server, as callers feel it.

Each simulated caller holds one Realtime session and speaks synthesized questions (espeak-ng)
at live pace in 20 ms frames, keeps its microphone open (silence) until the whole reply has
arrived, listens for a moment, and asks the next one. Reported per turn and per level: client
side voice-to-voice latency (last speech sample sent -> first reply audio byte received)
p50/p95/p99, the server's per-stage timings (``response.done`` -> ``timings``), transcript WER,
reply real-time factor, turns completed / failed / cancelled / lost, and the machine's CPU use.

``--baseline`` runs every level twice: the streaming pipeline and the server's naive sequential
one (``session.quillman.pipeline = "sequential"``: whole utterance transcribed after it ends ->
full LLM reply -> one synthesis -> send), and reports their ratio. ``--start`` runs
``serve run`` for the duration of the benchmark instead of targeting ``--url``.

  quillman bench --concurrency 1,2,4 --turns 10 --baseline --json out.json --markdown --plot out.png
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from quillman.client import DEFAULT_URL, RealtimeClient
from quillman.speech import QUESTIONS, espeak, with_silence, word_error_rate

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MODES = ("streaming", "sequential")
# Everything the server reports in response.done -> timings, in ms from the end of user speech.
STAGES = ("turn_detected_ms", "transcript_ms", "first_token_ms", "first_sentence_ms",
          "first_audio_ms", "total_ms", "asr_last_segment_ms", "llm_ttft_ms", "tts_first_chunk_ms")
# Instants on the way to the first reply audio, in order; the stacked bars split latency by them.
MARKS = (("turn_detected_ms", "end of turn detected"), ("transcript_ms", "transcript"),
         ("first_token_ms", "LLM first token"), ("first_sentence_ms", "first clause"),
         ("first_audio_ms", "TTS first audio"))
TRANSPORT_SEGMENT = "to the client"
TURN_TIMEOUT_S = 120.0
DEFAULT_SLO_MS = 1500.0


@dataclass
class TurnRecord:
    caller: int
    turn: int
    question: str
    status: str  # completed | failed | cancelled | lost (no response.done: timeout or dropped socket)
    latency_ms: float | None  # client-side voice-to-voice
    wer: float | None
    reply_text: str
    reply_audio_s: float
    reply_rtf: float | None  # LLM + TTS wall time (transcript -> done) / reply audio length
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    mode: str = "streaming"


# --- statistics (pure) ------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(float(np.percentile(np.asarray(values, dtype=float), q)), 1)


def _mean(values: list[float], digits: int = 1) -> float | None:
    return round(statistics.fmean(values), digits) if values else None


def distribution(values: list[float]) -> dict[str, float | None]:
    return {"p50": percentile(values, 50), "p95": percentile(values, 95), "p99": percentile(values, 99),
            "mean": _mean(values), "min": percentile(values, 0), "max": percentile(values, 100),
            "n": len(values)}


def reply_rtf(timings: dict[str, float], reply_audio_s: float) -> float | None:
    """Seconds of reply generation (transcript ready -> last audio sent) per second of reply audio."""
    total = timings.get("total_ms")
    if total is None or reply_audio_s <= 0:
        return None
    start = max(0.0, timings.get("transcript_ms", 0.0))
    return round(max(0.0, total - start) / 1000 / reply_audio_s, 3)


def summarize(records: list[TurnRecord], concurrency: int, wall_s: float,
              mode: str = "streaming", cpu: dict[str, Any] | None = None) -> dict[str, Any]:
    """One level (concurrency x mode) in aggregate; only completed turns enter the latencies."""
    completed = [r for r in records if r.status == "completed"]
    latencies = [r.latency_ms for r in completed if r.latency_ms is not None]
    stages = {stage: distribution([r.timings[stage] for r in completed if stage in r.timings])
              for stage in STAGES}
    wers = [r.wer for r in completed if r.wer is not None]
    rtfs = [r.reply_rtf for r in completed if r.reply_rtf is not None]
    speculative = [r.timings["speculative"] for r in completed if "speculative" in r.timings]
    return {
        "mode": mode,
        "concurrency": concurrency,
        "wall_s": round(wall_s, 1),
        "turns": len(records),
        "completed": len(completed),
        "failed": sum(r.status == "failed" for r in records),
        "cancelled": sum(r.status == "cancelled" for r in records),
        "lost": sum(r.status == "lost" for r in records),
        "turns_per_min": round(len(completed) / wall_s * 60, 2) if wall_s > 0 else None,
        "latency_ms": distribution(latencies),
        "server_stages_ms": stages,
        "wer_mean": _mean(wers, 3),
        "reply_rtf_mean": _mean(rtfs, 3),
        "reply_audio_s_mean": _mean([r.reply_audio_s for r in completed], 2),
        "speculative_share": _mean(speculative, 2),
        "cpu": cpu or {},
    }


def latency_segments(level: dict[str, Any]) -> dict[str, float]:
    """The median latency split by the server's marks (ms each; they add up to the client p50).

    Each mark's p50 is taken as an instant after the previous one (a speculative transcript can
    be ready before the end of turn; it then adds nothing), and what is left of the client's
    p50 after the server's first audio is the trip to the client.
    """
    stages = level["server_stages_ms"]
    segments: dict[str, float] = {}
    previous = 0.0
    for key, label in MARKS:
        mark = stages.get(key, {}).get("p50")
        if mark is None:
            continue
        segments[label] = round(max(0.0, mark - previous), 1)
        previous = max(previous, mark)
    client = level["latency_ms"].get("p50")
    if client is not None:
        segments[TRANSPORT_SEGMENT] = round(max(0.0, client - previous), 1)
    return segments


def compare(levels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sequential / streaming latency ratios per concurrency, where both modes ran."""
    by_key = {(s["mode"], s["concurrency"]): s for s in levels}
    rows = []
    for (mode, concurrency), streaming in sorted(by_key.items(), key=lambda kv: kv[0][1]):
        sequential = by_key.get(("sequential", concurrency))
        if mode != "streaming" or sequential is None:
            continue
        row: dict[str, Any] = {"concurrency": concurrency}
        for q in ("p50", "p95"):
            fast, slow = streaming["latency_ms"][q], sequential["latency_ms"][q]
            row[f"streaming_{q}"] = fast
            row[f"sequential_{q}"] = slow
            row[f"ratio_{q}"] = round(slow / fast, 2) if fast and slow else None
        rows.append(row)
    return rows


def max_concurrency_within(levels: list[dict[str, Any]], slo_ms: float, mode: str = "streaming",
                           q: str = "p95") -> int | None:
    """The largest concurrency whose ``q`` voice-to-voice latency stays under ``slo_ms``, with no
    lost or failed turns; None if none does."""
    ok = [s["concurrency"] for s in levels
          if s["mode"] == mode and s["latency_ms"][q] is not None and s["latency_ms"][q] < slo_ms
          and s["lost"] == 0 and s["failed"] == 0]
    return max(ok) if ok else None


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") if abs(value) < 10 else f"{value:.0f}"
    return str(value)


def markdown_table(levels: list[dict[str, Any]]) -> str:
    """Voice-to-voice latency and server marks per level (ms; server marks are p50)."""
    lines = ["| mode | callers | turns ok/failed/lost | v2v p50 | v2v p95 | v2v p99 | turn detected | "
             "transcript | first token | first audio (server) | WER | reply RTF | CPU mean/max % |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in levels:
        st, cpu = s["server_stages_ms"], s.get("cpu") or {}
        lines.append(
            f"| {s['mode']} | {s['concurrency']} | {s['completed']}/{s['failed']}/{s['lost']} | "
            f"{_fmt(s['latency_ms']['p50'])} | {_fmt(s['latency_ms']['p95'])} | {_fmt(s['latency_ms']['p99'])} | "
            f"{_fmt(st['turn_detected_ms']['p50'])} | {_fmt(st['transcript_ms']['p50'])} | "
            f"{_fmt(st['first_token_ms']['p50'])} | {_fmt(st['first_audio_ms']['p50'])} | "
            f"{_fmt(s['wer_mean'])} | {_fmt(s['reply_rtf_mean'])} | "
            f"{_fmt(cpu.get('mean_pct'))}/{_fmt(cpu.get('max_pct'))} |")
    return "\n".join(lines)


def markdown_engine_table(levels: list[dict[str, Any]]) -> str:
    """The engines' own share inside the server, p50/p95 (ms)."""
    lines = ["| mode | callers | ASR last segment p50/p95 | LLM TTFT p50/p95 | TTS first chunk p50/p95 | "
             "reply done p50 | speculative share |",
             "|---|---|---|---|---|---|---|"]
    for s in levels:
        st = s["server_stages_ms"]

        def pair(stage: str) -> str:
            return f"{_fmt(st[stage]['p50'])} / {_fmt(st[stage]['p95'])}"

        lines.append(f"| {s['mode']} | {s['concurrency']} | {pair('asr_last_segment_ms')} | "
                     f"{pair('llm_ttft_ms')} | {pair('tts_first_chunk_ms')} | {_fmt(st['total_ms']['p50'])} | "
                     f"{_fmt(s['speculative_share'])} |")
    return "\n".join(lines)


def markdown_comparison(rows: list[dict[str, Any]]) -> str:
    lines = ["| callers | streaming p50 | sequential p50 | sequential/streaming p50 | streaming p95 | "
             "sequential p95 | sequential/streaming p95 |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['concurrency']} | {_fmt(r['streaming_p50'])} | {_fmt(r['sequential_p50'])} | "
                     f"{_fmt(r['ratio_p50'])}× | {_fmt(r['streaming_p95'])} | {_fmt(r['sequential_p95'])} | "
                     f"{_fmt(r['ratio_p95'])}× |")
    return "\n".join(lines)


def markdown_report(report: dict[str, Any]) -> str:
    parts = ["Voice-to-voice latency at the client (ms, end of speech -> first reply audio) and the "
             "server's marks (p50, ms from the end of speech):", "", markdown_table(report["levels"]), "",
             "Engines inside the server (ms):", "", markdown_engine_table(report["levels"])]
    if report.get("comparison"):
        parts += ["", "Streaming vs the sequential baseline (ms):", "", markdown_comparison(report["comparison"])]
    slo = report.get("slo")
    if slo:
        parts += ["", f"Largest concurrency with streaming v2v p95 < {slo['threshold_ms']:g} ms: "
                      f"{_fmt(slo['max_concurrency'])}"]
    return "\n".join(parts)


# --- machine ---------------------------------------------------------------------------------------


def _proc_stat() -> tuple[float, float] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat; None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = [float(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already inside user/nice
    return total - idle, total


class CpuSampler:
    """Machine-wide CPU busy % (all cores, 100 = every core busy) sampled during a level.

    Also the benchmark process's own share, so its cost on a small machine is visible.
    """

    def __init__(self, interval_s: float = 0.5):
        self.interval_s = interval_s
        self.samples: list[float] = []
        self._task: asyncio.Task | None = None
        self._process_start = 0.0
        self._wall_start = 0.0

    async def _run(self) -> None:
        previous = _proc_stat()
        while previous is not None:
            await asyncio.sleep(self.interval_s)
            current = _proc_stat()
            if current is None:
                return
            busy, total = current[0] - previous[0], current[1] - previous[1]
            if total > 0:
                self.samples.append(100.0 * busy / total)
            previous = current

    def start(self) -> None:
        self._process_start, self._wall_start = time.process_time(), time.perf_counter()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> dict[str, Any]:
        """Stop sampling; returns the raw samples, wall and client CPU time (see :func:`cpu_summary`)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        return {"samples": list(self.samples), "wall_s": time.perf_counter() - self._wall_start,
                "client_cpu_s": time.process_time() - self._process_start}


def cpu_summary(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and max machine CPU % over the samples of one or more sampled stretches, and the
    benchmark client's own share of all cores."""
    samples = [v for part in parts for v in part["samples"]]
    wall = sum(part["wall_s"] for part in parts)
    cores = os.cpu_count() or 1
    client = 100.0 * sum(part["client_cpu_s"] for part in parts) / wall / cores if wall > 0 else None
    return {"cores": cores, "mean_pct": _mean(samples), "max_pct": percentile(samples, 100),
            "bench_client_pct": None if client is None else round(client, 1)}


def machine_info() -> dict[str, Any]:
    model = None
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        pass
    mem_gb = None
    try:
        mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    return {"cpu": model or platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "memory_gb": mem_gb, "os": platform.platform(), "python": platform.python_version(),
            "gpu": None}


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


async def _connect(url: str, mode: str) -> RealtimeClient:
    client = RealtimeClient(url)
    await client.connect(session={"quillman": {"pipeline": mode}})
    granted = (client.session.get("quillman") or {}).get("pipeline", "streaming")
    if granted != mode:
        await client.close()
        raise RuntimeError(f"the server did not switch to the {mode} pipeline (session says {granted!r})")
    return client


async def _caller(url: str, caller: int, turns: int, clips: list[tuple[str, np.ndarray]],
                  pause_s: float, records: list[TurnRecord], deadline: float, progress: Progress,
                  mode: str = "streaming", stagger_s: float = 0.0, first_turn: int = 0) -> None:
    rng = random.Random(caller * 1000 + first_turn)
    await asyncio.sleep(stagger_s * rng.random())  # callers don't all start speaking at once
    client: RealtimeClient | None = None
    for turn in range(first_turn, first_turn + turns):
        if time.perf_counter() > deadline:
            break
        question, pcm = clips[(caller + turn) % len(clips)]
        if client is None:
            try:
                client = await _connect(url, mode)
            except Exception as exc:  # noqa: BLE001 - a refused caller: its turns fail
                records.append(TurnRecord(caller, turn, question, "failed", None, None, "", 0, None,
                                          error=f"connect: {type(exc).__name__}: {exc}", mode=mode))
                progress.step()
                continue
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
        ))
        progress.step()
        # The caller listens a moment (mic open, silence), then asks the next question.
        try:
            await client.stream_audio(np.zeros(0, dtype=np.int16), pad_silence_s=pause_s * rng.uniform(0.5, 1.5))
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
                    first_turn: int = 0) -> Block:
    records: list[TurnRecord] = []
    deadline = time.perf_counter() + (duration_s or 1e9)
    sampler = CpuSampler()
    sampler.start()
    start = time.perf_counter()
    await asyncio.gather(*(_caller(url, c, turns, clips, pause_s, records, deadline, progress, mode,
                                   stagger_s=pause_s if concurrency > 1 else 0.0, first_turn=first_turn)
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
                     clips: list[tuple[str, np.ndarray]] | None = None) -> list[dict[str, Any]]:
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
                                          pause_s, progress, mode, clips, first_turn))
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


# --- plot ------------------------------------------------------------------------------------------


def plot(report: dict[str, Any], path: str) -> bool:
    """Latency vs concurrency (left) and the median latency split by stage (right)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("--plot: matplotlib is not installed (pip install 'quillman[bench]'); no plot written",
              file=sys.stderr)
        return False
    levels = report["levels"]
    modes = [m for m in MODES if any(s["mode"] == m for s in levels)]
    fig, (ax_lat, ax_bar) = plt.subplots(1, 2, figsize=(13, 4.8))
    colors = {"streaming": "tab:blue", "sequential": "tab:red"}
    for mode in modes:
        rows = sorted((s for s in levels if s["mode"] == mode), key=lambda s: s["concurrency"])
        xs = [s["concurrency"] for s in rows]
        for q, style in (("p50", "-o"), ("p95", "--s")):
            ys = [s["latency_ms"][q] if s["latency_ms"][q] is not None else float("nan") for s in rows]
            ax_lat.plot(xs, ys, style, color=colors[mode], label=f"{mode} {q}")
    slo = (report.get("slo") or {}).get("threshold_ms")
    if slo:
        ax_lat.axhline(slo, color="gray", linewidth=0.8, linestyle=":", label=f"{slo:g} ms")
    concurrencies = sorted({s["concurrency"] for s in levels})
    ax_lat.set_xscale("log", base=2)
    ax_lat.set_xticks(concurrencies, [str(c) for c in concurrencies])
    ax_lat.set_xlabel("concurrent callers")
    ax_lat.set_ylabel("voice-to-voice latency at the client (ms)")
    ax_lat.set_title("Latency vs concurrency")
    ax_lat.grid(alpha=0.3)
    ax_lat.legend(fontsize=8)

    labels = [label for _, label in MARKS] + [TRANSPORT_SEGMENT]
    cmap = plt.get_cmap("tab10")
    width = 0.8 / max(len(modes), 1)
    ticks, tick_labels = [], []
    for i, concurrency in enumerate(concurrencies):
        for j, mode in enumerate(modes):
            level = next((s for s in levels if s["mode"] == mode and s["concurrency"] == concurrency), None)
            if level is None:
                continue
            x = i + (j - (len(modes) - 1) / 2) * width
            bottom = 0.0
            for k, (label, ms) in enumerate(latency_segments(level).items()):
                ax_bar.bar(x, ms, width * 0.9, bottom=bottom, color=cmap(labels.index(label)),
                           label=label if (i, j) == (0, 0) else None,
                           hatch="//" if mode == "sequential" else None, edgecolor="white")
                bottom += ms
            ticks.append(x)
            tick_labels.append(f"{concurrency}\n{mode[:3]}")
    ax_bar.set_xticks(ticks, tick_labels, fontsize=8)
    ax_bar.set_xlabel("concurrent callers / pipeline (str = streaming, seq = sequential)")
    ax_bar.set_ylabel("median latency by stage (ms)")
    ax_bar.set_title("Where the median latency goes")
    ax_bar.grid(axis="y", alpha=0.3)
    ax_bar.legend(fontsize=8)
    fig.suptitle(f"quillman bench — {report['machine'].get('cpu')}, {report['machine'].get('cores')} cores",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# --- command ---------------------------------------------------------------------------------------


def parse_concurrency(text: str) -> list[int]:
    values = [int(c) for c in str(text).split(",") if c.strip()]
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"--concurrency wants positive integers like 1,2,4; got {text!r}")
    return values


def build_report(url: str, levels: list[dict[str, Any]], settings: dict[str, Any],
                 slo_ms: float = DEFAULT_SLO_MS, machine: dict[str, Any] | None = None,
                 started_at: str | None = None) -> dict[str, Any]:
    totals = {key: sum(s[key] for s in levels) for key in ("turns", "completed", "failed", "cancelled", "lost")}
    return {
        "schema": SCHEMA_VERSION,
        "url": url,
        "started_at": started_at or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine or machine_info(),
        "settings": settings,
        "levels": levels,
        "comparison": compare(levels),
        "slo": {"threshold_ms": slo_ms, "quantile": "p95",
                "max_concurrency": max_concurrency_within(levels, slo_ms)},
        "totals": totals,
    }


def _run_sweep(url: str, args: argparse.Namespace) -> dict[str, Any]:
    modes = ["streaming", "sequential"] if args.baseline else ["streaming"]
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    clips = spoken_questions()
    if args.warmup_turns:
        print(f"warm-up: {args.warmup_turns} turn(s) per mode", file=sys.stderr)
        asyncio.run(warm_up(url, args.warmup_turns, clips, modes))
    levels = []
    for concurrency in args.concurrency:
        for s in asyncio.run(run_levels(url, concurrency, args.turns, args.duration, args.pause_s,
                                        not args.quiet, modes, args.rounds if len(modes) > 1 else 1, clips)):
            levels.append(s)
            print(f"{s['mode']} x{concurrency}: {s['completed']}/{s['turns']} completed, {s['failed']} failed, "
                  f"{s['lost']} lost; v2v p50 {s['latency_ms']['p50']} ms p95 {s['latency_ms']['p95']} ms; "
                  f"WER {s['wer_mean']}; CPU {s['cpu'].get('mean_pct')}% mean", file=sys.stderr)
    settings = {"concurrency": args.concurrency, "turns": args.turns,
                "duration_s": args.duration, "pause_s": args.pause_s, "warmup_turns": args.warmup_turns,
                "modes": modes, "rounds": len(split_turns(args.turns, args.rounds)) if len(modes) > 1 else 1,
                "questions": len(clips), "chunk_ms": 20}
    return build_report(url, levels, settings, args.slo_ms, started_at=started)


def run(args: argparse.Namespace) -> int:
    from quillman.server_process import ServeProcess, ServerStartError

    if args.api_key:
        os.environ["QUILLMAN_API_KEY"] = args.api_key  # every RealtimeClient picks it up

    server = None
    url = args.url
    if args.start:
        server = ServeProcess(args.config, port=args.port)
        print(f"starting serve run {args.config} (log {server.log_path}) ...", file=sys.stderr)
        try:
            url = server.start().replace("http://", "ws://") + "/v1/realtime"
        except ServerStartError as exc:
            print(str(exc), file=sys.stderr)
            return 2
    try:
        report = _run_sweep(url, args)
    finally:
        if server is not None:
            server.stop()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    if args.markdown:
        print(markdown_report(report))
    if args.plot:
        if plot(report, args.plot):
            print(f"plot: {args.plot}", file=sys.stderr)
    return 1 if report["totals"]["lost"] else 0


def add_bench_parser(sub: Any) -> None:
    bench = sub.add_parser("bench", help="measure voice-to-voice latency with simulated callers",
                           description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    bench.add_argument("--warmup-turns", type=int, default=1, help="unmeasured turns before the sweep, per mode")
    bench.add_argument("--baseline", action="store_true",
                       help="also run every level through the server's sequential pipeline and report the ratio")
    bench.add_argument("--rounds", type=int, default=2,
                       help="with --baseline: alternate the pipelines in this many blocks per level")
    bench.add_argument("--slo-ms", type=float, default=DEFAULT_SLO_MS,
                       help="report the largest concurrency whose p95 stays under this")
    bench.add_argument("--json", help="write the full report (levels, per-turn records) here")
    bench.add_argument("--markdown", action="store_true", help="print markdown tables")
    bench.add_argument("--plot", help="write a PNG: latency vs concurrency and stacked per-stage bars")
    bench.add_argument("--quiet", action="store_true", help="no progress bar")
    bench.set_defaults(run=run)
