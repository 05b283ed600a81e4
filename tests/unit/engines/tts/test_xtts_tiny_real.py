"""The XTTS backend against the real coqui-tts library, on a tiny randomly initialised XTTS.

Runs wherever coqui-tts's XTTS module imports (the GPU install: ``pip install '.[gpu,test]'``);
skipped here, where it cannot: PyPI's torchaudio and torchcodec are CUDA builds that do not load
beside the CPU torch of the test install (docs/deploy.md, "What runs on real software").
The model is built locally (a one-layer GPT, XTTS's HiFiGAN decoder and speaker encoder, a
character BPE vocab); it speaks noise, so what is checked is the engine against the library's
real API: loading a folder, cloning a voice from a wav, studio speakers from
``speakers_xtts.pth``, streamed int16 chunks, and closing a stream early.
"""

from __future__ import annotations

import shutil
import string

import numpy as np
import pytest

try:
    from TTS.tts.configs.xtts_config import XttsArgs, XttsConfig
    from TTS.tts.layers.xtts.tokenizer import VoiceBpeTokenizer
    from TTS.tts.models.xtts import Xtts
    import torch
except (ImportError, OSError) as exc:  # OSError: torchaudio's CUDA build without CUDA torch
    pytest.skip(f"coqui-tts's XTTS cannot be imported here: {exc}", allow_module_level=True)

from quillman.config import TtsConfig  # noqa: E402
from quillman.engines.loader import load_synthesizer  # noqa: E402
from quillman.engines.tts.xtts import XttsSynthesizer  # noqa: E402
from quillman_bench.speech import espeak  # noqa: E402

SPECIAL_TOKENS = ["[STOP]", "[UNK]", "[SPACE]", "[START]", "[en]", "[de]"]
MODEL_DIM = 32
MAX_AUDIO_TOKENS = 24


def _build_tiny_xtts(folder) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + list(string.ascii_lowercase + ".,!?'-"))}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="[UNK]"))
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(folder / "vocab.json"))
    # Audio token ids sit above the audio codebook: start and stop are the last two.
    args = XttsArgs(gpt_layers=1, gpt_n_model_channels=MODEL_DIM, gpt_n_heads=2,
                    decoder_input_dim=MODEL_DIM, gpt_max_audio_tokens=MAX_AUDIO_TOKENS,
                    gpt_max_text_tokens=64, gpt_max_prompt_tokens=16, gpt_num_audio_tokens=66,
                    gpt_start_audio_token=64, gpt_stop_audio_token=65)
    config = XttsConfig(model_args=args)
    config.save_json(str(folder / "config.json"))
    torch.manual_seed(0)
    model = Xtts(config)
    model.tokenizer = VoiceBpeTokenizer(vocab_file=str(folder / "vocab.json"))
    model.init_models()  # the GPT is only built once the tokenizer says how many text tokens
    torch.save({"model": model.state_dict()}, folder / "model.pth")
    speaker = {"gpt_cond_latent": torch.randn(1, 16, MODEL_DIM), "speaker_embedding": torch.randn(1, 512, 1)}
    torch.save({"Tiny Studio": speaker}, folder / "speakers_xtts.pth")


@pytest.fixture(scope="module")
def tiny_xtts(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.skip("needs espeak-ng for the reference voice")
    folder = tmp_path_factory.mktemp("tiny-xtts")
    _build_tiny_xtts(folder)
    import soundfile

    soundfile.write(folder / "narrator.wav", espeak("This is the voice to clone.", 22050), 22050)
    config = TtsConfig(backend="xtts", model=str(folder), device="cpu", stream_chunk_size=8,
                       voices={"narrator": str(folder / "narrator.wav")})
    return load_synthesizer(config)


def test_loads_a_folder_with_cloned_and_studio_voices(tiny_xtts):
    assert isinstance(tiny_xtts, XttsSynthesizer)
    assert tiny_xtts.voices == ["narrator", "Tiny Studio"]
    assert tiny_xtts.sample_rate_hz == 24000


@pytest.mark.parametrize("voice", ["narrator", "Tiny Studio"])
def test_streams_int16_chunks(tiny_xtts, voice):
    # Random weights sample the stop token at random, so the number of chunks varies.
    chunks = list(tiny_xtts.synthesize("Hello there.", voice))
    pcm = np.concatenate([chunk.pcm for chunk in chunks])
    assert pcm.dtype == np.int16 and pcm.size > 0 and {c.sample_rate_hz for c in chunks} == {24000}


def test_closing_a_stream_early_frees_the_model(tiny_xtts):
    stream = tiny_xtts.synthesize("A sentence that is cut off by a barge-in.")
    next(stream)
    stream.close()
    assert list(tiny_xtts.synthesize("Next.", None))  # the generation lock was released
