"""Turn-taking on a labeled set: does the server end turns when people finish, and only then?

The set (:func:`labeled_set`): *complete* questions; *paused* utterances with a 600 ms pause
mid-sentence ("I'd like to book a table for ... four people."); *filler* ones that pause after
"um". Each is spoken by several synthetic voices: espeak-ng voices/variants at other rates and
pitches, and Piper's ``joe`` at other ``length_scale``s.

Two measurements:

* ``--offline`` (no server): the signals alone on the set, at the pause that matters (the end
  of a complete utterance, the mid-sentence pause of the others): Smart Turn alone, Whisper's
  final punctuation alone, and the fusion ``semantic_vad`` uses (quillman.pipeline.semantic).
* online (a running server, or ``--start``): every utterance spoken at live pace in 20 ms
  frames, through ``semantic_vad`` and ``server_vad`` (500 ms) in turn, same run. Per set and
  mode: voice-to-voice latency p50/p95 (complete ones; last speech sample sent -> first reply
  audio), false endpoints (the turn ended before the utterance was finished: committed before
  its last word was sent, or as two turns), late endpoints (a complete utterance whose turn
  ended > 1 s after its last word), and endpoint delay (last word -> ``committed``).

  python -m quillman.loadtest.turns --offline --markdown
  python -m quillman.loadtest.turns --start --markdown --json turns.json
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from quillman.audio import int16_to_float, resample
from quillman.client import DEFAULT_URL, RealtimeClient
from quillman.loadtest.report import percentile
from quillman.loadtest.speech import espeak
from quillman.pipeline.semantic import SIGNALS

RATE_HZ = 24000
PAUSE_S = 0.6
LATE_S = 1.0
COMPLETE = ["What is the capital of France?", "How many legs does a spider have?",
            "Where do penguins live?", "How do I make a cup of tea?", "Thank you very much.",
            "Tell me a joke about cats."]
PAUSED = [("I'd like to book a table for", "four people."), ("What is the capital of", "France?"),
          ("Can you tell me how many legs", "a spider has?"), ("I want to go to the", "beach tomorrow."),
          ("My favorite kind of music is", "jazz."), ("Where do penguins", "live?")]
FILLER = [("What should I cook for dinner, um", "maybe pasta?"), ("I think I want, uh", "a cup of tea.")]
# (label, espeak voice, words per minute, pitch) or (label, "piper", length_scale, None)
VOICES = [("espeak en-us 130wpm", "en-us", 130, 50), ("espeak en-us+f3 165wpm p70", "en-us+f3", 165, 70),
          ("espeak en-gb 115wpm p35", "en-gb", 115, 35), ("espeak en-us+m3 150wpm p25", "en-us+m3", 150, 25),
          ("piper joe ls0.85", "piper", 0.85, None), ("piper joe ls1.25", "piper", 1.25, None)]
ONLINE_VOICES = (0, 2, 4)  # a live run is ~5 s per utterance and mode: three voices, ~7 min
MODES = {"semantic_vad": {"type": "semantic_vad", "eagerness": "auto"},
         "server_vad": {"type": "server_vad", "silence_duration_ms": 500}}


@dataclass
class Utterance:
    set: str  # "complete" | "paused" | "filler"
    text: str
    voice: str
    pcm: np.ndarray  # int16 at RATE_HZ, speech only (no leading / trailing silence)
    pause_at: int | None = None  # paused / filler: first sample of the mid-sentence pause


@functools.lru_cache(maxsize=None)
def _piper(length_scale: float):
    from quillman.engines.tts.piper import PiperSynthesizer

    return PiperSynthesizer("joe", threads=1, length_scale=length_scale)


def _speak(text: str, voice: tuple) -> np.ndarray:
    _, name, rate, pitch = voice
    if name == "piper":
        chunks = list(_piper(rate).synthesize(text))
        pcm = np.concatenate([c.pcm for c in chunks])
        return _trim(resample(pcm, chunks[0].sample_rate_hz, RATE_HZ))
    return _trim(espeak(text, RATE_HZ, words_per_minute=rate, voice=name, pitch=pitch))


def _trim(pcm: np.ndarray, level: int = 300) -> np.ndarray:
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > level)
    return pcm[loud[0]:loud[-1] + 1] if len(loud) else pcm


def labeled_set(voices: list[tuple] = VOICES) -> list[Utterance]:
    out: list[Utterance] = []
    for voice in voices:
        out += [Utterance("complete", text, voice[0], _speak(text, voice)) for text in COMPLETE]
        for name, pairs in (("paused", PAUSED), ("filler", FILLER)):
            for first, second in pairs:
                a, b = _speak(first, voice), _speak(second, voice)
                gap = np.zeros(int(PAUSE_S * RATE_HZ), dtype=np.int16)
                out.append(Utterance(name, f"{first} ... {second}", voice[0], np.concatenate([a, gap, b]), len(a)))
    return out


# --- offline: what each signal says at the pause that matters -----------------------------------

def offline(utterances: list[Utterance], config_path: str) -> dict[str, Any]:
    """Smart Turn, punctuation and the fusion, each alone, on every utterance's decisive pause
    (the server's ASR settings from ``config_path``)."""
    from quillman.doctor import load_app_config
    from quillman.engines.loader import load_recognizer
    from quillman.engines.smart_turn import SmartTurn
    from quillman.pipeline.semantic import fuse

    recognizer = load_recognizer(load_app_config(config_path).asr)
    model = SmartTurn()
    pause = np.zeros(3200, dtype=np.float32)  # the ~200 ms of silence the server has at a pause

    def at_pause(pcm: np.ndarray) -> np.ndarray:
        return np.concatenate([int16_to_float(resample(pcm, RATE_HZ, 16000)), pause])

    rows = []
    for u in utterances:
        # The decisive pauses: the end (complete), and for the others the mid-sentence one.
        # As on the server, the transcript is the segments' (cut at the pause) joined.
        segments = [u.pcm] if u.pause_at is None else [u.pcm[:u.pause_at], u.pcm[u.pause_at:]]
        texts = [recognizer.transcribe(at_pause(seg), "en").text.strip() for seg in segments]
        # Smart Turn hears the speech since the previous pause, as on the server.
        points = [("end", " ".join(texts), segments[-1], True)]
        if u.pause_at is not None:
            points.insert(0, ("mid", texts[0], u.pcm[:u.pause_at], False))
        for point, text, pcm, expected in points:
            probability = model.probability(at_pause(pcm))
            rows.append({"set": u.set, "point": point, "voice": u.voice, "text": u.text, "transcript": text,
                         "smart_turn": round(probability, 3), "expected_complete": expected,
                         **{f"{s}_ok": fuse(text, probability, s).complete == expected for s in SIGNALS}})
    return {"rows": rows, "summary": _offline_summary(rows)}


def _offline_summary(rows: list[dict]) -> list[dict]:
    out = []
    for name, point in (("complete", "end"), ("paused", "mid"), ("paused", "end"), ("filler", "mid"),
                        ("filler", "end")):
        subset = [r for r in rows if r["set"] == name and r["point"] == point]
        if not subset:
            continue
        # at the end: judged incomplete -> waits for the cap (late); mid: judged complete -> false endpoint
        out.append({"set": name, "pause": "mid-sentence" if point == "mid" else "end", "n": len(subset), **{
            f"{s}_wrong": round(sum(not r[f"{s}_ok"] for r in subset) / len(subset), 3)
            for s in SIGNALS}})
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
    for name in ("complete", "paused", "filler"):
        for mode in MODES:
            subset = [r for r in rows if r["set"] == name and r["mode"] == mode]
            if not subset:
                continue
            # The turn ended before the utterance did: committed before its last word, or twice.
            false = [r for r in subset if r["turns"] > 1 or (r["endpoint_ms"] is not None and r["endpoint_ms"] < 0)]
            summary = {"set": name, "mode": mode, "n": len(subset),
                       "false_endpoints": round(len(false) / len(subset), 3)}
            if name == "complete":
                latencies = [r["latency_ms"] for r in subset if r["latency_ms"] is not None]
                endpoints = [r["endpoint_ms"] for r in subset if r["endpoint_ms"] is not None]
                summary.update({
                    "latency_p50_ms": percentile(latencies, 50), "latency_p95_ms": percentile(latencies, 95),
                    "endpoint_p50_ms": percentile(endpoints, 50),
                    "late_endpoints": round(sum(e > LATE_S * 1000 for e in endpoints) / len(subset), 3),
                    "no_reply": sum(r["latency_ms"] is None for r in subset)})
            signals: dict[str, int] = {}
            for r in subset:
                signals[str(r["turn_decision"])] = signals.get(str(r["turn_decision"]), 0) + 1
            summary["decided_by"] = ", ".join(f"{k} {v}" for k, v in sorted(signals.items()))
            out.append(summary)
    return out


def markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join("" if r.get(k) is None else str(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quillman.loadtest.turns", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--start", action="store_true", help="run `serve run --config` for the measurement")
    parser.add_argument("--config", default="serve_config.yaml")
    parser.add_argument("--port", type=int, default=None, help="with --start: serve on this port")
    parser.add_argument("--offline", action="store_true", help="the signals alone, no server")
    parser.add_argument("--voices", default=None,
                        help="comma-separated indexes into VOICES (default: all offline, 0,2,4 online)")
    parser.add_argument("--json", help="write every row and the summaries here")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    picked = ([int(i) for i in args.voices.split(",")] if args.voices
              else range(len(VOICES)) if args.offline else ONLINE_VOICES)
    voices = [VOICES[i] for i in picked]
    utterances = labeled_set(voices)
    if args.offline:
        report = offline(utterances, args.config)
        summary = report["summary"]
    else:
        report, summary = _online_run(args, utterances)
        if report is None:
            return 2
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"voices": [v[0] for v in voices], **report}, f, indent=2, default=str)
    print(markdown_table(summary) if args.markdown else json.dumps(summary, indent=2))
    return 0


def _online_run(args: argparse.Namespace, utterances: list[Utterance]):
    from quillman.loadtest.machine import machine_info
    from quillman.server_process import ServeProcess, ServerStartError

    server, url = None, args.url
    if args.start:
        server = ServeProcess(args.config, port=args.port)
        try:
            url = server.start().replace("http://", "ws://") + "/v1/realtime"
        except ServerStartError as exc:
            print(str(exc), file=sys.stderr)
            return None, None
    try:
        asyncio.run(_one(url, "server_vad", utterances[0]))  # warm-up, not counted
        rows = asyncio.run(online(url, utterances))
    finally:
        if server is not None:
            server.stop()
    summary = online_summary(rows)
    return {"machine": machine_info(), "rows": rows, "summary": summary}, summary


if __name__ == "__main__":
    sys.exit(main())

