"""LLM speed of llama.cpp builds made with different CPU flags, on this machine, same run.

  python benchmarks/llama_builds.py .wheels/llama-cpp-python-*-x86-64-v3-*/ .wheels/...-native-*/ [--rounds 5]

Each build folder (made by `make llama-wheel LLAMA_CPU=...`) holds one wheel and its BUILD_FLAGS.
Its wheel is unpacked into a scratch folder and measured in a child process that imports it first
(PYTHONPATH), loading the CPU profile's model with the serve config's thread settings: time to
first token and tokens/s of a streamed reply (temperature 0, so every build generates the same
tokens), the median over the prompts and rounds. Builds take turns in every round, so background
load hurts them alike. A build whose child dies (SIGILL: the CPU rejects its instructions) is
reported as such. `make llama-builds-bench` builds the variants this CPU runs and calls this.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable from a checkout without installing

from quillman_bench.report import median  # noqa: E402

PROMPTS = ("What is the capital of France?", "Tell me a fun fact about the moon.",
           "How do I boil an egg?", "Why is the sky blue?")
MAX_TOKENS = 48

CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import llama_cpp, yaml
from llama_cpp import Llama
from quillman.config import AppConfig
from quillman.engines.llm.llama_cpp import resolve_gguf_path
config = AppConfig.model_validate(yaml.safe_load(open(sys.argv[2]))["applications"][0]["args"]).llm
llm = Llama(model_path=resolve_gguf_path(config.model), n_threads=config.n_threads,
            n_threads_batch=config.n_threads_batch, n_ctx=config.n_ctx, verbose=False)
out = []
for prompt in json.loads(sys.argv[3]):
    messages = [{"role": "system", "content": "You are a helpful voice assistant."},
                {"role": "user", "content": prompt}]
    llm.reset()  # no prefix cache between prompts: every build evaluates the same prompt
    start = time.perf_counter(); first = None; tokens = 0
    for chunk in llm.create_chat_completion(messages=messages, stream=True, max_tokens=int(sys.argv[4]),
                                            temperature=0.0):
        if chunk["choices"][0]["delta"].get("content"):
            first = first or time.perf_counter()
            tokens += 1
    end = time.perf_counter()
    out.append({"ttft_ms": (first - start) * 1000, "tokens": tokens,
                "tokens_per_s": (tokens - 1) / (end - first) if tokens > 1 else None})
info = llama_cpp.llama_print_system_info()
print("RESULT " + json.dumps({"runs": out, "system_info": info.decode() if isinstance(info, bytes) else info}))
"""


def unpack(build: Path, scratch: Path) -> Path:
    [wheel] = build.glob("*.whl")
    target = scratch / build.name
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)
    return target


def flags_of(build: Path) -> dict[str, str]:
    lines = (build / "BUILD_FLAGS").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def measure(site: Path, config: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(site), str(config), json.dumps(PROMPTS), str(MAX_TOKENS)],
                          capture_output=True, text=True, cwd=ROOT)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    cause = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else proc.stderr.strip()[-300:]
    return {"error": cause}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("builds", nargs="+", type=Path, help="build folders under .wheels/")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--config", type=Path, default=ROOT / "serve_config.yaml")
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args(argv)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as scratch:
        sites = {build: unpack(build, Path(scratch)) for build in args.builds}
        for round_index in range(args.rounds):
            order = args.builds if round_index % 2 == 0 else list(reversed(args.builds))
            for build in order:
                entry = results.setdefault(build.name, {"cpu": flags_of(build).get("cpu"), "runs": []})
                measured = measure(sites[build], args.config)
                if "error" in measured:
                    entry["error"] = measured["error"]
                    continue
                entry["runs"] += measured["runs"]
                entry["system_info"] = measured["system_info"]
    print("| build | TTFT p50 (ms) | tokens/s p50 | compiled features |")
    print("|---|---|---|---|")
    for entry in results.values():
        if entry.get("error") and not entry["runs"]:
            print(f"| {entry['cpu']} | - | - | failed: {entry['error']} |")
            continue
        entry["ttft_ms_p50"] = median(r["ttft_ms"] for r in entry["runs"])
        entry["tokens_per_s_p50"] = median(r["tokens_per_s"] for r in entry["runs"] if r["tokens_per_s"])
        features = " ".join(f.split(" = ")[0] for f in entry["system_info"].split(" | ")
                            if f.endswith(" = 1") and not f.startswith("CPU"))
        print(f"| {entry['cpu']} | {entry['ttft_ms_p50']} | {entry['tokens_per_s_p50']} | {features} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
