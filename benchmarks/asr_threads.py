"""faster-whisper's ``cpu_threads``: 1 vs 2 on the server's ASR settings, the same clips.

  python benchmarks/asr_threads.py [--models tiny.en,base] [--threads 1,2] [--repeats 7] [--markdown]

Each of the ten espeak-ng questions (and a 7 s sentence) is transcribed with each thread count,
alternating which goes first (so a noisy neighbour hits both alike); the cell is the median over
the clips' medians. Beam size and encoder window are serve_config.yaml's (``AsrConfig`` defaults
otherwise). Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable from a checkout without installing

from quillman.audio import int16_to_float  # noqa: E402
from quillman.doctor import load_app_config  # noqa: E402
from quillman.engines.asr.base import ASR_SAMPLE_RATE_HZ  # noqa: E402
from quillman.engines.loader import load_recognizer  # noqa: E402
from quillman_bench.report import median  # noqa: E402
from quillman_bench.speech import QUESTIONS, espeak  # noqa: E402

LONG = "I would like to know how far away the sun is from the earth, and how long its light takes to reach us."


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "serve_config.yaml"))
    parser.add_argument("--models", default="tiny.en,base")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    asr = load_app_config(args.config).asr
    clips = {text: int16_to_float(espeak(text, ASR_SAMPLE_RATE_HZ)) for text in [*QUESTIONS, LONG]}
    threads = [int(t) for t in args.threads.split(",")]
    rows = []
    for model in args.models.split(","):
        recognizers = {n: load_recognizer(asr.model_copy(update={"model": model, "cpu_threads": n}))
                       for n in threads}
        for label, texts in (("questions (1-3 s)", QUESTIONS), ("7 s sentence", [LONG])):
            per_threads: dict[int, list[float]] = {n: [] for n in threads}
            for i, text in enumerate(texts):
                pcm = clips[text]
                order = threads if i % 2 == 0 else threads[::-1]
                for n in order:
                    recognizers[n].transcribe(pcm)  # warm
                times: dict[int, list[float]] = {n: [] for n in threads}
                for r in range(args.repeats):
                    for n in (order if r % 2 == 0 else order[::-1]):
                        times[n].append(recognizers[n].transcribe(pcm).inference_ms)
                for n in threads:
                    per_threads[n].append(median(times[n]))
            rows.append({"model": model, "clips": label, "beam_size": asr.beam_size,
                         **{f"{n}_thread_ms": round(median(per_threads[n]), 1) for n in threads}})
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    if args.markdown:
        cols = [f"{n}_thread_ms" for n in threads]
        print("| model | clips | beam | " + " | ".join(f"{n} thread(s) ms" for n in threads) + " |")
        print("|---|---|---|" + "---|" * len(cols))
        for row in rows:
            print(f"| {row['model']} | {row['clips']} | {row['beam_size']} | " + " | ".join(str(row[c]) for c in cols) + " |")
    else:
        print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
