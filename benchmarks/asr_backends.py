"""The two ASR backends on the same real Whisper weights and the same clips, on CPU.

  python benchmarks/asr_backends.py [--models tiny.en,base] [--threads 1] [--json out.json] [--markdown]

For each shipped CTranslate2 model: the time to convert it to a transformers folder (fresh, into a
temp folder; the server caches it), then faster-whisper (the CPU profile: int8, encoder window
``fit`` and ``full``) and the transformers backend (the GPU profile's code path, float32 on CPU)
transcribing the ten espeak-ng questions one at a time: median latency, real-time factor and mean
word error rate; and the transformers backend's one-call batch of all ten (``@serve.batch``'s
path). ``--threads`` is faster-whisper's ``cpu_threads`` and torch's thread count alike.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable from a checkout without installing

from quillman.audio import int16_to_float  # noqa: E402
from quillman.config import AsrConfig  # noqa: E402
from quillman.engines.asr.base import ASR_SAMPLE_RATE_HZ  # noqa: E402
from quillman.engines.asr.ct2_convert import convert_ct2_whisper  # noqa: E402
from quillman.engines.asr.faster_whisper import resolve_model_path  # noqa: E402
from quillman.engines.loader import load_recognizer  # noqa: E402
from quillman_bench.report import median  # noqa: E402
from quillman_bench.speech import QUESTIONS, espeak, word_error_rate  # noqa: E402


def _backends(model: str, threads: int, hf_dir: str) -> dict[str, AsrConfig]:
    common = {"language": "en", "cpu_threads": threads}
    return {
        "faster_whisper int8 fit": AsrConfig(model=model, encoder_window="fit", **common),
        "faster_whisper int8 full": AsrConfig(model=model, encoder_window="full", **common),
        "transformers fp32": AsrConfig(backend="transformers", model=hf_dir, device="cpu",
                                       compute_type="float32", **common),
    }


def bench_model(model: str, threads: int, clips: list[np.ndarray]) -> list[dict[str, Any]]:
    audio_s = [len(clip) / ASR_SAMPLE_RATE_HZ for clip in clips]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        convert_ct2_whisper(resolve_model_path(model), tmp)
        convert_s = round(time.perf_counter() - start, 2)
        print(f"{model}: converted in {convert_s} s", file=sys.stderr)
        for name, config in _backends(model, threads, tmp).items():
            engine = load_recognizer(config)
            engine.transcribe(clips[0], "en")  # warm-up
            latencies, errors = [], []
            for question, clip in zip(QUESTIONS, clips):
                start = time.perf_counter()
                text = engine.transcribe(clip, "en").text
                latencies.append((time.perf_counter() - start) * 1000)
                errors.append(word_error_rate(question, text))
            row = {"model": model, "backend": name, "median_ms": median(latencies),
                   "rtf": round(median(latencies) / 1000 / float(np.median(audio_s)), 3),
                   "wer": round(float(np.mean(errors)), 3), "convert_s": convert_s if "transformers" in name else None}
            if "transformers" in name:
                start = time.perf_counter()
                batch = engine.transcribe_batch(clips, "en")
                row["batch_of_10_ms"] = round((time.perf_counter() - start) * 1000, 1)
                row["batch_wer"] = round(float(np.mean(
                    [word_error_rate(q, t.text) for q, t in zip(QUESTIONS, batch)])), 3)
            rows.append(row)
            print(f"  {name}: {row}", file=sys.stderr)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    out = ["| model | backend | median latency per question (ms) | RTF | mean WER | batch of 10 (ms) | conversion (s) |",
           "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['model']} | {r['backend']} | {r['median_ms']} | {r['rtf']} | {r['wer']} | "
                   f"{r.get('batch_of_10_ms') or '-'} | {r['convert_s'] or '-'} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny.en,base")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    import torch
    import transformers  # noqa: F401  imported here, so the conversion time is the conversion's

    torch.set_num_threads(args.threads)
    clips = [int16_to_float(espeak(question, ASR_SAMPLE_RATE_HZ)) for question in QUESTIONS]
    rows = [row for model in args.models.split(",") for row in bench_model(model, args.threads, clips)]
    report = {"date": time.strftime("%Y-%m-%d"), "threads": args.threads, "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print(markdown(rows) if args.markdown else json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
