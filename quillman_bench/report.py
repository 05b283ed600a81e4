"""The numbers of a load test and the bench's report (pure: no network, no server, no psutil).

:func:`percentile` is the one definition of p50/p95/p99 (and medians) used by every tool here:
``quillman bench``, the soak, ``benchmarks/engines.py`` and ``benchmarks/llama_builds.py``.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable

import numpy as np

from quillman.protocol import STAGES

SCHEMA_VERSION = 1
MODES = ("streaming", "server_vad", "sequential")
# Instants on the way to the first reply audio, in order; the stacked bars split latency by them.
MARKS = (("turn_detected_ms", "end of turn detected"), ("transcript_ms", "transcript"),
         ("first_token_ms", "LLM first token"), ("first_sentence_ms", "first clause"),
         ("first_audio_ms", "TTS first audio"))
TRANSPORT_SEGMENT = "to the client"
DEFAULT_SLO_MS = 1500.0


# --- statistics --------------------------------------------------------------------------------------


def percentile(values: Iterable[float], q: float, digits: int | None = 1) -> float | None:
    """The ``q``-th percentile (0-100) of ``values``, linearly interpolated; None when empty.

    Definition (numpy's default ``method="linear"``, type 7 of Hyndman & Fan, also Excel's
    PERCENTILE.INC): sort the n values x[0] <= ... <= x[n-1], take the rank h = (n - 1) * q / 100
    and interpolate between its neighbours, x[floor(h)] + (h - floor(h)) * (x[ceil(h)] - x[floor(h)]).
    So p0 is the minimum, p100 the maximum, p50 the median (the mean of the two middle values
    when n is even), and a percentile of one value is that value. Rounded to ``digits``
    (None: not rounded).
    """
    data = np.asarray([float(v) for v in values], dtype=float)
    if data.size == 0:
        return None
    value = float(np.percentile(data, q, method="linear"))
    return value if digits is None else round(value, digits)


def median(values: Iterable[float], digits: int | None = 1) -> float | None:
    """p50 by :func:`percentile`'s definition; None when empty."""
    return percentile(values, 50, digits)


def mean(values: Iterable[float], digits: int | None = 1) -> float | None:
    data = [float(v) for v in values]
    if not data:
        return None
    value = statistics.fmean(data)
    return value if digits is None else round(value, digits)


def distribution(values: list[float]) -> dict[str, float | None]:
    """p50/p95/p99, mean, min, max and count of ``values`` (see :func:`percentile`)."""
    return {"p50": percentile(values, 50), "p95": percentile(values, 95), "p99": percentile(values, 99),
            "mean": mean(values), "min": percentile(values, 0), "max": percentile(values, 100),
            "n": len(values)}


# --- one bench level ---------------------------------------------------------------------------------


@dataclass
class TurnRecord:
    caller: int
    turn: int
    question: str
    # completed | failed | cancelled | lost (no response.done: timeout or dropped socket) |
    # refused (the session was turned away at the handshake: 503, admission control)
    status: str
    latency_ms: float | None  # client-side voice-to-voice
    wer: float | None
    reply_text: str
    reply_audio_s: float
    reply_rtf: float | None  # LLM + TTS wall time (transcript -> done) / reply audio length
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    mode: str = "streaming"
    underrun_s: float = 0.0  # see quillman.client.TurnResult.underrun_s


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
        # A caller turned away at the handshake (503 at capacity): its turns are not run.
        "refused_sessions": len({r.caller for r in records if r.status == "refused"}),
        # Completed replies whose playback would have starved (> 20 ms, one audio frame).
        "underruns": sum(r.underrun_s > 0.02 for r in completed),
        "underrun_s_max": max((r.underrun_s for r in completed), default=0.0),
        "turns_per_min": round(len(completed) / wall_s * 60, 2) if wall_s > 0 else None,
        "latency_ms": distribution(latencies),
        "server_stages_ms": stages,
        "wer_mean": mean(wers, 3),
        "reply_rtf_mean": mean(rtfs, 3),
        "reply_audio_s_mean": mean([r.reply_audio_s for r in completed], 2),
        "speculative_share": mean(speculative, 2),
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


# --- the sweep ---------------------------------------------------------------------------------------


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


def build_report(url: str, levels: list[dict[str, Any]], settings: dict[str, Any],
                 slo_ms: float = DEFAULT_SLO_MS, machine: dict[str, Any] | None = None,
                 started_at: str | None = None) -> dict[str, Any]:
    """The whole bench report (``--json``); ``machine`` is :func:`quillman_bench.machine.machine_info`."""
    totals = {key: sum(s.get(key, 0) for s in levels)
              for key in ("turns", "completed", "failed", "cancelled", "lost", "refused_sessions", "underruns")}
    return {
        "schema": SCHEMA_VERSION,
        "url": url,
        "started_at": started_at or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine or {},
        "settings": settings,
        "levels": levels,
        "comparison": compare(levels),
        "slo": {"threshold_ms": slo_ms, "quantile": "p95",
                "max_concurrency": max_concurrency_within(levels, slo_ms)},
        "totals": totals,
    }


# --- markdown ----------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") if abs(value) < 10 else f"{value:.0f}"
    return str(value)


def table(header: list[str], rows: Iterable[Iterable[Any]]) -> str:
    """A markdown table: the ``header`` line, its rule, and a line per row of cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def dict_table(rows: list[dict[str, Any]]) -> str:
    """``rows`` as a markdown table, a column per key in first-seen order (None: blank); "" for none."""
    if not rows:
        return ""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return table(keys, (["" if r.get(k) is None else r.get(k) for k in keys] for r in rows))


def markdown_table(levels: list[dict[str, Any]]) -> str:
    """Voice-to-voice latency and server marks per level (ms; server marks are p50)."""
    header = ["mode", "callers", "turns ok/failed/lost", "refused", "v2v p50", "v2v p95", "v2v p99",
              "turn detected", "transcript", "first token", "first audio (server)", "under-runs", "WER",
              "reply RTF", "CPU mean/max %"]
    rows = []
    for s in levels:
        st, cpu = s["server_stages_ms"], s.get("cpu") or {}
        rows.append([
            s["mode"], s["concurrency"], f"{s['completed']}/{s['failed']}/{s['lost']}",
            s.get("refused_sessions", 0),
            _fmt(s["latency_ms"]["p50"]), _fmt(s["latency_ms"]["p95"]), _fmt(s["latency_ms"]["p99"]),
            _fmt(st["turn_detected_ms"]["p50"]), _fmt(st["transcript_ms"]["p50"]),
            _fmt(st["first_token_ms"]["p50"]), _fmt(st["first_audio_ms"]["p50"]),
            s.get("underruns", 0), _fmt(s["wer_mean"]), _fmt(s["reply_rtf_mean"]),
            f"{_fmt(cpu.get('mean_pct'))}/{_fmt(cpu.get('max_pct'))}"])
    return table(header, rows)


def markdown_engine_table(levels: list[dict[str, Any]]) -> str:
    """The engines' own share inside the server, p50/p95 (ms)."""
    header = ["mode", "callers", "ASR last segment p50/p95", "LLM TTFT p50/p95", "of it queued p50/p95",
              "TTS first chunk p50/p95", "of it queued p50/p95", "reply done p50", "speculative share"]
    rows = []
    for s in levels:
        st = s["server_stages_ms"]

        def pair(stage: str) -> str:
            return f"{_fmt(st[stage]['p50'])} / {_fmt(st[stage]['p95'])}"

        rows.append([s["mode"], s["concurrency"], pair("asr_last_segment_ms"), pair("llm_ttft_ms"),
                     pair("llm_queue_ms"), pair("tts_first_chunk_ms"), pair("tts_queue_ms"),
                     _fmt(st["total_ms"]["p50"]), _fmt(s["speculative_share"])])
    return table(header, rows)


def markdown_comparison(rows: list[dict[str, Any]]) -> str:
    header = ["callers", "streaming p50", "sequential p50", "sequential/streaming p50", "streaming p95",
              "sequential p95", "sequential/streaming p95"]
    return table(header, ([r["concurrency"], _fmt(r["streaming_p50"]), _fmt(r["sequential_p50"]),
                           f"{_fmt(r['ratio_p50'])}×", _fmt(r["streaming_p95"]), _fmt(r["sequential_p95"]),
                           f"{_fmt(r['ratio_p95'])}×"] for r in rows))


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
    if report.get("alone"):
        from quillman_bench.alone import markdown_alone  # it imports this module

        parts += ["", "Critical-path stages inside the graph (p50) vs the same engine alone (median), ms:", "",
                  markdown_alone(report["levels"], report["alone"])]
    return "\n".join(parts)
