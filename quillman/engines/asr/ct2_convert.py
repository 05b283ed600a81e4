"""CTranslate2 Whisper folder -> Hugging Face ``WhisperForConditionalGeneration`` folder, offline.

The only real Whisper weights this project can install without a model hub are the CTranslate2
ones of the CPU profile (``tiny.en``, ``base``). Converting them lets the transformers backend
(the GPU profile's code path) run real Whisper on CPU: ``asr.backend: transformers`` with
``asr.model: tiny.en``, ``base`` or any CTranslate2 Whisper folder converts once into the cache.

This inverts ``ctranslate2.converters.transformers.WhisperLoader``: CTranslate2 fuses the q/k/v
projections (self-attention) and k/v (cross-attention) into one matrix and gives the bias-less
k projection zero biases; here they are split again. int8 weights are dequantized with their
``weight_scale``; everything is saved as float32 safetensors. ``model.bin`` is read directly (the
layout of ``ctranslate2.specs.model_spec.ModelSpec._serialize``, binary version 6), since
ctranslate2's Python API has no way to export a loaded model's variables.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import struct
import tempfile
from pathlib import Path
from typing import BinaryIO

import numpy as np

from quillman.errors import ConfigError

logger = logging.getLogger(__name__)

# ctranslate2's DataType enum order (include/ctranslate2/types.h); bfloat16 is read as raw uint16.
_DTYPES = (np.float32, np.int8, np.int16, np.int32, np.float16, np.uint16)
_BFLOAT16 = 5
_SUPPORTED_BINARY_VERSIONS = (5, 6)
_WHISPER_SPEC = "WhisperSpec"
_NON_LANGUAGE_TOKENS = {
    "<|endoftext|>", "<|startoftranscript|>", "<|translate|>", "<|transcribe|>", "<|startoflm|>",
    "<|startofprev|>", "<|nocaptions|>", "<|nospeech|>", "<|notimestamps|>",
}


def _read(stream: BinaryIO, fmt: str):
    return struct.unpack(fmt, stream.read(struct.calcsize(fmt)))[0]


def _read_string(stream: BinaryIO) -> str:
    length = _read(stream, "H")  # includes the trailing NUL
    return stream.read(length)[:-1].decode("utf-8")


def _read_header(stream: BinaryIO) -> tuple[int, str]:
    version = _read(stream, "I")
    if version not in _SUPPORTED_BINARY_VERSIONS:
        raise ConfigError(f"CTranslate2 model.bin binary version {version} is not supported "
                          f"(supported: {', '.join(map(str, _SUPPORTED_BINARY_VERSIONS))})")
    return version, _read_string(stream)


def ct2_spec_name(model_bin: Path) -> str | None:
    """The spec a CTranslate2 ``model.bin`` was written from ("WhisperSpec"), None if not one."""
    try:
        with open(model_bin, "rb") as stream:
            return _read_header(stream)[1]
    except (OSError, struct.error, UnicodeDecodeError, ConfigError):
        return None


def read_ct2_variables(model_bin: Path) -> dict[str, np.ndarray]:
    """Every variable of a CTranslate2 ``model.bin`` by its scoped name, aliases resolved."""
    variables: dict[str, np.ndarray] = {}
    with open(model_bin, "rb") as stream:
        _read_header(stream)
        _read(stream, "I")  # spec revision
        for _ in range(_read(stream, "I")):
            name = _read_string(stream)
            shape = [_read(stream, "I") for _ in range(_read(stream, "B"))]
            type_id = _read(stream, "B")
            data = np.frombuffer(stream.read(_read(stream, "I")), dtype=_DTYPES[type_id])
            if type_id == _BFLOAT16:  # bfloat16 is the high half of a float32
                data = (data.astype(np.uint32) << 16).view(np.float32)
            variables[name] = data.reshape(shape)
        for _ in range(_read(stream, "I")):
            alias, target = _read_string(stream), _read_string(stream)
            variables[alias] = variables[target]
    return variables


def _weight(variables: dict[str, np.ndarray], name: str) -> np.ndarray:
    """A float32 weight; int8 ones are dequantized (CTranslate2 stores q = round(w * scale))."""
    value = variables[name]
    scale = variables.get(f"{name}_scale")
    if scale is not None:
        scale = scale.astype(np.float32)
        value = value.astype(np.float32) / scale.reshape(-1, *([1] * (value.ndim - 1)))
    return np.array(value, dtype=np.float32)  # a copy: aliased variables share one buffer


def _hf_state_dict(variables: dict[str, np.ndarray], encoder_layers: int,
                   decoder_layers: int) -> dict[str, np.ndarray]:
    state: dict[str, np.ndarray] = {}

    def put(hf: str, ct2: str) -> None:
        state[hf] = _weight(variables, ct2)

    def linear(hf: str, ct2: str) -> None:
        put(f"{hf}.weight", f"{ct2}/weight")
        put(f"{hf}.bias", f"{ct2}/bias")

    def layer_norm(hf: str, ct2: str) -> None:
        put(f"{hf}.weight", f"{ct2}/gamma")
        put(f"{hf}.bias", f"{ct2}/beta")

    def split(hf: str, ct2: str, names: tuple[str, ...]) -> None:
        """A fused projection back into its parts; k_proj has no bias in Whisper."""
        weights = np.split(_weight(variables, f"{ct2}/weight"), len(names))
        biases = np.split(_weight(variables, f"{ct2}/bias"), len(names))
        for name, weight, bias in zip(names, weights, biases):
            state[f"{hf}.{name}.weight"] = np.ascontiguousarray(weight)
            if name != "k_proj":
                state[f"{hf}.{name}.bias"] = np.ascontiguousarray(bias)

    def block(hf: str, ct2: str, cross: bool) -> None:
        split(f"{hf}.self_attn", f"{ct2}/self_attention/linear_0", ("q_proj", "k_proj", "v_proj"))
        linear(f"{hf}.self_attn.out_proj", f"{ct2}/self_attention/linear_1")
        layer_norm(f"{hf}.self_attn_layer_norm", f"{ct2}/self_attention/layer_norm")
        if cross:
            linear(f"{hf}.encoder_attn.q_proj", f"{ct2}/attention/linear_0")
            split(f"{hf}.encoder_attn", f"{ct2}/attention/linear_1", ("k_proj", "v_proj"))
            linear(f"{hf}.encoder_attn.out_proj", f"{ct2}/attention/linear_2")
            layer_norm(f"{hf}.encoder_attn_layer_norm", f"{ct2}/attention/layer_norm")
        linear(f"{hf}.fc1", f"{ct2}/ffn/linear_0")
        linear(f"{hf}.fc2", f"{ct2}/ffn/linear_1")
        layer_norm(f"{hf}.final_layer_norm", f"{ct2}/ffn/layer_norm")

    for conv in ("conv1", "conv2"):
        linear(f"model.encoder.{conv}", f"encoder/{conv}")
    put("model.encoder.embed_positions.weight", "encoder/position_encodings/encodings")
    layer_norm("model.encoder.layer_norm", "encoder/layer_norm")
    for i in range(encoder_layers):
        block(f"model.encoder.layers.{i}", f"encoder/layer_{i}", cross=False)
    put("model.decoder.embed_tokens.weight", "decoder/embeddings/weight")
    put("model.decoder.embed_positions.weight", "decoder/position_encodings/encodings")
    layer_norm("model.decoder.layer_norm", "decoder/layer_norm")
    for i in range(decoder_layers):
        block(f"model.decoder.layers.{i}", f"decoder/layer_{i}", cross=True)
    return state


def _layer_count(variables: dict[str, np.ndarray], stack: str) -> int:
    layer = re.compile(rf"{stack}/layer_(\d+)/")
    return len({match.group(1) for match in map(layer.match, variables) if match})


def convert_ct2_whisper(ct2_dir: str | Path, out_dir: str | Path) -> Path:
    """Write a Hugging Face Whisper folder (weights, config, generation config, processor)."""
    import torch
    import transformers
    from safetensors.torch import save_file

    ct2_dir, out_dir = Path(ct2_dir), Path(out_dir)
    if ct2_spec_name(ct2_dir / "model.bin") != _WHISPER_SPEC:
        raise ConfigError(f"{ct2_dir} is not a CTranslate2 Whisper folder (model.bin of a WhisperSpec)")
    ct2_config = json.loads((ct2_dir / "config.json").read_text())
    variables = read_ct2_variables(ct2_dir / "model.bin")
    encoder_layers = _layer_count(variables, "encoder")
    decoder_layers = _layer_count(variables, "decoder")
    vocab_size, d_model = variables["decoder/embeddings/weight"].shape

    tokenizer = transformers.WhisperTokenizer(tokenizer_file=str(ct2_dir / "tokenizer.json"))
    token = tokenizer.convert_tokens_to_ids
    eot, sot = token("<|endoftext|>"), token("<|startoftranscript|>")
    # Whisper's own rule (transformers' WhisperTokenizer too): the .en vocabulary is one smaller.
    multilingual = vocab_size >= 51865
    config = transformers.WhisperConfig(
        vocab_size=int(vocab_size), num_mel_bins=int(variables["encoder/conv1/weight"].shape[1]),
        d_model=int(d_model), encoder_layers=encoder_layers, decoder_layers=decoder_layers,
        encoder_attention_heads=int(variables["encoder/num_heads"]),
        decoder_attention_heads=int(variables["decoder/num_heads"]),
        encoder_ffn_dim=int(variables["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        decoder_ffn_dim=int(variables["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        max_source_positions=int(variables["encoder/position_encodings/encodings"].shape[0]),
        max_target_positions=int(variables["decoder/position_encodings/encodings"].shape[0]),
        pad_token_id=eot, bos_token_id=eot, eos_token_id=eot, decoder_start_token_id=sot,
        suppress_tokens=list(ct2_config.get("suppress_ids", [])),
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin", [])),
        tie_word_embeddings=True,
    )
    state = _hf_state_dict(variables, encoder_layers, decoder_layers)
    with torch.device("meta"):
        model = transformers.WhisperForConditionalGeneration(config)
    expected = set(model.state_dict()) - {"proj_out.weight"}  # tied to embed_tokens
    if expected != set(state):
        raise ConfigError(f"{ct2_dir}: converted weights do not match Whisper's layout "
                          f"(missing {sorted(expected - set(state))[:3]}, "
                          f"unexpected {sorted(set(state) - expected)[:3]})")

    generation = transformers.GenerationConfig(
        decoder_start_token_id=sot, bos_token_id=eot, eos_token_id=eot, pad_token_id=eot,
        max_length=config.max_target_positions,
        suppress_tokens=config.suppress_tokens, begin_suppress_tokens=config.begin_suppress_tokens,
        alignment_heads=[list(head) for head in ct2_config.get("alignment_heads", [])],
        no_timestamps_token_id=token("<|notimestamps|>"), prev_sot_token_id=token("<|startofprev|>"),
        is_multilingual=multilingual,
        task_to_id={"transcribe": token("<|transcribe|>"), "translate": token("<|translate|>")},
    )
    if multilingual:
        generation.lang_to_id = {
            name: token(name) for name in tokenizer.convert_ids_to_tokens(ct2_config.get("lang_ids", []))
            if name not in _NON_LANGUAGE_TOKENS
        }
    processor = transformers.WhisperProcessor(
        feature_extractor=transformers.WhisperFeatureExtractor(feature_size=config.num_mel_bins),
        tokenizer=tokenizer,
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({name: torch.from_numpy(value) for name, value in state.items()},
              str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(out_dir)
    generation.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def is_ct2_whisper_dir(path: str | Path) -> bool:
    return ct2_spec_name(Path(path) / "model.bin") == _WHISPER_SPEC


def cached_hf_whisper(ct2_dir: str | Path, cache_root: Path) -> Path:
    """The converted folder of ``ct2_dir`` under ``cache_root``, converting on first use.

    Keyed by the source's path, size and mtime, so a changed model converts again; written to a
    temp folder and renamed, since two replicas may convert at the same time.
    """
    ct2_dir = Path(ct2_dir).resolve()
    stat = (ct2_dir / "model.bin").stat()
    key = hashlib.sha256(f"{ct2_dir}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = cache_root / f"whisper-hf-{ct2_dir.name}-{key}"
    if (target / "model.safetensors").exists():
        return target
    cache_root.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f"{target.name}.", dir=cache_root))
    try:
        convert_ct2_whisper(ct2_dir, partial)
        partial.chmod(0o755)  # mkdtemp's 0700 would hide it from other users of a shared cache
        os.replace(partial, target)
    except OSError:
        if not (target / "model.safetensors").exists():  # not a lost race with another replica
            raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    logger.info("converted CTranslate2 Whisper %s to a transformers folder %s", ct2_dir, target)
    return target
