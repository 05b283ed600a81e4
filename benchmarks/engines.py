"""Engine micro-benchmarks: each engine called plainly in this process vs the same engine behind
its Ray Serve deployment through a DeploymentHandle, same inputs, same run.

  python benchmarks/engines.py [--config serve_config.yaml] [--repeats 5] [--json out.json] [--markdown]

Measured, each as the median over ``--repeats`` (the two sides alternate which goes first, so a
noisy neighbour hurts both alike; medians and p95 by ``quillman_bench.report.percentile``):
- ASR: latency and real-time factor (latency / audio length) per segment length;
- LLM: time to first token and tokens/s of the streamed reply (temperature 0: same tokens both sides);
- TTS: time to first chunk and real-time factor (synthesis time / audio length) per sentence;
- handle round trip: a no-op method (``ping``) through the handle, the fixed cost of one call.
The ratio Ray / plain is the serving overhead. The deployments run in a private local Ray
instance (``ray.init(address="local")``, no HTTP proxy, no dashboard), one replica each, with the
engine settings of the Serve config's ``args:``; the handles are called from this driver, as the
Ingress replica calls them in the server. Runs in about 1-2 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable from a checkout without installing

from quillman.audio import int16_to_float  # noqa: E402
from quillman.config import AppConfig  # noqa: E402
from quillman.engines.asr.base import ASR_SAMPLE_RATE_HZ  # noqa: E402
from quillman.engines.llm.base import GenerationParams, GenerationRequest, Usage  # noqa: E402
from quillman.scheduling import QueueWait  # noqa: E402
from quillman_bench.report import median, percentile, table  # noqa: E402
from quillman_bench.speech import QUESTIONS, espeak  # noqa: E402

SEGMENT_LENGTHS_S = (1.0, 2.0, 4.0, 8.0)
LLM_PROMPTS = QUESTIONS[:4]
TTS_TEXTS = (
    "Sure, here is the idea.",  # a first clause, as the pipeline cuts it
    "Paris is the capital of France.",
    "The sky looks blue on a clear day because air scatters blue light more than red light.",
)
LLM_MAX_TOKENS = 48


def ratio(ray_value: float | None, plain_value: float | None) -> float | None:
    if ray_value is None or not plain_value:
        return None
    return round(ray_value / plain_value, 3)


def with_ray_cost(row: dict[str, Any], latency: str, rate: str) -> dict[str, Any]:
    """``row`` with what Ray adds to its ``latency`` (``plain_<latency>_ms`` vs ``ray_<latency>_ms``):
    ``<latency>_overhead_ms`` and ``<latency>_ratio``; and ``<rate>_ratio`` (``ray_<rate>`` / ``plain_<rate>``)."""
    plain_ms, ray_ms = row[f"plain_{latency}_ms"], row[f"ray_{latency}_ms"]
    row[f"{latency}_overhead_ms"] = round(ray_ms - plain_ms, 1)
    row[f"{latency}_ratio"] = ratio(ray_ms, plain_ms)
    row[f"{rate}_ratio"] = ratio(row[f"ray_{rate}"], row[f"plain_{rate}"])
    return row


# --- inputs ----------------------------------------------------------------------------------------


def speech_segment(seconds: float) -> np.ndarray:
    """float32 16 kHz speech of exactly ``seconds`` (espeak questions back to back, cut)."""
    pieces, total = [], 0
    need = int(seconds * ASR_SAMPLE_RATE_HZ)
    i = 0
    while total < need:
        pcm = espeak(QUESTIONS[i % len(QUESTIONS)], ASR_SAMPLE_RATE_HZ)
        pieces.append(pcm)
        total += len(pcm)
        i += 1
    return int16_to_float(np.concatenate(pieces)[:need])


def chat(question: str, config: AppConfig) -> list[dict[str, str]]:
    return [{"role": "system", "content": config.session.instructions}, {"role": "user", "content": question}]


# --- one measurement per side -------------------------------------------------------------------------


async def measure_stream(make: Callable[[], Any]) -> dict[str, float]:
    """Iterate an (async) stream: time to first item, total time, number of items and the items."""
    start = time.perf_counter()
    first = None
    items = []
    stream = make()
    if hasattr(stream, "__aiter__"):
        async for item in stream:
            if isinstance(item, (Usage, QueueWait)):  # token counts, the Speaker's queue time: not output
                continue
            first = first or time.perf_counter()
            items.append(item)
    else:
        for item in stream:
            first = first or time.perf_counter()
            items.append(item)
    end = time.perf_counter()
    return {"first_ms": ((first or end) - start) * 1000, "total_ms": (end - start) * 1000,
            "n": len(items), "items": items, "stream_s": (end - (first or end))}


async def timed(call: Callable[[], Awaitable[Any] | Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = call()
    if asyncio.iscoroutine(result) or hasattr(result, "__await__"):
        result = await result
    return (time.perf_counter() - start) * 1000, result


async def interleaved(inputs: list[Any], repeats: int, plain: Callable[[Any], Awaitable[Any]],
                      ray: Callable[[Any], Awaitable[Any]]) -> list[tuple[list[Any], list[Any]]]:
    """``repeats`` rounds over all inputs, each input measured on both sides, alternating which
    side goes first; consecutive calls see different inputs (as a server does), and slow drift
    of a shared machine spreads over every input and both sides alike."""
    out: list[tuple[list[Any], list[Any]]] = [([], []) for _ in inputs]
    for i in range(repeats):
        for k, item in enumerate(inputs):
            if (i + k) % 2 == 0:
                out[k][0].append(await plain(item))
                out[k][1].append(await ray(item))
            else:
                out[k][1].append(await ray(item))
                out[k][0].append(await plain(item))
    return out


# --- the benchmarks ----------------------------------------------------------------------------------


async def bench_asr(engine: Any, handle: Any, config: AppConfig, repeats: int) -> list[dict[str, Any]]:
    language = config.asr.language
    segments = [speech_segment(seconds) for seconds in SEGMENT_LENGTHS_S]
    for pcm in segments:  # warm every shape on both sides
        engine.transcribe(pcm, language)
        await handle.transcribe.remote(pcm, language)
    results = await interleaved(
        segments, repeats,
        lambda pcm: timed(lambda: engine.transcribe(pcm, language)),
        lambda pcm: timed(lambda: handle.transcribe.remote(pcm, language)))
    rows = []
    for seconds, (plain, ray) in zip(SEGMENT_LENGTHS_S, results):
        plain_ms, ray_ms = median([p[0] for p in plain]), median([r[0] for r in ray])
        rows.append({
            "segment_s": seconds, "plain_ms": plain_ms, "ray_ms": ray_ms,
            "plain_rtf": round(plain_ms / 1000 / seconds, 3), "ray_rtf": round(ray_ms / 1000 / seconds, 3),
            "overhead_ms": round(ray_ms - plain_ms, 1), "ratio": ratio(ray_ms, plain_ms),
            "text": plain[0][1].text,
        })
        print(f"  ASR {seconds:g} s: plain {plain_ms} ms, Ray {ray_ms} ms", file=sys.stderr)
    return rows


def _tokens_per_s(m: dict[str, float]) -> float | None:
    return (m["n"] - 1) / m["stream_s"] if m["n"] > 1 and m["stream_s"] > 0 else None


async def bench_llm(engine: Any, handle: Any, config: AppConfig, repeats: int) -> list[dict[str, Any]]:
    params = GenerationParams(max_tokens=LLM_MAX_TOKENS, temperature=0.0, top_p=1.0)
    stream_handle = handle.options(stream=True)
    conversations = [GenerationRequest(chat(question, config), params) for question in LLM_PROMPTS]
    # Warm both sides (the system prompt then sits in llama.cpp's prefix cache on both, as in a
    # session; each call evaluates its question, since consecutive calls differ).
    await measure_stream(lambda: engine.stream(conversations[-1]))
    await measure_stream(lambda: stream_handle.generate.remote(conversations[-1]))
    results = await interleaved(
        conversations, repeats,
        lambda request: measure_stream(lambda: engine.stream(request)),
        lambda request: measure_stream(lambda: stream_handle.generate.remote(request)))
    rows = []
    for question, (plain, ray) in zip(LLM_PROMPTS, results):
        row = {
            "prompt": question,
            "plain_ttft_ms": median([m["first_ms"] for m in plain]),
            "ray_ttft_ms": median([m["first_ms"] for m in ray]),
            "plain_tokens_per_s": median([t for m in plain if (t := _tokens_per_s(m))]),
            "ray_tokens_per_s": median([t for m in ray if (t := _tokens_per_s(m))]),
            "deltas": median([m["n"] for m in plain]),
            "reply": "".join(plain[0]["items"]).strip(),
        }
        rows.append(with_ray_cost(row, latency="ttft", rate="tokens_per_s"))
        print(f"  LLM {question!r}: TTFT plain {row['plain_ttft_ms']} / Ray {row['ray_ttft_ms']} ms, "
              f"tok/s plain {row['plain_tokens_per_s']} / Ray {row['ray_tokens_per_s']}", file=sys.stderr)
    return rows


async def bench_tts(engine: Any, handle: Any, config: AppConfig, repeats: int) -> list[dict[str, Any]]:
    voice = config.session.voice
    native_hz = next(iter(engine.synthesize("Hi.", voice))).sample_rate_hz  # and warms it
    stream_handle = handle.options(stream=True)
    await measure_stream(lambda: stream_handle.synthesize.remote("Hi.", voice, native_hz))
    results = await interleaved(
        list(TTS_TEXTS), repeats,
        lambda text: measure_stream(lambda: engine.synthesize(text, voice)),
        # At the voice's own rate, so the Speaker does not resample: only the handle differs.
        lambda text: measure_stream(lambda: stream_handle.synthesize.remote(text, voice, native_hz)))
    rows = []
    for text, (plain, ray) in zip(TTS_TEXTS, results):
        audio_s = sum(len(c.pcm) for c in plain[0]["items"]) / native_hz
        row = {
            "text": text, "words": len(text.split()), "audio_s": round(audio_s, 2),
            "plain_first_chunk_ms": median([m["first_ms"] for m in plain]),
            "ray_first_chunk_ms": median([m["first_ms"] for m in ray]),
            "plain_rtf": round(median([m["total_ms"] for m in plain]) / 1000 / audio_s, 3),
            "ray_rtf": round(median([m["total_ms"] for m in ray]) / 1000 / audio_s, 3),
        }
        rows.append(with_ray_cost(row, latency="first_chunk", rate="rtf"))
        print(f"  TTS {row['words']} words: first chunk plain {row['plain_first_chunk_ms']} / "
              f"Ray {row['ray_first_chunk_ms']} ms", file=sys.stderr)
    return rows


async def bench_round_trip(handles: dict[str, Any], repeats: int) -> list[dict[str, Any]]:
    """A no-op method through each handle; the plain side is the same no-op awaited in-process."""

    async def ping() -> str:
        return "ok"

    rows = []
    n = max(20, repeats * 10)
    for name, handle in handles.items():
        await handle.ping.remote()
        plain = [(await timed(ping))[0] for _ in range(n)]
        ray = [(await timed(lambda: handle.ping.remote()))[0] for _ in range(n)]
        rows.append({"deployment": name, "calls": n,
                     "plain_ms": median(plain, 4),
                     "ray_p50_ms": median(ray), "ray_p95_ms": percentile(ray, 95)})
        print(f"  handle round trip {name}: {rows[-1]['ray_p50_ms']} ms p50", file=sys.stderr)
    return rows


# --- setup ------------------------------------------------------------------------------------------


def load_config(path: Path) -> AppConfig:
    data = yaml.safe_load(path.read_text())
    app = next(a for a in data["applications"] if a.get("import_path", "").startswith("quillman"))
    return AppConfig.model_validate(app.get("args") or {})


def load_plain(config: AppConfig) -> dict[str, Any]:
    from quillman.engines.loader import load_language_model, load_recognizer, load_synthesizer

    return {"asr": load_recognizer(config.asr), "llm": load_language_model(config.llm),
            "tts": load_synthesizer(config.tts)}


def start_ray(config: AppConfig) -> dict[str, Any]:
    import ray
    from ray import serve

    from quillman.deployments.language_model import LanguageModel
    from quillman.deployments.speaker import Speaker
    from quillman.deployments.transcriber import Transcriber

    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    serve.start(proxy_location="Disabled", logging_config={"log_level": "WARNING"})
    options = {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0}}
    return {
        "Transcriber": serve.run(Transcriber.options(**options).bind(config.asr), name="bench-asr", route_prefix=None),
        "LanguageModel": serve.run(LanguageModel.options(**options).bind(config.llm), name="bench-llm",
                                   route_prefix=None),
        "Speaker": serve.run(Speaker.options(**options).bind(config.tts), name="bench-tts", route_prefix=None),
    }


def stop_ray() -> None:
    import ray
    from ray import serve

    try:
        serve.shutdown()
    finally:
        ray.shutdown()


def machine_info() -> dict[str, Any]:
    from quillman_bench.machine import machine_info as info  # psutil: the bench extra

    return info()


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """One overhead ratio per engine (median over its rows) and the handle round trip."""
    def med(values: list[float | None]) -> float | None:
        return median([v for v in values if v is not None], 3)

    return {
        "asr_latency_ratio": med([r["ratio"] for r in report["asr"]]),
        "asr_overhead_ms": med([r["overhead_ms"] for r in report["asr"]]),
        "llm_ttft_ratio": med([r["ttft_ratio"] for r in report["llm"]]),
        "llm_ttft_overhead_ms": med([r["ttft_overhead_ms"] for r in report["llm"]]),
        "llm_tokens_per_s_ratio": med([r["tokens_per_s_ratio"] for r in report["llm"]]),
        "tts_first_chunk_ratio": med([r["first_chunk_ratio"] for r in report["tts"]]),
        "tts_first_chunk_overhead_ms": med([r["first_chunk_overhead_ms"] for r in report["tts"]]),
        "tts_rtf_ratio": med([r["rtf_ratio"] for r in report["tts"]]),
        "handle_round_trip_ms": med([r["ray_p50_ms"] for r in report["round_trip"]]),
    }


def markdown(report: dict[str, Any]) -> str:
    f = lambda v: "–" if v is None else f"{v:g}"  # noqa: E731
    out = ["ASR (faster-whisper), per segment length:", "",
           table(["segment", "plain ms", "Ray ms", "plain RTF", "Ray RTF", "overhead ms", "Ray/plain"],
                 ([f"{r['segment_s']:g} s", f(r["plain_ms"]), f(r["ray_ms"]), f(r["plain_rtf"]), f(r["ray_rtf"]),
                   f(r["overhead_ms"]), f(r["ratio"])] for r in report["asr"]))]
    out += ["", f"LLM (temperature 0, up to {LLM_MAX_TOKENS} tokens):", "",
            table(["prompt", "plain TTFT ms", "Ray TTFT ms", "Ray/plain", "plain tok/s", "Ray tok/s", "Ray/plain"],
                  ([r["prompt"], f(r["plain_ttft_ms"]), f(r["ray_ttft_ms"]), f(r["ttft_ratio"]),
                    f(r["plain_tokens_per_s"]), f(r["ray_tokens_per_s"]), f(r["tokens_per_s_ratio"])]
                   for r in report["llm"]))]
    out += ["", "TTS (Piper), per sentence:", "",
            table(["words", "audio s", "plain first chunk ms", "Ray first chunk ms", "Ray/plain", "plain RTF",
                   "Ray RTF", "Ray/plain"],
                  ([r["words"], f(r["audio_s"]), f(r["plain_first_chunk_ms"]), f(r["ray_first_chunk_ms"]),
                    f(r["first_chunk_ratio"]), f(r["plain_rtf"]), f(r["ray_rtf"]), f(r["rtf_ratio"])]
                   for r in report["tts"]))]
    out += ["", "Handle round trip (no-op `ping`):", "",
            table(["deployment", "calls", "in-process ms", "Ray p50 ms", "Ray p95 ms"],
                  ([r["deployment"], r["calls"], f(r["plain_ms"]), f(r["ray_p50_ms"]), f(r["ray_p95_ms"])]
                   for r in report["round_trip"]))]
    s = report["summary"]
    d = lambda v: "–" if v is None else f"{v:+g}"  # noqa: E731
    out += ["", "Summary (medians over the rows above): "
            f"ASR Ray/plain {f(s['asr_latency_ratio'])} ({d(s['asr_overhead_ms'])} ms); "
            f"LLM TTFT {f(s['llm_ttft_ratio'])} ({d(s['llm_ttft_overhead_ms'])} ms), tokens/s {f(s['llm_tokens_per_s_ratio'])}; "
            f"TTS first chunk {f(s['tts_first_chunk_ratio'])} ({d(s['tts_first_chunk_overhead_ms'])} ms), "
            f"RTF {f(s['tts_rtf_ratio'])}; handle round trip {f(s['handle_round_trip_ms'])} ms."]
    return "\n".join(out)


async def run(config: AppConfig, repeats: int) -> dict[str, Any]:
    start = time.perf_counter()
    print("loading the engines in-process ...", file=sys.stderr)
    plain = load_plain(config)
    print("starting a private Ray instance and the three deployments ...", file=sys.stderr)
    ray_start = time.perf_counter()
    handles = start_ray(config)
    ray_start_s = time.perf_counter() - ray_start
    try:
        report: dict[str, Any] = {
            "asr": await bench_asr(plain["asr"], handles["Transcriber"], config, repeats),
            "llm": await bench_llm(plain["llm"], handles["LanguageModel"], config, repeats),
            "tts": await bench_tts(plain["tts"], handles["Speaker"], config, repeats),
            "round_trip": await bench_round_trip(handles, repeats),
        }
    finally:
        stop_ray()
    report["summary"] = summary(report)
    report["settings"] = {"repeats": repeats, "asr": config.asr.model_dump(), "llm": config.llm.model_dump(),
                          "tts": config.tts.model_dump(), "ray_startup_s": round(ray_start_s, 1),
                          "wall_s": round(time.perf_counter() - start, 1)}
    report["machine"] = machine_info()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "serve_config.yaml"), help="Serve config whose args: to use")
    parser.add_argument("--repeats", type=int, default=5, help="measurements per input and side")
    parser.add_argument("--json", help="write the report here")
    parser.add_argument("--markdown", action="store_true", help="print markdown tables")
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    config = load_config(Path(args.config))
    report = asyncio.run(run(config, args.repeats))
    report["settings"]["config"] = str(args.config)
    report["settings"]["python"] = platform.python_version()
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    if args.markdown:
        print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
