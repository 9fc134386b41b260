"""Tiny random models (no download) with the real tokenizer of a given model folder."""

from __future__ import annotations

from pathlib import Path


def _tiny_config(arch: str, vocab_size: int):
    from transformers import LlamaConfig, Qwen2Config

    common = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                  tie_word_embeddings=True, initializer_range=0.2, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    return {"llama": LlamaConfig, "qwen2": Qwen2Config}[arch](**common)


def make_tiny_model(folder: Path, arch: str, tokenizer_dir: Path, seed: int = 0) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_tiny_config(arch, len(tokenizer)))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
