"""What the GPU engines share: optional imports, offline model lookup, CUDA checks, staggered start.

Every failure here is a :class:`ConfigError` whose message names the setting to change, raised
while the replica starts, so a bad GPU profile fails once and clearly instead of mid-conversation.
Nothing here imports torch or Hugging Face at module import time: the CPU install lacks them.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from pathlib import Path
from types import ModuleType

from quillman.errors import ConfigError

logger = logging.getLogger(__name__)

GPU_EXTRA_HINT = "pip install 'quillman[gpu]'"


def import_optional(module: str, setting: str, package: str | None = None,
                    install_hint: str = GPU_EXTRA_HINT) -> ModuleType:
    """Import a GPU-profile package, or say which setting needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(
            f"{setting} needs the Python package {package or module} ({install_hint}); "
            f"import failed: {exc}"
        ) from exc


def _hf_cache_dir() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return os.path.expanduser("~/.cache/huggingface/hub")


def resolve_model_dir(model: str, setting: str, required_files: tuple[str, ...] = ()) -> str:
    """A local folder for ``model``: the folder itself, or its snapshot in the Hugging Face cache.

    Never downloads: GPU profiles read weights from the cache or a mounted volume, so a missing
    model is a startup error that says how to fetch it, not a silent multi-GB download.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        folder = path
    elif model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise ConfigError(
            f"{setting} {model!r} is not an existing folder nor a Hugging Face model id "
            f"(owner/name); set {setting} to one of those"
        )
    else:
        hub = import_optional("huggingface_hub", setting, "huggingface_hub")
        try:
            folder = Path(hub.snapshot_download(model, local_files_only=True))
        except (FileNotFoundError, ValueError) as exc:  # LocalEntryNotFoundError, HFValidationError
            raise ConfigError(
                f"{setting} {model!r} is not in the Hugging Face cache ({_hf_cache_dir()}) and "
                f"models are never downloaded at startup; fetch it first (`hf download {model}`), "
                f"mount a volume there (HF_HOME), or set {setting} to a local folder"
            ) from exc
    missing = [name for name in required_files if not (folder / name).exists()]
    if missing:
        raise ConfigError(
            f"{setting} {model!r} resolved to {folder}, which lacks {', '.join(missing)}; "
            f"download the complete model or point {setting} at a complete folder"
        )
    return str(folder)


def require_cuda(setting: str, deployment: str):
    """torch, after checking that this replica sees a CUDA device."""
    torch = import_optional("torch", setting, "torch")
    if not torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise ConfigError(
            f"{setting} needs a CUDA GPU but this {deployment} replica sees none "
            f"(CUDA_VISIBLE_DEVICES={visible!r}); give {deployment} "
            "ray_actor_options.num_gpus > 0 on a GPU node, or change "
            f"{setting} to a CPU setting"
        )
    return torch


def torch_dtype(torch, compute_type: str, device: str, setting: str):
    """The torch dtype for a ``compute_type`` name; ``auto`` is float16 on GPU, float32 on CPU."""
    names = {"float16": "float16", "fp16": "float16", "half": "float16",
             "bfloat16": "bfloat16", "bf16": "bfloat16", "float32": "float32", "fp32": "float32"}
    if compute_type in ("auto", "default"):
        return torch.float16 if device.startswith("cuda") else torch.float32
    if compute_type not in names:
        raise ConfigError(
            f"{setting} {compute_type!r} is not a torch dtype; use float16 or bfloat16 on a GPU, "
            "float32 on CPU (int8 is a faster-whisper setting)"
        )
    return getattr(torch, names[compute_type])


def staggered_start(delay_s: float, setting: str) -> None:
    """Sleep before loading so engines sharing one GPU don't allocate and profile at once."""
    if delay_s > 0:
        logger.info("%s: waiting %.0f s before loading (staggered start)", setting, delay_s)
        time.sleep(delay_s)
