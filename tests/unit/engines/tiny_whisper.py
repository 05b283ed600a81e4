"""A tiny random Whisper (transformers), built locally: no download, garbage transcripts.

Shared by the transformers backend's plumbing tests and the CTranslate2 conversion round trip.
"""

from __future__ import annotations

import json

import torch
import transformers

SPECIAL_TOKENS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|de|>", "<|transcribe|>",
                  "<|translate|>", "<|notimestamps|>", "<|startofprev|>", "<|nocaptions|>"]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map (the alphabet of Whisper's byte-level BPE)."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def build_tiny_whisper(folder) -> dict[str, int]:
    """A random 1-layer Whisper with a byte-level vocab saved to ``folder``; its special token ids."""
    vocab = {char: i for i, char in enumerate(_bytes_to_unicode().values())}
    for merged in ("Ġt", "he", "Ġthe"):
        vocab[merged] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\nĠ t\nh e\nĠt he\n")
    # Positional: the file arguments are vocab_file/merges_file in transformers 4, vocab/merges in 5.
    tokenizer = transformers.WhisperTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"),
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )
    ids = dict(zip(SPECIAL_TOKENS, tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS)))
    processor = transformers.WhisperProcessor(
        feature_extractor=transformers.WhisperFeatureExtractor(feature_size=80), tokenizer=tokenizer
    )
    config = transformers.WhisperConfig(
        vocab_size=len(tokenizer), num_mel_bins=80, d_model=16, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        max_source_positions=1500, max_target_positions=64,
        pad_token_id=ids["<|endoftext|>"], bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|endoftext|>"], decoder_start_token_id=ids["<|startoftranscript|>"],
        suppress_tokens=[], begin_suppress_tokens=[],
    )
    torch.manual_seed(0)
    transformers.WhisperForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return ids
