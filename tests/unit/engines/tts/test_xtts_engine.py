"""The XTTS-v2 backend on CPU: the real engine module against a fake coqui-tts ``Xtts``."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from engine_fakes import FakeXtts, fake_torch, fake_tts_modules, install

from quillman.config import TtsConfig
from quillman.engines.loader import load_synthesizer
from quillman.engines.tts.base import AudioChunk
from quillman.engines.tts.xtts import XttsSynthesizer
from quillman.errors import ConfigError


@pytest.fixture
def reference_wav(tmp_path):
    path = tmp_path / "narrator.wav"
    path.write_bytes(b"RIFF")  # only its existence matters to the fake model
    return str(path)


@pytest.fixture
def xtts_dir(tmp_path):
    folder = tmp_path / "XTTS-v2"
    folder.mkdir()
    for name in ("config.json", "model.pth", "vocab.json"):
        (folder / name).write_text("{}")
    return folder


def test_voices_clone_once_at_startup_then_studio_speakers(reference_wav):
    model = FakeXtts()
    tts = XttsSynthesizer(model, clone_voices={"narrator": reference_wav})
    assert tts.voices == ["narrator", "Ana Florence", "Claribel Dervla"]
    assert tts.default_voice == "narrator"
    assert model.latent_calls == [[reference_wav]]
    for _ in range(3):
        list(tts.synthesize("Hello.", "narrator"))
    assert model.latent_calls == [[reference_wav]]  # computed once, reused
    assert model.stream_calls[-1]["gpt"].values.tolist() == [9.0]


def test_studio_latents_are_cached_on_the_model_device():
    model = FakeXtts(device="cuda:0")
    tts = XttsSynthesizer(model)
    first = tts.latents("Claribel Dervla")
    assert first[0].device == "cuda:0" and first[0].values.tolist() == [3.0]
    assert tts.latents("Claribel Dervla") is first


def test_synthesize_streams_int16_chunks_with_the_settings():
    model = FakeXtts(chunks=3)
    tts = XttsSynthesizer(model, language="de", stream_chunk_size=12, speed=1.25, sample_rate_hz=24000)
    chunks = list(tts.synthesize("Guten Tag.", "Ana Florence"))
    assert len(chunks) == 3 and all(isinstance(c, AudioChunk) for c in chunks)
    assert all(c.pcm.dtype == np.int16 and c.sample_rate_hz == 24000 for c in chunks)
    assert chunks[1].pcm[0] == int(0.5 * 32767)
    call = model.stream_calls[0]
    assert (call["text"], call["language"], call["stream_chunk_size"], call["speed"]) == ("Guten Tag.", "de", 12, 1.25)
    assert call["enable_text_splitting"] is False  # the pipeline already split sentences


def test_unknown_or_missing_voice_uses_the_default():
    model = FakeXtts()
    tts = XttsSynthesizer(model)
    list(tts.synthesize("Hi.", "joe"))  # the CPU profile's voice name
    list(tts.synthesize("Hi."))
    assert [c["gpt"].values.tolist() for c in model.stream_calls] == [[1.0], [1.0]]


def test_closing_early_stops_generation():
    model = FakeXtts(chunks=100)
    stream = XttsSynthesizer(model).synthesize("A long sentence.")
    next(stream)
    stream.close()  # barge-in
    assert model.closed_streams == 1


def test_streams_on_one_model_run_one_at_a_time():
    # XTTS keeps the current prompt in shared GPT state: a second stream must wait.
    model = FakeXtts(chunks=5)
    tts = XttsSynthesizer(model)
    first = tts.synthesize("First sentence.")
    next(first)
    done = threading.Event()
    worker = threading.Thread(target=lambda: (list(tts.synthesize("Second.")), done.set()))
    worker.start()
    assert not done.wait(0.2)  # blocked while the first stream is open
    assert len(model.stream_calls) == 1
    first.close()
    assert done.wait(5)
    worker.join(5)
    assert [c["text"] for c in model.stream_calls] == ["First sentence.", "Second."]


def test_voice_errors_name_the_setting(tmp_path):
    with pytest.raises(ConfigError, match="tts.voices.ghost"):
        XttsSynthesizer(FakeXtts(), clone_voices={"ghost": str(tmp_path / "missing.wav")})
    with pytest.raises(ConfigError, match="tts.voices is empty"):
        XttsSynthesizer(FakeXtts(studio={}))


def test_loader_builds_xtts_from_a_local_folder(monkeypatch, xtts_dir, reference_wav):
    install(monkeypatch, fake_tts_modules())
    install(monkeypatch, {"torch": fake_torch(cuda=True)})
    config = TtsConfig(backend="xtts", model=str(xtts_dir), device="cuda", language="en",
                       voices={"narrator": reference_wav}, stream_chunk_size=8, length_scale=0.8)
    tts = load_synthesizer(config)
    assert isinstance(tts, XttsSynthesizer)
    model = FakeXtts.last
    assert model.loaded_from["checkpoint_dir"] == str(xtts_dir) and model.loaded_from["eval"] is True
    assert model.loaded_from["config"].loaded_json == str(xtts_dir / "config.json")
    assert model.device == "cuda"
    assert tts.voices[0] == "narrator" and tts.sample_rate_hz == 24000
    assert tts.stream_chunk_size == 8 and tts.speed == pytest.approx(1.25)


def test_startup_errors_name_the_setting(monkeypatch, xtts_dir, tmp_path):
    install(monkeypatch, fake_tts_modules())
    install(monkeypatch, {"torch": fake_torch(cuda=False)})
    with pytest.raises(ConfigError, match=r"tts.device needs a CUDA GPU.*Speaker"):
        load_synthesizer(TtsConfig(backend="xtts", model=str(xtts_dir), device="cuda"))
    install(monkeypatch, {"torch": fake_torch(cuda=True)})
    (xtts_dir / "model.pth").unlink()
    with pytest.raises(ConfigError, match="tts.model .* lacks model.pth"):
        load_synthesizer(TtsConfig(backend="xtts", model=str(xtts_dir), device="cuda"))
    install(monkeypatch, {"TTS": None, "TTS.tts.models.xtts": None, "TTS.tts.configs.xtts_config": None})
    with pytest.raises(ConfigError, match=r"needs the Python package coqui-tts"):
        load_synthesizer(TtsConfig(backend="xtts", model=str(xtts_dir), device="cuda"))

