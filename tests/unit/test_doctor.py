"""quillman doctor's parts: crash classification in real child processes, CPU checks, the table."""

from __future__ import annotations

import signal
import sys

import pytest

from quillman import doctor
from quillman.errors import ConfigError

PORTABLE = {"cpu": "x86-64-v3", "version": "0.3.36", "cmake_args": "-DGGML_NATIVE=OFF"}
V3 = {"fpu", "sse4_2", "avx", "avx2", "fma", "f16c", "bmi2"}


def _suicide(sig: signal.Signals) -> list[str]:
    return [sys.executable, "-c", f"import os, signal; os.kill(os.getpid(), signal.{sig.name})"]


def test_a_child_killed_by_sigill_is_reported_as_an_illegal_instruction_with_the_fix():
    result = doctor.run_child(_suicide(signal.SIGILL), "llm", timeout_s=30, build=PORTABLE)
    assert result["ok"] is False
    assert result["cause"].startswith("illegal instruction (SIGILL)")
    assert "CPU instructions your machine rejects" in result["cause"]
    assert "NATIVE=1 make install" in result["cause"]


def test_a_native_build_that_traps_points_back_to_the_portable_build():
    result = doctor.run_child(_suicide(signal.SIGILL), "llm", timeout_s=30, build={"cpu": "native"})
    assert "make install` (no NATIVE=1)" in result["cause"]


def test_segfault_and_hang_and_plain_exit_are_told_apart():
    assert "segmentation fault" in doctor.run_child(_suicide(signal.SIGSEGV), "tts", 30, PORTABLE)["cause"]
    hung = doctor.run_child([sys.executable, "-c", "import time; time.sleep(30)"], "asr", 0.5, PORTABLE)
    assert hung["cause"].startswith("no answer within")
    exited = doctor.run_child([sys.executable, "-c", "import sys; sys.exit('boom: no device')"], "asr", 30, PORTABLE)
    assert exited["cause"] == "exited with status 1: boom: no device"


def test_the_childs_result_line_is_read_even_after_library_chatter():
    code = ("print('llama.cpp says hello'); "
            f"print({doctor.RESULT_MARKER!r} + '{{\"ok\": true, \"load_ms\": 1.5}}')")
    assert doctor.run_child([sys.executable, "-c", code], "llm", 30, PORTABLE) == {"ok": True, "load_ms": 1.5}


def test_cpu_below_the_portable_baseline_is_a_clear_message_not_a_crash():
    problem = doctor.cpu_problem(V3 - {"avx2", "fma"}, PORTABLE, machine="x86_64")
    assert problem is not None and "lacks avx2, fma" in problem and "NATIVE=1 make install" in problem
    assert doctor.cpu_problem(V3, PORTABLE, machine="x86_64") is None
    assert "avx512f" in doctor.cpu_problem(V3, {"cpu": "avx512"}, machine="x86_64")
    # A native build targets the host itself; other architectures are not ours to judge.
    assert doctor.cpu_problem(set(), {"cpu": "native"}, machine="x86_64") is None
    assert doctor.cpu_problem(set(), PORTABLE, machine="aarch64") is None


@pytest.mark.parametrize("exc, expected", [
    (ModuleNotFoundError("No module named 'vllm'", name="vllm"), "missing package: the module 'vllm'"),
    (FileNotFoundError(2, "No such file", "/models/x.gguf"), "missing model file: /models/x.gguf"),
    (ConfigError("llm.model '/x.gguf' is neither 'smollm2-135m' nor an existing GGUF file"), "missing model file: llm.model"),
    (ValueError("Failed to load model from file"), "ValueError: Failed to load model from file"),
])
def test_exceptions_become_plain_causes(exc, expected):
    assert doctor.plain_cause(exc).startswith(expected)


def test_the_table_has_every_column_and_the_causes_below_it():
    rows = [doctor.Row("asr", "faster_whisper", "/m/tiny", 812.4, 95.0),
            doctor.Row("llm", "llama_cpp", "/m/x.gguf", status="FAILED", cause="illegal instruction (SIGILL): ...")]
    text = doctor.format_table(rows)
    header = text.splitlines()[0].split("  ")
    assert [h.strip() for h in header if h.strip()] == [
        "engine", "backend", "model path", "load ms", "first inference ms", "status"]
    assert "812" in text and "FAILED" in text
    assert text.splitlines()[-1] == "llm: illegal instruction (SIGILL): ..."


def test_build_flags_are_read_from_the_venv_record(tmp_path):
    (tmp_path / doctor.BUILD_FLAGS_FILE).write_text("cpu=x86-64-v3\ncmake_args=-DGGML_NATIVE=OFF -DGGML_AVX2=ON\n")
    assert doctor.llama_build_flags(str(tmp_path)) == {"cpu": "x86-64-v3", "cmake_args": "-DGGML_NATIVE=OFF -DGGML_AVX2=ON"}
    assert doctor.llama_build_flags(str(tmp_path / "nowhere")) == {}
