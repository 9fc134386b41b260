"""Batched greedy generation for extraction and scoring."""

from __future__ import annotations

from typing import Sequence

import torch
from tqdm.auto import tqdm

from .training import encode


@torch.no_grad()
def generate_answers(
    model,
    tokenizer,
    prompts: Sequence[list[dict[str, str]]],
    max_new_tokens: int = 128,
    batch_size: int = 16,
    description: str = "generate",
) -> list[str]:
    """Greedy answers to chat prompts, in the order given."""
    encoded = [encode(tokenizer, messages, None).input_ids for messages in prompts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    answers: list[str] = [""] * len(encoded)
    was_training = model.training
    model.eval()
    device = next(p for p in model.parameters()).device
    pad_id = tokenizer.pad_token_id
    with tqdm(total=len(order), desc=description, unit="prompt", leave=False, disable=None) as bar:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            length = max(len(encoded[i]) for i in idx)
            input_ids = torch.full((len(idx), length), pad_id, dtype=torch.long)
            attention = torch.zeros((len(idx), length), dtype=torch.long)
            for row, i in enumerate(idx):
                ids = encoded[i]
                input_ids[row, length - len(ids) :] = torch.tensor(ids)
                attention[row, length - len(ids) :] = 1
            out = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                use_cache=True,
                pad_token_id=pad_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            for row, i in enumerate(idx):
                answers[i] = tokenizer.decode(out[row, length:], skip_special_tokens=True)
            bar.update(len(idx))
    model.train(was_training)
    return answers
