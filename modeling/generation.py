"""Batched greedy generation for extraction and scoring.

Prompts that share an instruction prefix (see `modeling.training.encode`) are batched
together: the prefix runs once per batch and its key/value cache is broadcast to the
batch, then `generate` continues from it over the per-instance suffixes."""

from __future__ import annotations

from typing import Sequence

import torch
from tqdm.auto import tqdm

from .training import Encoded, cache_keyword, encode, prefix_cache, prefix_groups


@torch.no_grad()
def generate_answers(
    model,
    tokenizer,
    prompts: Sequence[list[dict[str, str]]],
    max_new_tokens: int = 128,
    batch_size: int = 16,
    description: str = "generate",
    prefix_end: str | None = None,
    share_prefix: bool = True,
) -> list[str]:
    """Greedy answers to chat prompts, in the order given. With `prefix_end` (and
    `share_prefix`), prompts are batched by shared prefix, which runs once per batch."""
    encoded = [encode(tokenizer, messages, None, prefix_end) for messages in prompts]
    groups = prefix_groups(encoded) if share_prefix else [list(range(len(encoded)))]
    answers: list[str] = [""] * len(encoded)
    was_training = model.training
    model.eval()
    device = next(p for p in model.parameters()).device
    with tqdm(total=len(encoded), desc=description, unit="prompt", leave=False, disable=None) as bar:
        for group in groups:
            ordered = sorted(group, key=lambda i: len(encoded[i].input_ids))
            for start in range(0, len(ordered), batch_size):
                idx = ordered[start : start + batch_size]
                texts = _generate_batch(model, tokenizer, [encoded[i] for i in idx], max_new_tokens, device,
                                        share_prefix)
                for i, text in zip(idx, texts):
                    answers[i] = text
                bar.update(len(idx))
    model.train(was_training)
    return answers


def _generate_batch(model, tokenizer, batch: Sequence[Encoded], max_new_tokens: int, device,
                    share_prefix: bool) -> list[str]:
    """One batch: left-padded prompts, or the shared prefix, then the left-padded suffixes
    (pads between prefix and suffix are masked, and generate derives each row's positions
    from the mask)."""
    pad_id = tokenizer.pad_token_id
    prefix = batch[0].prefix
    shared = share_prefix and bool(prefix) and all(e.prefix == prefix for e in batch)
    skip = len(prefix) if shared else 0
    rows = [e.input_ids[skip:] for e in batch]
    length = max(len(r) for r in rows)
    input_ids = torch.full((len(batch), skip + length), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), skip + length), dtype=torch.long)
    if shared:
        input_ids[:, :skip] = torch.tensor(prefix)
        attention[:, :skip] = 1
    for row, ids in enumerate(rows):
        input_ids[row, skip + length - len(ids) :] = torch.tensor(ids)
        attention[row, skip + length - len(ids) :] = 1
    kwargs = {}
    if shared:
        kwargs[cache_keyword(model)] = prefix_cache(model, input_ids[:1, :skip].to(device), len(batch))
    out = model.generate(
        input_ids=input_ids.to(device),
        attention_mask=attention.to(device),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        use_cache=True,
        pad_token_id=pad_id,
        eos_token_id=tokenizer.eos_token_id,
        **kwargs,
    )
    return [tokenizer.decode(out[row, skip + length :], skip_special_tokens=True) for row in range(len(batch))]
