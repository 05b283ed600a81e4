"""GPU tests: marked ``gpu``, skipped where no CUDA device is visible (CI has none).

They load the real GPU-profile models from the Hugging Face cache (never downloading them):
    hf download openai/whisper-large-v3 HuggingFaceH4/zephyr-7b-beta coqui/XTTS-v2
    pip install '.[gpu,test]' && pytest tests/gpu -m gpu
A model missing from the cache skips its tests with the startup error that names it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from quillman.config import AppConfig
from quillman.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def cuda_available() -> bool:
    if shutil.which("nvidia-smi") is None:  # cheap answer first: no driver, no GPU
        return False
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if gpu_items and not cuda_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU; none visible (not yet measured on a GPU)")
        for item in gpu_items:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def gpu_1x() -> AppConfig:
    """The engine settings of configs/gpu-1x.yaml: the tests run what users run."""
    raw = yaml.safe_load((ROOT / "configs" / "gpu-1x.yaml").read_text())
    return AppConfig.model_validate(raw["applications"][0]["args"])


@pytest.fixture(scope="session")
def load_or_skip():
    """``load(config)``, skipping (with the startup error) when the model or package is absent."""

    def load_or_skip(load, config):
        try:
            return load(config)
        except ConfigError as exc:
            if "cache" in str(exc) or "needs the Python package" in str(exc):
                pytest.skip(str(exc))
            raise

    return load_or_skip
