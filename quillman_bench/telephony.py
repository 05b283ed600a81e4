"""Phone-audio measurements: ``python -m quillman_bench.telephony [--start] [--json out.json]``.

1. pcmu vs pcm16: the same spoken questions over /v1/realtime in 24 kHz pcm16 and in 8 kHz
   μ-law (what a phone call carries), at live pace; per format the transcript's word error rate
   and the voice-to-voice latency (client: last speech sample sent -> first reply audio).
2. Noise: speech mixed with pink noise at 10 dB SNR through transcription sessions, without and
   with ``noise_reduction`` (RNNoise): WER; and noise alone (no speech) at the same level: how
   many turns the VAD starts (false triggers).

Numbers go in docs/telephony.md; the machine is shared, so latencies are indicative.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
from typing import Any

import numpy as np

from quillman.audio import PCM16, PCMU
from quillman.client import DEFAULT_URL, RealtimeClient, transcribe_stream, transcription_session
from quillman_bench.server_process import add_server_arguments, realtime_server
from quillman_bench.speech import QUESTIONS, spoken_question, word_error_rate

RATE_HZ = 24000


def pink_noise(samples: int, seed: int = 0) -> np.ndarray:
    """Pink (1/f) noise, float, unit RMS: a stand-in for room / line noise."""
    rng = np.random.default_rng(seed)
    spectrum = np.fft.rfft(rng.normal(size=samples))
    freqs = np.fft.rfftfreq(samples)
    spectrum[1:] /= np.sqrt(freqs[1:])
    spectrum[0] = 0
    noise = np.fft.irfft(spectrum, n=samples)
    return noise / np.sqrt(np.mean(noise ** 2))


def mix_at_snr(speech: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    """Speech plus noise whose power is ``snr_db`` below the speech's (measured where it speaks)."""
    pcm = speech.astype(np.float64)
    voiced = pcm[np.abs(pcm) > 0.05 * np.abs(pcm).max()]
    speech_rms = np.sqrt(np.mean(voiced ** 2))
    noise = pink_noise(len(pcm), seed) * speech_rms / (10 ** (snr_db / 20))
    return np.clip(pcm + noise, -32768, 32767).astype(np.int16)


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


async def compare_formats(url: str, questions: list[str]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for fmt in (PCM16, PCMU):
        rows = []
        for question in questions:
            async with RealtimeClient(url, audio_format=fmt) as client:
                turn = await client.talk(spoken_question(question), RATE_HZ)
            rows.append({"question": question, "transcript": turn.user_transcript, "status": turn.status,
                         "wer": word_error_rate(question, turn.user_transcript or ""),
                         "latency_ms": turn.latency_ms, "first_audio_ms": turn.timings.get("first_audio_ms")})
        results[fmt] = {
            "turns": rows,
            "wer": round(statistics.mean(r["wer"] for r in rows), 3),
            "latency_ms_p50": _median([r["latency_ms"] for r in rows if r["latency_ms"] is not None]),
            "first_audio_ms_p50": _median([r["first_audio_ms"] for r in rows if r["first_audio_ms"] is not None]),
        }
        print(f"{fmt}: WER {results[fmt]['wer']:.3f}, voice-to-voice p50 {results[fmt]['latency_ms_p50']} ms",
              file=sys.stderr)
    return results


async def _transcribe(url: str, pcm: np.ndarray, reduction: str | None) -> tuple[str, int]:
    client = RealtimeClient(url)
    await client.connect(transcription_session(PCM16, RATE_HZ, "en", reduction))
    try:
        turns = await transcribe_stream(client, pcm, RATE_HZ)  # at live pace, as a caller speaks
    finally:
        await client.close()
    return " ".join(t.transcript or "" for t in turns).strip(), len(turns)


async def noise_figures(url: str, questions: list[str], snr_db: float, noise_s: float) -> dict[str, Any]:
    results: dict[str, Any] = {}
    level = np.sqrt(np.mean(spoken_question(questions[0]).astype(float) ** 2))
    for reduction in (None, "near_field"):
        name = reduction or "off"
        wers, rows = [], []
        for i, question in enumerate(questions):
            noisy = mix_at_snr(spoken_question(question), snr_db, seed=i)
            text, _ = await _transcribe(url, noisy, reduction)
            wers.append(word_error_rate(question, text))
            rows.append({"question": question, "transcript": text, "wer": wers[-1]})
        # Noise alone, as loud as in the mixes: every turn the VAD starts is a false trigger.
        noise = (pink_noise(int(noise_s * RATE_HZ), seed=99) * level / (10 ** (snr_db / 20))).astype(np.int16)
        _, false_turns = await _transcribe(url, noise, reduction)
        results[name] = {"wer": round(statistics.mean(wers), 3), "false_turns": false_turns,
                         "noise_s": noise_s, "turns": rows}
        print(f"noise reduction {name}: WER {results[name]['wer']:.3f} at {snr_db:g} dB SNR, "
              f"{false_turns} false turns in {noise_s:g} s of noise", file=sys.stderr)
    return results


def markdown(report: dict[str, Any]) -> str:
    lines = ["| format | transcript WER | voice-to-voice p50 (client) | first audio p50 (server) |",
             "| --- | --- | --- | --- |"]
    for fmt, row in report.get("formats", {}).items():
        lines.append(f"| {fmt} | {row['wer']:.3f} | {row['latency_ms_p50']} ms | {row['first_audio_ms_p50']} ms |")
    if "noise" not in report:
        return "\n".join(lines)
    lines += ["", f"| noise_reduction | WER at {report['snr_db']:g} dB SNR | false turns in "
              f"{report['noise']['off']['noise_s']:g} s of noise |", "| --- | --- | --- |"]
    for name, row in report["noise"].items():
        lines.append(f"| {name} | {row['wer']:.3f} | {row['false_turns']} |")
    return "\n".join(lines)


async def measure(url: str, args: argparse.Namespace, previous: dict[str, Any]) -> dict[str, Any]:
    questions = QUESTIONS[:args.questions]
    report = {**previous, "questions": questions, "snr_db": args.snr_db}
    if args.only in (None, "formats"):
        report["formats"] = await compare_formats(url, questions)
    if args.only in (None, "noise"):
        report["noise"] = await noise_figures(url, questions, args.snr_db, args.noise_s)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quillman_bench.telephony", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_server_arguments(parser, DEFAULT_URL)
    parser.add_argument("--questions", type=int, default=len(QUESTIONS))
    parser.add_argument("--snr-db", type=float, default=10.0)
    parser.add_argument("--noise-s", type=float, default=20.0)
    parser.add_argument("--json", help="write the report here (with --only: update that part of it)")
    parser.add_argument("--only", choices=["formats", "noise"], default=None, help="measure one part")
    args = parser.parse_args(argv)
    previous: dict[str, Any] = {}
    if args.only and args.json and os.path.exists(args.json):
        with open(args.json) as f:
            previous = json.load(f)
    with realtime_server(args.url, args.start, args.config) as url:
        report = asyncio.run(measure(url, args, previous))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
