"""``quillman bench asr``: word error rate of the ASR per input format, Whisper model and window.

No server: each synthesized utterance is sent the way a client sends it (24 kHz pcm16, or 8 kHz
G.711 μ-law / A-law as a phone call arrives: resampled to 8 kHz and encoded in 20 ms frames) and
goes through the session's own input path, frame by frame: ``decode_audio_base64`` -> RNNoise
(``--noise-reduction on``) -> the turn tracker (resampling to 16 kHz, Silero VAD, segments cut
at pauses and at ``max_segment_s``) -> the recognizer on each segment -> the segments' texts
joined, as the session joins them. ``--segmentation whole`` transcribes the decoded clip in one
piece instead (no VAD), to tell segmentation errors from recognition errors.

The corpus: short questions and 15-25-word sentences, each spoken by several voices (espeak-ng
voices and variants, and Piper). Reported per input condition (format, noise reduction, added
noise) and ASR setting (model, encoder window, beam size): corpus WER (word errors / reference
words, so long sentences weigh by their words), split short / long, the ratio to pcm16 with the
same ASR setting, and per-utterance ASR latency (all segments; and the last one, which a reply
waits for). The machine is shared: compare latencies as ratios within one run (``ms ratio``:
median over utterances of this setting's time over the first setting's on the same audio).

  quillman bench asr --models tiny.en,base --windows fit,full --formats pcm16,pcmu,pcma \\
      --noise-reduction off,on --json out.json --markdown
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from quillman.audio import (G711_RATE_HZ, PCM16, PCMA, PCMU, decode_audio_base64, encode_audio_base64,
                            int16_to_float, resample)
from quillman.config import AsrConfig, VadConfig
from quillman.engines.asr.base import ASR_SAMPLE_RATE_HZ
from quillman_bench.speech import QUESTIONS, _words, speak, with_silence

RATE_HZ = 24000  # what the utterances are synthesized at (the session's default pcm16 rate)
FRAME_MS = 20

FORMATS = {"pcm16": PCM16, "pcmu": PCMU, "pcma": PCMA}

SHORT = [*QUESTIONS,
         "Who wrote the play Romeo and Juliet?",
         "Is it going to rain tomorrow morning?",
         "Can you turn off the kitchen lights?",
         "How far away is the moon?",
         "What time does the pharmacy close today?"]

# 15-25 words each; no numerals (Whisper writes digits, the reference would not).
LONG = [
    "I would like to book a table for dinner on Friday evening, preferably somewhere quiet near the window.",
    "My train was delayed by almost an hour this morning, so I missed the first part of the meeting with our new client.",
    "Could you remind me to call my sister on Sunday afternoon and ask her about the plans for the birthday party?",
    "The weather has been cold and windy all week, and I am thinking about buying a warmer coat for the winter.",
    "Please explain in simple words how a refrigerator keeps the food cold without making the whole kitchen warmer.",
    "We are planning a short trip to the mountains next month and need a list of things we should pack.",
    "I forgot the password for my email account, and the message to reset it never arrived in my inbox.",
    "Tell me a short story about a little dog who finds his way home after getting lost in the big city.",
    "Our kitchen sink has been leaking since yesterday, and I would like to know whether I can fix it myself.",
    "What is the best way to learn a new language when you only have a few minutes of free time each day?",
    "My doctor told me to walk more, so I started going around the park every morning before breakfast.",
    "Can you recommend a good book for a long flight, something exciting but not too difficult to follow?",
    "The package I ordered last Tuesday still has not arrived, and the tracking page shows no new updates at all.",
    "I need to cancel my appointment on Thursday because my car is in the garage until the end of the week.",
    "Explain why the leaves of many trees turn red and yellow in the autumn before they finally fall to the ground.",
]

# Several voices: espeak-ng's American and British voices with male and female variants at
# different rates, and the Piper voice the server speaks with (a natural, neural voice).
VOICES = ["espeak:en-us@130", "espeak:en-us+f3@150", "espeak:en-gb-x-rp+m3@140", "piper:joe"]


# --- corpus ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Utterance:
    id: str
    text: str
    voice: str
    length: str  # "short" | "long"
    pcm: np.ndarray = field(repr=False, compare=False)  # int16 at RATE_HZ, with silence before

    @property
    def words(self) -> int:
        return len(_words(self.text).split())


def build_corpus(voices: Sequence[str], short: Sequence[str] = SHORT, long: Sequence[str] = LONG,
                 synthesize: Callable[[str, str, int], np.ndarray] = speak) -> list[Utterance]:
    """Every text in every voice (short questions, then long sentences), 0.3 s of silence first."""
    corpus = []
    for voice in voices:
        for length, texts in (("short", short), ("long", long)):
            for i, text in enumerate(texts):
                pcm = with_silence(synthesize(text, voice, RATE_HZ), RATE_HZ, before_s=0.3)
                corpus.append(Utterance(f"{voice}/{length}{i:02d}", text, voice, length, pcm))
    return corpus


# --- input conditions: how the audio reaches the recognizer ------------------------------------------

@dataclass(frozen=True)
class Condition:
    format: str = "pcm16"  # a key of FORMATS
    noise_reduction: bool = False
    snr_db: float | None = None  # pink noise mixed in before encoding (room / line noise)

    @property
    def name(self) -> str:
        parts = [self.format]
        if self.snr_db is not None:
            parts.append(f"noise {self.snr_db:g} dB")
        if self.noise_reduction:
            parts.append("RNNoise")
        return " + ".join(parts)

    @property
    def rate_hz(self) -> int:
        return RATE_HZ if self.format == "pcm16" else G711_RATE_HZ


def wire_frames(pcm: np.ndarray, fmt: str, frame_ms: int = FRAME_MS) -> list[str]:
    """int16 speech at RATE_HZ -> the base64 frames a client sends in ``fmt``: pcm16 as is,
    G.711 resampled to 8 kHz (soxr, as ``RealtimeClient`` and the Twilio caller do) and encoded."""
    wire = FORMATS[fmt]
    rate = RATE_HZ if wire == PCM16 else G711_RATE_HZ
    pcm = resample(np.asarray(pcm, dtype=np.int16), RATE_HZ, rate)
    step = rate * frame_ms // 1000
    return [encode_audio_base64(pcm[i:i + step], wire) for i in range(0, len(pcm), step)]


def prepare(utterance: Utterance, condition: Condition, tail_s: float = 1.0) -> np.ndarray:
    """The utterance as the microphone / line gives it: speech, ``tail_s`` of silence after it
    (a live mic stays open; the VAD needs it to end the turn), noise over all of it if asked."""
    pcm = with_silence(utterance.pcm, RATE_HZ, before_s=0.0, after_s=tail_s)
    if condition.snr_db is not None:
        from quillman_bench.telephony import mix_at_snr

        pcm = mix_at_snr(pcm, condition.snr_db, seed=zlib.crc32(utterance.id.encode()))
    return pcm


async def session_segments(pcm: np.ndarray, condition: Condition, vad: VadConfig | None = None,
                           make_vad: Callable | None = None) -> list[np.ndarray]:
    """The 16 kHz float32 segments a session would send to ASR for this audio (int16 at RATE_HZ):
    through the wire encoding, ``decode_audio_base64``, RNNoise if asked, and the session's
    ``TurnTracker`` (its resampler, the VAD and the pause / max-segment cuts)."""
    from quillman.pipeline.turns import SegmentCut, TurnCommitted, TurnTracker

    if make_vad is None:
        from quillman.engines.vad import SileroVad as make_vad
    vad = vad or VadConfig(type="server_vad")
    wire = FORMATS[condition.format]
    tracker = TurnTracker(make_vad, vad, condition.rate_hz, max_turn_s=120)
    denoiser = None
    if condition.noise_reduction:
        from quillman.engines.noise import NoiseSuppressor

        denoiser = NoiseSuppressor(condition.rate_hz)
    segments: list[np.ndarray] = []
    for frame in wire_frames(pcm, condition.format):
        pcm16 = decode_audio_base64(frame, wire)
        if denoiser is not None:
            pcm16 = denoiser.process(pcm16)
        for event in await tracker.append(pcm16, time.perf_counter()):
            if isinstance(event, SegmentCut):
                segments.extend(event.pcm)
            elif isinstance(event, TurnCommitted):
                segments.extend(event.tail)
    if tracker.turn is not None:  # speech to the very end: the client's commit ends the turn
        segments.extend(tracker.commit().tail)
    if denoiser is not None:
        denoiser.close()
    return [s for s in segments if len(s)]


def whole_clip(pcm: np.ndarray, condition: Condition) -> list[np.ndarray]:
    """The decoded clip in one 16 kHz piece (no VAD): the same wire encoding and decoding."""
    wire = FORMATS[condition.format]
    decoded = np.concatenate([decode_audio_base64(f, wire) for f in wire_frames(pcm, condition.format)])
    if condition.noise_reduction:
        from quillman.engines.noise import NoiseSuppressor

        denoiser = NoiseSuppressor(condition.rate_hz)
        decoded = denoiser.process(decoded)
        denoiser.close()
    return [resample(int16_to_float(decoded), condition.rate_hz, ASR_SAMPLE_RATE_HZ)]


# --- ASR settings and scoring ----------------------------------------------------------------------

@dataclass(frozen=True)
class AsrSetting:
    model: str = "tiny.en"
    window: str = "fit"
    beam_size: int = 1
    narrowband: "AsrSetting | None" = None  # what 8 kHz audio gets instead (asr.narrowband_*)

    @property
    def name(self) -> str:
        name = f"{self.model} {self.window}" + (f" beam {self.beam_size}" if self.beam_size > 1 else "")
        return name + (f"; 8 kHz: {self.narrowband.name}" if self.narrowband else "")

    def config(self, threads: int) -> AsrConfig:
        narrowband = {}
        if self.narrowband is not None:
            narrowband = {"narrowband_model": self.narrowband.model, "narrowband_beam_size": self.narrowband.beam_size,
                          "narrowband_encoder_window": self.narrowband.window}
        return AsrConfig(model=self.model, encoder_window=self.window, beam_size=self.beam_size,
                         cpu_threads=threads, language="en", **narrowband)

    @classmethod
    def parse(cls, spec: str) -> "AsrSetting":
        """``model:window[:beam]``, optionally ``+model:window[:beam]`` for 8 kHz audio."""
        wide, _, narrow = spec.partition("+")
        model, _, rest = wide.partition(":")
        window, _, beam = rest.partition(":")
        if not model or window not in ("fit", "full") or not (beam or "1").isdigit():
            raise argparse.ArgumentTypeError(f"--asr {spec!r}: want model:fit|full[:beam][+model:fit|full[:beam]]")
        return cls(model, window, int(beam or 1), cls.parse(narrow) if narrow else None)


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(word errors, reference words) after the WER normalization: the parts of a corpus WER."""
    import jiwer

    ref, hyp = _words(reference), _words(hypothesis)
    if not ref:
        return len(hyp.split()), 0
    if not hyp:
        return len(ref.split()), len(ref.split())
    out = jiwer.process_words(ref, hyp)
    return out.substitutions + out.deletions + out.insertions, len(ref.split())


@dataclass
class Record:
    utterance: str
    voice: str
    length: str
    condition: str
    asr: str
    format: str
    noise_reduction: bool
    snr_db: float | None
    reference: str
    hypothesis: str
    errors: int
    words: int
    segments: int
    audio_s: float
    asr_ms: float  # all segments of the utterance
    last_ms: float  # the last segment (the one a reply waits for)

    @property
    def wer(self) -> float:
        return self.errors / self.words if self.words else float(self.errors > 0)


def corpus_wer(records: Iterable[Record]) -> float | None:
    records = list(records)
    words = sum(r.words for r in records)
    return round(sum(r.errors for r in records) / words, 3) if words else None


def transcribe_segments(engine, segments: list[np.ndarray]) -> tuple[str, list[float]]:
    texts, times = [], []
    for segment in segments:
        start = time.perf_counter()
        text = engine.transcribe(segment, "en").text
        times.append((time.perf_counter() - start) * 1000)
        texts.append(text.strip())
    return " ".join(t for t in texts if t).strip(), times


def run_bench(corpus: Sequence[Utterance], conditions: Sequence[Condition], settings: Sequence[AsrSetting],
              engines: dict[AsrSetting, Any], segmentation: str = "session", vad: VadConfig | None = None,
              progress: Callable[[int, int], None] | None = None) -> list[Record]:
    """Every utterance under every condition through every ASR setting. Utterance-major, so the
    settings compared take turns on the machine (drift of a shared machine's load hits all)."""
    records: list[Record] = []
    total, done = len(corpus) * len(conditions), 0
    for utterance in corpus:
        for condition in conditions:
            pcm = prepare(utterance, condition)
            segments = (asyncio.run(session_segments(pcm, condition, vad)) if segmentation == "session"
                        else whole_clip(pcm, condition))
            audio_s = sum(len(s) for s in segments) / ASR_SAMPLE_RATE_HZ
            for setting in settings:
                text, times = transcribe_segments(engines[setting], segments)
                errors, words = word_errors(utterance.text, text)
                records.append(Record(utterance.id, utterance.voice, utterance.length, condition.name,
                                      setting.name, condition.format, condition.noise_reduction,
                                      condition.snr_db, utterance.text, text, errors, words, len(segments),
                                      round(audio_s, 2), round(sum(times), 1),
                                      round(times[-1], 1) if times else 0.0))
            done += 1
            if progress:
                progress(done, total)
    return records


# --- summaries -------------------------------------------------------------------------------------

def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def summarize(records: Sequence[Record]) -> list[dict[str, Any]]:
    """One row per (condition, ASR setting), in the order they first appear: corpus WER overall
    and per length, its ratio to pcm16 with the same noise, noise reduction and ASR setting,
    latencies, and the per-utterance latency ratio to the first setting on the same audio."""
    groups: dict[tuple[str, str], list[Record]] = {}
    names: dict[tuple[bool, float | None], str] = {}
    for r in records:
        groups.setdefault((r.condition, r.asr), []).append(r)
        if r.format == "pcm16":
            names[(r.noise_reduction, r.snr_db)] = r.condition
    first_asr = records[0].asr if records else None
    by_key = {(r.utterance, r.condition, r.asr): r for r in records}
    rows = []
    for (condition, asr), group in groups.items():
        wer = corpus_wer(group)
        pcm16 = names.get((group[0].noise_reduction, group[0].snr_db))
        base = groups.get((pcm16, asr)) if pcm16 else None
        base_wer = corpus_wer(base) if base else None
        ratios = [r.asr_ms / ref.asr_ms for r in group
                  if (ref := by_key.get((r.utterance, r.condition, first_asr))) and ref.asr_ms > 0]
        rows.append({
            "condition": condition, "asr": asr, "utterances": len(group), "words": sum(r.words for r in group),
            "wer": wer,
            "wer_short": corpus_wer(r for r in group if r.length == "short"),
            "wer_long": corpus_wer(r for r in group if r.length == "long"),
            "wer_vs_pcm16": round(wer / base_wer, 2) if wer is not None and base_wer else None,
            "segments_mean": round(statistics.mean(r.segments for r in group), 2),
            "asr_ms_p50": _median([r.asr_ms for r in group]),
            "last_ms_p50": _median([r.last_ms for r in group]),
            "last_ms_p90": round(float(np.percentile([r.last_ms for r in group], 90)), 1),
            "last_ms_p50_short": _median([r.last_ms for r in group if r.length == "short"]),
            "last_ms_p50_long": _median([r.last_ms for r in group if r.length == "long"]),
            "ms_ratio": round(statistics.median(ratios), 2) if ratios else None,
        })
    return rows


def per_voice(records: Sequence[Record]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str, str], list[Record]] = {}
    for r in records:
        groups.setdefault((r.voice, r.condition, r.asr), []).append(r)
    return [{"voice": v, "condition": c, "asr": a, "wer": corpus_wer(g)} for (v, c, a), g in groups.items()]


def _cell(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) and value < 1 else str(value)


def markdown(report: dict[str, Any]) -> str:
    rows = report["summary"]
    lines = ["| input | ASR | WER | short | long | WER / pcm16 | segments | ASR ms p50 (last seg.) "
             "| last seg. p50 short / long | ms ratio |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['condition']} | {r['asr']} | {_cell(r['wer'])} | {_cell(r['wer_short'])} | "
                     f"{_cell(r['wer_long'])} | {_cell(r['wer_vs_pcm16'])} | {r['segments_mean']} | "
                     f"{r['asr_ms_p50']} ({r['last_ms_p50']}) | {r['last_ms_p50_short']} / "
                     f"{r['last_ms_p50_long']} | {_cell(r['ms_ratio'])} |")
    voices = report.get("per_voice") or []
    if voices:
        conditions = list(dict.fromkeys(v["condition"] for v in voices))
        asrs = list(dict.fromkeys(v["asr"] for v in voices))
        table = {(v["voice"], v["condition"], v["asr"]): v["wer"] for v in voices}
        lines += ["", "| voice | " + " | ".join(f"{c}, {a}" for c in conditions for a in asrs) + " |",
                  "|---|" + "---:|" * (len(conditions) * len(asrs))]
        for voice in dict.fromkeys(v["voice"] for v in voices):
            lines.append(f"| {voice} | " + " | ".join(_cell(table.get((voice, c, a)))
                                                      for c in conditions for a in asrs) + " |")
    return "\n".join(lines)


# --- command ---------------------------------------------------------------------------------------

def _list(text: str) -> list[str]:
    return [part.strip() for part in str(text).split(",") if part.strip()]


def conditions_from(formats: Sequence[str], noise_reduction: Sequence[str], snr: Sequence[str]) -> list[Condition]:
    for fmt in formats:
        if fmt not in FORMATS:
            raise argparse.ArgumentTypeError(f"--formats: {fmt!r} is not one of {', '.join(FORMATS)}")
    reductions = [{"off": False, "on": True}[v] for v in noise_reduction]
    levels = [None if v == "none" else float(v) for v in snr]
    return [Condition(fmt, nr, level) for level in levels for nr in reductions for fmt in formats]


def settings_from(models: Sequence[str], windows: Sequence[str], beams: Sequence[str],
                  explicit: Sequence[str] = ()) -> list[AsrSetting]:
    """The grid models x windows x beams, or the ``explicit`` settings (``AsrSetting.parse``)."""
    if explicit:
        return [AsrSetting.parse(spec) for spec in explicit]
    return [AsrSetting(m, w, int(b)) for m in models for w in windows for b in beams]


def build_parser(prog: str = "quillman bench asr") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=_list, default=["tiny.en"], help="Whisper models, e.g. tiny.en,base")
    parser.add_argument("--windows", type=_list, default=["fit", "full"], help="encoder windows: fit,full")
    parser.add_argument("--beams", type=_list, default=["1"], help="beam sizes, e.g. 1,5")
    parser.add_argument("--asr", type=_list, default=[],
                        help="instead of the grid: settings model:window[:beam], and +model:window[:beam] for what "
                             "8 kHz audio gets (asr.narrowband_*), e.g. tiny.en:fit,tiny.en:fit:5+base:fit:5")
    parser.add_argument("--formats", type=_list, default=["pcm16", "pcmu", "pcma"],
                        help="input formats: pcm16 (24 kHz), pcmu, pcma (8 kHz G.711)")
    parser.add_argument("--noise-reduction", type=_list, default=["off"], help="off,on (RNNoise)")
    parser.add_argument("--snr-db", type=_list, default=["none"],
                        help="pink noise mixed in at these SNRs, e.g. none,10")
    parser.add_argument("--voices", type=_list, default=VOICES,
                        help="espeak:<voice>[@wpm] or piper:<model>[@length_scale], comma separated")
    parser.add_argument("--lengths", type=_list, default=["short", "long"], help="short,long")
    parser.add_argument("--limit", type=int, default=None, help="at most this many texts of each length")
    parser.add_argument("--segmentation", choices=["session", "whole"], default="session",
                        help="session: the session's VAD segments; whole: the clip in one piece")
    parser.add_argument("--threads", type=int, default=1, help="the recognizer's cpu_threads")
    parser.add_argument("--json", help="write the report (summary, per voice, every utterance) here")
    parser.add_argument("--markdown", action="store_true", help="print markdown tables")
    parser.add_argument("--quiet", action="store_true", help="no progress")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from quillman.engines.loader import load_recognizer

    conditions = conditions_from(args.formats, args.noise_reduction, args.snr_db)
    settings = settings_from(args.models, args.windows, args.beams, args.asr)
    short = SHORT[:args.limit] if "short" in args.lengths else []
    long = LONG[:args.limit] if "long" in args.lengths else []
    started = time.perf_counter()
    corpus = build_corpus(args.voices, short, long)
    print(f"{len(corpus)} utterances ({len(args.voices)} voices, {len(short)} short + {len(long)} long texts) "
          f"synthesized in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    engines = {s: load_recognizer(s.config(args.threads)) for s in settings}
    for engine in engines.values():  # warm-up: first calls allocate
        engine.transcribe(np.zeros(ASR_SAMPLE_RATE_HZ, dtype=np.float32), "en")

    def progress(done: int, total: int) -> None:
        if not args.quiet:
            sys.stderr.write(f"\r{done}/{total} utterance x input {time.perf_counter() - started:5.0f} s")
            sys.stderr.flush()

    records = run_bench(corpus, conditions, settings, engines, args.segmentation, progress=progress)
    if not args.quiet:
        sys.stderr.write("\n")
    report = {
        "settings": {"asr": [s.name for s in settings],
                     "conditions": [c.name for c in conditions], "voices": args.voices,
                     "texts": {"short": len(short), "long": len(long)}, "utterances": len(corpus),
                     "segmentation": args.segmentation, "threads": args.threads,
                     "vad": VadConfig(type="server_vad").model_dump()},
        "summary": summarize(records),
        "per_voice": per_voice(records),
        "records": [asdict(r) for r in records],
    }
    for row in report["summary"]:
        print(f"{row['condition']:>24} | {row['asr']:<20} WER {row['wer']} (short {row['wer_short']}, "
              f"long {row['wer_long']}) x{row['wer_vs_pcm16']} vs pcm16; last segment p50 "
              f"{row['last_ms_p50']} ms, ratio {row['ms_ratio']}", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    if args.markdown:
        print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
