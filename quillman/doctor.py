"""``quillman doctor``: load every engine of a serve config and run one tiny inference each.

Each engine is probed in a child process of its own, so a crash in native code (an illegal
instruction from a build that does not fit this CPU, a segfault) is reported as a row of the
table instead of killing the doctor. Exit status 1 if anything failed.

  quillman doctor [--config serve_config.yaml] [--engine asr llm tts vad] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ENGINES = ("asr", "llm", "tts", "vad")
RESULT_MARKER = "QUILLMAN_DOCTOR_RESULT "
# The portable llama.cpp build (Makefile, LLAMA_CPU=x86-64-v3) needs these; /proc/cpuinfo names.
X86_64_V3_FLAGS = ("avx", "avx2", "fma", "f16c", "bmi2")
BUILD_FLAGS_FILE = "llama-cpp-build-flags"  # written into the venv by `make install`
PORTABLE_REBUILD = "rebuild the portable default with `make install` (no NATIVE=1)"
NATIVE_REBUILD = "rebuild for this machine with `NATIVE=1 make install`"


@dataclass
class Row:
    engine: str
    backend: str
    model_path: str = ""
    load_ms: float | None = None
    first_inference_ms: float | None = None
    status: str = "ok"  # "ok" | "FAILED"
    cause: str = ""
    system_info: str = ""  # llama.cpp: the CPU features it was compiled with


# ---- what is installed and what the CPU runs ------------------------------------------------------

def llama_build_flags(prefix: str = sys.prefix) -> dict[str, str]:
    """What `make install` recorded about the installed llama.cpp build ({} if it did not)."""
    path = Path(prefix) / BUILD_FLAGS_FILE
    if not path.is_file():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def cpu_flags() -> set[str] | None:
    """The CPU features the kernel enabled (Linux), or None where that cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return None


def cpu_problem(flags: set[str] | None, build: dict[str, str], machine: str = platform.machine()) -> str | None:
    """Why this CPU cannot run the installed portable llama.cpp build, or None."""
    if machine not in ("x86_64", "AMD64") or flags is None:
        return None
    if build.get("cpu", "x86-64-v3") not in ("x86-64-v3", "avx512"):
        return None  # a native build targets this machine's own features
    needed = list(X86_64_V3_FLAGS) + (["avx512f"] if build.get("cpu") == "avx512" else [])
    missing = [flag for flag in needed if flag not in flags]
    if not missing:
        return None
    return (f"this CPU lacks {', '.join(missing)}, which the installed llama.cpp build "
            f"({build.get('cpu', 'x86-64-v3')}) needs; {NATIVE_REBUILD}")


def llama_system_info() -> str:
    try:
        import llama_cpp
    except ImportError:
        return ""
    info = llama_cpp.llama_print_system_info()
    return (info.decode() if isinstance(info, bytes) else str(info)).strip()


# ---- the child: one engine ------------------------------------------------------------------------

def _model_path(engine: str, config) -> str:
    if engine == "asr" and config.asr.backend == "faster_whisper":
        from quillman.engines.asr.faster_whisper import resolve_model_path

        return resolve_model_path(config.asr.model)
    if engine == "llm" and config.llm.backend == "llama_cpp":
        from quillman.engines.llm.llama_cpp import resolve_gguf_path

        return resolve_gguf_path(config.llm.model)
    if engine == "llm" and config.llm.backend == "openai":
        return config.llm.base_url
    if engine == "tts" and config.tts.backend == "piper":
        from quillman.engines.tts.piper import resolve_voice_path

        return str(resolve_voice_path(config.tts.model))
    if engine == "vad":
        from quillman.engines.vad import model_path

        return str(model_path())
    return getattr(config, engine).model


def _probe(engine: str, config) -> tuple[float, float]:
    """Load the engine and run its warm-up inference: (load ms, first-inference ms)."""
    import asyncio

    from quillman.engines import loader, warmup

    start = time.perf_counter()
    if engine == "asr":
        recognizer = loader.load_recognizer(config.asr)
        load_ms = (time.perf_counter() - start) * 1000
        return load_ms, warmup.warm_recognizer(recognizer, config.asr.language)
    if engine == "llm":
        model = loader.load_language_model(config.llm)
        load_ms = (time.perf_counter() - start) * 1000
        return load_ms, asyncio.run(warmup.warm_language_model(model))
    if engine == "tts":
        synthesizer = loader.load_synthesizer(config.tts)
        load_ms = (time.perf_counter() - start) * 1000
        return load_ms, warmup.warm_synthesizer(synthesizer)
    from quillman.engines.vad import SileroVad

    vad = SileroVad()
    load_ms = (time.perf_counter() - start) * 1000
    return load_ms, warmup.warm_vad(vad)


def plain_cause(exc: BaseException) -> str:
    """An exception from loading or running an engine, in words a user can act on."""
    from quillman.errors import ConfigError

    if isinstance(exc, ModuleNotFoundError):
        return f"missing package: the module '{exc.name}' is not installed (run `make install`)"
    if isinstance(exc, FileNotFoundError):
        return f"missing model file: {exc.filename or exc}"
    if isinstance(exc, ConfigError):
        text = str(exc)
        return f"missing model file: {text}" if "existing" in text or "not found" in text else text
    return f"{type(exc).__name__}: {exc}"[:400]


def child_main(engine: str, config_json: str) -> int:
    from quillman.config import AppConfig

    config = AppConfig.model_validate_json(config_json)
    result: dict[str, Any] = {}
    try:
        if engine == "llm" and config.llm.backend == "llama_cpp":
            result["system_info"] = llama_system_info()
        result["model_path"] = _model_path(engine, config)
        load_ms, infer_ms = _probe(engine, config)
        result.update(ok=True, load_ms=round(load_ms, 1), first_inference_ms=round(infer_ms, 1))
    except Exception as exc:  # noqa: BLE001 - reported to the parent in plain words
        result.update(ok=False, cause=plain_cause(exc))
    sys.stdout.write("\n" + RESULT_MARKER + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


# ---- the parent: run children, read what they said or how they died -------------------------------

def signal_cause(returncode: int, engine: str, build: dict[str, str]) -> str:
    """A child killed by a signal, in plain words (``returncode`` is -signum)."""
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    if name == "SIGILL":
        if engine == "llm":
            rebuild = NATIVE_REBUILD if build.get("cpu", "native") != "native" else PORTABLE_REBUILD
        else:
            rebuild = "reinstall the engine's package built for an older CPU"
        return (f"illegal instruction ({name}): this build uses CPU instructions your machine "
                f"rejects — {rebuild}")
    if name == "SIGSEGV":
        return f"segmentation fault ({name}) in the engine's native code"
    if name == "SIGKILL":
        return f"killed ({name}): most often out of memory"
    return f"crashed with {name}"


def run_child(argv: list[str], engine: str, timeout_s: float, build: dict[str, str]) -> dict[str, Any]:
    """Run one probe command and turn its outcome into a result dict (``ok``, ``cause``, ...)."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"ok": False, "cause": f"no answer within {timeout_s:.0f} s (hung while loading or in its first inference)"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER):])
    if proc.returncode < 0:
        return {"ok": False, "cause": signal_cause(proc.returncode, engine, build)}
    tail = [line for line in proc.stderr.strip().splitlines() if line.strip()][-1:] or ["no output"]
    return {"ok": False, "cause": f"exited with status {proc.returncode}: {tail[0][:300]}"}


def backend_of(engine: str, config) -> str:
    return "silero (onnxruntime)" if engine == "vad" else getattr(config, engine).backend


def load_app_config(path: str):
    """The ``args:`` of the quillman application in a Serve config file."""
    import yaml

    from quillman.config import AppConfig

    with open(path) as f:
        document = yaml.safe_load(f) or {}
    apps = document.get("applications") or [document]
    for app in apps:
        if str(app.get("import_path", "")).startswith("quillman.app"):
            return AppConfig.model_validate(app.get("args") or {})
    raise ValueError(f"{path}: no application with import_path quillman.app:build")


def diagnose(config, engines: tuple[str, ...] = ENGINES, timeout_s: float = 300.0) -> list[Row]:
    build = llama_build_flags()
    rows = []
    problem = cpu_problem(cpu_flags(), build)
    if problem:
        rows.append(Row(engine="cpu", backend=platform.machine(), status="FAILED", cause=problem))
    for engine in engines:
        row = Row(engine=engine, backend=backend_of(engine, config))
        argv = [sys.executable, "-m", "quillman.doctor", "--child", engine, "--config-json", config.model_dump_json()]
        result = run_child(argv, engine, timeout_s, build)
        row.model_path = result.get("model_path", "")
        row.load_ms = result.get("load_ms")
        row.first_inference_ms = result.get("first_inference_ms")
        row.system_info = result.get("system_info", "")
        if not result.get("ok"):
            row.status, row.cause = "FAILED", result.get("cause", "unknown")
        rows.append(row)
    return rows


def format_table(rows: list[Row]) -> str:
    header = ["engine", "backend", "model path", "load ms", "first inference ms", "status"]

    def fmt(ms: float | None) -> str:
        return "-" if ms is None else f"{ms:.0f}"

    def cells(row: Row) -> list[str]:
        return [row.engine, row.backend, row.model_path or "-", fmt(row.load_ms),
                fmt(row.first_inference_ms), row.status]

    table = [header] + [cells(row) for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for row in rows:
        if row.cause:
            lines.append(f"{row.engine}: {row.cause}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="quillman doctor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.add_argument("--child", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--config-json", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child_main(args.child, args.config_json)
    return run(args)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="serve_config.yaml", help="Serve config file (default: %(default)s)")
    parser.add_argument("--engine", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per engine")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")


def run(args: argparse.Namespace) -> int:
    try:
        config = load_app_config(args.config)
    except Exception as exc:  # noqa: BLE001 - a bad config file is a doctor finding too
        print(f"quillman doctor: cannot read {args.config}: {exc}", file=sys.stderr)
        return 1
    rows = diagnose(config, tuple(args.engine), args.timeout)
    if args.json:
        print(json.dumps([asdict(row) for row in rows], indent=2))
    else:
        build = llama_build_flags()
        info = next((row.system_info for row in rows if row.system_info), "")
        print(f"config: {args.config}")
        if build or info:
            print(f"llama.cpp build: {build.get('cpu', 'unknown (not installed by make)')}"
                  + (f" ({info})" if info else ""))
        print(format_table(rows))
    failed = [row.engine for row in rows if row.status != "ok"]
    if failed and not args.json:
        print(f"\nFAILED: {', '.join(failed)}. Fix the cause above, then run `quillman doctor` again.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
