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


# A WordPiece vocabulary that spells any lower-case ASCII word letter by letter (every other
# character is [UNK]), plus a few whole words, so a tiny BERT tokenizes real notes offline.
_BERT_CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789"
_BERT_SYMBOLS = ".,;:!?()[]{}-+/\\%'\"<>=*&#@$^_~`|"
_BERT_WORDS = ("the", "patient", "pain", "chest", "mg", "with", "and", "of", "was", "in")


def make_tiny_bert(folder: Path, seed: int = 0) -> Path:
    """A tiny random BERT encoder (no head, as pretrained encoders ship) and its tokenizer,
    saved in `folder`."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *_BERT_CHARACTERS, *_BERT_SYMBOLS,
             *(f"##{c}" for c in _BERT_CHARACTERS), *_BERT_WORDS]
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512, initializer_range=0.2)
    torch.manual_seed(seed)
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
