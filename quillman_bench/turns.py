"""Turn-taking live: the labeled set spoken to a running server, semantic_vad vs server_vad.

The set is ``data/turn_set.json`` (complete utterances, mid-sentence pauses, fillers, list
continuations, each spoken by several voices; a fixed tuning / test split), the same one
``quillman bench turns`` (:mod:`quillman_bench.turn_replay`) replays offline in audio time.
That replay is the measurement the rules are tuned and judged on; this is its live check.

Every utterance of the chosen split is spoken at live pace in 20 ms frames, through
``semantic_vad`` and ``server_vad`` (500 ms) in turn, same run. Per case and mode:
voice-to-voice latency p50/p95 (last speech sample sent -> first reply audio), false
endpoints (the turn ended before the utterance was finished: committed before its last word
was sent, or as two turns), late endpoints (the turn ended > 1 s after its last word), and
endpoint delay (last word -> ``committed``).

  python -m quillman_bench.turns --start --markdown --json turns.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from quillman.audio import resample
from quillman.client import DEFAULT_URL, RealtimeClient
from quillman_bench.report import dict_table, percentile
from quillman_bench.server_process import add_server_arguments
from quillman_bench import turn_replay

RATE_HZ = 24000
PAUSE_S = turn_replay.load_set()["pause_ms"] / 1000
LATE_S = turn_replay.LATE_S
CASES = turn_replay.CASES
ONLINE_VOICES = (0, 2, 4)  # a live run is ~5 s per utterance and mode: three voices of the set
MODES = {"semantic_vad": {"type": "semantic_vad", "eagerness": "auto"},
         "server_vad": {"type": "server_vad", "silence_duration_ms": 500}}


@dataclass
class Utterance:
    set: str  # the case: "complete" | "paused" | "filler" | "list"
    text: str
    voice: str
    pcm: np.ndarray  # int16 at RATE_HZ, speech only (no leading / trailing silence)
    pause_at: int | None = None  # the others: first sample of the mid-utterance pause


def labeled_set(voices: list[int] | None = None, split: str = "test") -> list[Utterance]:
    data = turn_replay.load_set()
    gap = np.zeros(int(PAUSE_S * RATE_HZ), dtype=np.int16)
    out: list[Utterance] = []
    for v, voice in enumerate(data["voices"]):
        if voices is not None and v not in voices:
            continue
        for u in data["utterances"]:
            if split != "both" and u["split"] != split:
                continue
            parts = [resample(turn_replay.speak(text, voice), turn_replay.RATE_HZ, RATE_HZ) for text in u["parts"]]
            pcm = np.concatenate([x for i, part in enumerate(parts) for x in ((gap, part) if i else (part,))])
            out.append(Utterance(u["case"], " ... ".join(u["parts"]), voice["name"], pcm,
                                 len(parts[0]) if len(parts) > 1 else None))
    return out


# --- online: the server's turns, both modes, same run ---------------------------------------------

async def _one(url: str, mode: str, u: Utterance, timeout_s: float = 20.0) -> dict[str, Any]:
    client = RealtimeClient(url, sample_rate_hz=RATE_HZ)
    await client.connect(session={"audio": {
        "input": {"format": {"type": "audio/pcm", "rate": RATE_HZ}, "turn_detection": MODES[mode]},
        "output": {"format": {"type": "audio/pcm", "rate": RATE_HZ}}}})
    lead = np.zeros(int(0.3 * RATE_HZ), dtype=np.int16)
    done = asyncio.Event()
    sender = asyncio.create_task(client.stream_audio(np.concatenate([lead, u.pcm]), stop=done))
    last_word_sample = len(lead) + len(u.pcm)
    commits: list[float] = []
    first_audio: float | None = None
    response: dict[str, Any] = {}
    transcripts: list[str] = []
    try:
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline:
            event = await client.next_event(max(0.01, deadline - time.perf_counter()))
            kind = event["type"]
            if kind == "input_audio_buffer.committed":
                commits.append(event["_received"])
            elif kind == "conversation.item.input_audio_transcription.completed":
                transcripts.append(event["transcript"])
            finished = client._sent_at(last_word_sample * 1000 / RATE_HZ) is not None  # noqa: SLF001
            if kind == "response.output_audio.delta" and first_audio is None and finished:
                first_audio = event["_received"]
                await client.send({"type": "response.cancel"})  # the first audio is all we measure
            elif kind == "response.done" and finished and (
                    first_audio is not None or event["response"]["status"] != "cancelled"):
                response = event["response"]
                break
    finally:
        done.set()
        await asyncio.gather(sender, return_exceptions=True)
        await client.close()
    last_word = client._sent_at(last_word_sample * 1000 / RATE_HZ)  # noqa: SLF001 - the client's log
    ended = commits[0] if commits else None
    return {
        "set": u.set, "voice": u.voice, "text": u.text, "mode": mode,
        "turns": len(commits), "transcripts": transcripts,
        "endpoint_ms": None if ended is None or last_word is None else round((ended - last_word) * 1000, 1),
        "latency_ms": None if first_audio is None or last_word is None
        else round((first_audio - last_word) * 1000, 1),
        "turn_decision": (response.get("metadata") or {}).get("turn_decision"),
        "turn_decision_ms": (response.get("timings") or {}).get("turn_decision_ms"),
    }


async def online(url: str, utterances: list[Utterance], progress: bool = True) -> list[dict[str, Any]]:
    rows = []
    for i, u in enumerate(utterances):
        modes = list(MODES) if i % 2 == 0 else list(MODES)[::-1]  # neither mode always goes first
        for mode in modes:
            rows.append(await _one(url, mode, u))
            await asyncio.sleep(0.5)
        if progress:
            sys.stderr.write(f"\r{i + 1}/{len(utterances)} utterances")
    if progress:
        sys.stderr.write("\n")
    return rows


def online_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for name in CASES:
        for mode in MODES:
            subset = [r for r in rows if r["set"] == name and r["mode"] == mode]
            if not subset:
                continue
            # The turn ended before the utterance did: committed before its last word, or twice.
            false = [r for r in subset if r["turns"] > 1 or (r["endpoint_ms"] is not None and r["endpoint_ms"] < 0)]
            latencies = [r["latency_ms"] for r in subset if r["latency_ms"] is not None]
            endpoints = [r["endpoint_ms"] for r in subset if r["endpoint_ms"] is not None]
            signals = Counter(str(r["turn_decision"]) for r in subset)
            out.append({
                "set": name, "mode": mode, "n": len(subset),
                "false_endpoints": round(len(false) / len(subset), 3),
                "late_endpoints": round(sum(e > LATE_S * 1000 for e in endpoints) / len(subset), 3),
                "latency_p50_ms": percentile(latencies, 50), "latency_p95_ms": percentile(latencies, 95),
                "endpoint_p50_ms": percentile(endpoints, 50),
                "no_reply": sum(r["latency_ms"] is None for r in subset),
                "decided_by": ", ".join(f"{k} {v}" for k, v in sorted(signals.items())),
            })
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quillman_bench.turns", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_server_arguments(parser, DEFAULT_URL, port=True)
    parser.add_argument("--split", choices=("test", "tune", "both"), default="test")
    parser.add_argument("--voices", default=",".join(map(str, ONLINE_VOICES)),
                        help="comma-separated indexes into the data file's voices")
    parser.add_argument("--json", help="write every row and the summaries here")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    voices = [int(i) for i in args.voices.split(",")]
    utterances = labeled_set(voices, args.split)
    report, summary = _online_run(args, utterances)
    if report is None:
        return 2
    if args.json:
        names = [v["name"] for v in turn_replay.load_set()["voices"]]
        with open(args.json, "w") as f:
            json.dump({"voices": [names[i] for i in voices], "split": args.split, **report}, f, indent=2, default=str)
    print(dict_table(summary) if args.markdown else json.dumps(summary, indent=2))
    return 0


def _online_run(args: argparse.Namespace, utterances: list[Utterance]):
    from quillman_bench.machine import machine_info
    from quillman_bench.server_process import ServerStartError, realtime_server

    try:
        with realtime_server(args.url, args.start, args.config, args.port) as url:
            asyncio.run(_one(url, "server_vad", utterances[0]))  # warm-up, not counted
            rows = asyncio.run(online(url, utterances))
    except ServerStartError as exc:
        print(str(exc), file=sys.stderr)
        return None, None
    summary = online_summary(rows)
    return {"machine": machine_info(), "rows": rows, "summary": summary}, summary


if __name__ == "__main__":
    sys.exit(main())

