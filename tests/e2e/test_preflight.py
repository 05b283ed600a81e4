"""`quillman doctor` on the real engines: the shipped config passes, broken ones say why."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from quillman_bench.server_process import ROOT

pytestmark = pytest.mark.e2e
QUILLMAN = str(Path(sys.executable).with_name("quillman"))


def doctor(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([QUILLMAN, "doctor", *args], capture_output=True, text=True, timeout=600, cwd=ROOT)


def test_the_shipped_config_passes_with_a_row_per_engine():
    proc = doctor("--config", "serve_config.yaml")
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.startswith("llama.cpp build:") and "AVX2 = 1" in line for line in lines)
    rows = {line.split()[0]: line for line in lines if line.split() and line.split()[0] in ("asr", "llm", "tts", "vad")}
    assert set(rows) == {"asr", "llm", "tts", "vad"}
    assert all(row.rstrip().endswith("ok") for row in rows.values()), rows


def _config_with_llm_model(tmp_path: Path, model: str) -> str:
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    config["applications"][0]["args"]["llm"]["model"] = model
    path = tmp_path / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_a_missing_model_file_fails_with_its_name(tmp_path):
    proc = doctor("--config", _config_with_llm_model(tmp_path, "/nowhere/model.gguf"), "--engine", "llm", "--json")
    assert proc.returncode == 1
    [row] = json.loads(proc.stdout)
    assert row["status"] == "FAILED"
    assert row["cause"].startswith("missing model file") and "/nowhere/model.gguf" in row["cause"]


def test_a_corrupt_model_fails_without_killing_the_doctor(tmp_path):
    gguf = tmp_path / "broken.gguf"
    gguf.write_bytes(b"GGUF" + os.urandom(4096))
    proc = doctor("--config", _config_with_llm_model(tmp_path, str(gguf)), "--engine", "llm", "tts")
    assert proc.returncode == 1
    assert "FAILED: llm." in proc.stdout
    tts = next(line for line in proc.stdout.splitlines() if line.startswith("tts "))
    assert tts.rstrip().endswith("ok")  # the next engine was still probed
