"""The installed llama.cpp is the portable build: nothing host-specific compiled in.

llama.cpp's default (GGML_NATIVE=ON) compiles for whatever the build host advertises; a VM that
advertises AMX but traps it then kills every LanguageModel replica with SIGILL. `make install`
builds with explicit x86-64-v3 flags and records them; this test fails on a native build, on AMX
or AVX-512 code in the default build, and on a llama-cpp-python installed some other way.
"""

from __future__ import annotations

import platform
import re
import sys

import pytest

from quillman.doctor import llama_build_flags, llama_system_info

pytestmark = pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 builds only")


def compiled_features(info: str) -> dict[str, int]:
    """'CPU : SSE3 = 1 | AVX2 = 1 | ...' -> {'SSE3': 1, 'AVX2': 1, ...}"""
    return {name: int(value) for name, value in re.findall(r"([A-Z][A-Z0-9_]+) = (\d+)", info)}


def test_make_install_recorded_a_portable_build():
    build = llama_build_flags()
    assert build, (f"no {sys.prefix}/llama-cpp-build-flags: llama-cpp-python was not installed by "
                   "`make install`, so it may be a host-native build (GGML_NATIVE=ON)")
    if build["cpu"] in ("native", "avx512"):
        pytest.skip(f"explicit opt-in build ({build['cpu']}) installed; CI checks the default")
    assert build["cpu"] == "x86-64-v3"
    flags = build["cmake_args"].split()
    assert "-DGGML_NATIVE=OFF" in flags and "-DGGML_NATIVE=ON" not in flags
    for feature in ("AVX2", "FMA", "F16C"):
        assert f"-DGGML_{feature}=ON" in flags
    assert not any(f.startswith(("-DGGML_AMX", "-DGGML_AVX512")) and f.endswith("=ON") for f in flags)


def test_the_loaded_library_has_no_host_specific_code():
    build = llama_build_flags()
    if build.get("cpu") in ("native", "avx512"):
        pytest.skip(f"explicit opt-in build ({build['cpu']})")
    features = compiled_features(llama_system_info())
    assert features.get("AVX2") == 1 and features.get("FMA") == 1 and features.get("F16C") == 1, features
    host_specific = {name for name, on in features.items() if on and name.startswith(("AMX", "AVX512", "AVX_VNNI"))}
    assert not host_specific, f"compiled in: {sorted(host_specific)} (a native build?)"


def test_feature_parsing():
    info = "CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 0 | AMX_INT8 = 1 | LLAMAFILE = 1 |"
    assert compiled_features(info) == {"SSE3": 1, "AVX2": 1, "AVX512": 0, "AMX_INT8": 1, "LLAMAFILE": 1}


def test_the_docker_image_builds_with_the_makefiles_portable_flags():
    from pathlib import Path

    root = Path(__file__).resolve().parents[4]
    makefile = re.search(r"^LLAMA_CMAKE_ARGS_x86-64-v3 := (.+)$", (root / "Makefile").read_text(), re.M)
    dockerfile = re.search(r'^ARG LLAMA_CMAKE_ARGS="(.+)"$', (root / "Dockerfile").read_text(), re.M)
    assert makefile and dockerfile
    assert dockerfile.group(1) == makefile.group(1).strip()
