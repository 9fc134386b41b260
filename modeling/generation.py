"""Batched greedy generation for extraction and scoring.

Prompts that share an instruction prefix (see `modeling.training.encode`) are batched
together: the prefix runs once per batch and its key/value cache is broadcast to the
batch, then `generate` continues from it over the per-instance suffixes. With `constraints`,
the strings an answer copies are held to its sentence (`modeling.constrained`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessorList

from .constrained import Constraint, SentenceConstraint
from .training import Encoded, cache_keyword, collate, encode, prefix_cache, prefix_groups


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
    constraints: Sequence[Constraint | None] | None = None,
) -> list[str]:
    """Greedy answers to chat prompts, in the order given. With `prefix_end` (and
    `share_prefix`), prompts are batched by shared prefix, which runs once per batch.
    `constraints`: one per prompt (None: that answer is free), enforced by
    `modeling.constrained.SentenceConstraint` during generation."""
    if constraints is not None and len(constraints) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(constraints)} constraints")
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
                rows = None if constraints is None else [constraints[i] for i in idx]
                texts = _generate_batch(model, tokenizer, [encoded[i] for i in idx], max_new_tokens, device,
                                        share_prefix, rows)
                for i, text in zip(idx, texts):
                    answers[i] = text
                bar.update(len(idx))
    model.train(was_training)
    return answers


def _generate_batch(model, tokenizer, batch: Sequence[Encoded], max_new_tokens: int, device,
                    share_prefix: bool, constraints: Sequence[Constraint | None] | None = None) -> list[str]:
    """One batch laid out as training lays it out (`collate`): left-padded prompts, or the
    shared prefix once and the left-padded suffixes after it. Pads between prefix and
    suffix are masked, and generate derives each row's positions from the mask."""
    laid = collate(batch, tokenizer.pad_token_id, device, share_prefix)
    input_ids, kwargs = laid["input_ids"], {}
    if "prefix_ids" in laid:
        kwargs[cache_keyword(model)] = prefix_cache(model, laid["prefix_ids"], len(batch))
        input_ids = torch.cat([laid["prefix_ids"].expand(len(batch), -1), input_ids], dim=1)
    if constraints is not None and any(c is not None for c in constraints):
        kwargs["logits_processor"] = LogitsProcessorList(
            [SentenceConstraint(tokenizer, constraints, tokenizer.eos_token_id)])
    out = model.generate(
        input_ids=input_ids,
        attention_mask=laid["attention_mask"],
        max_new_tokens=max_new_tokens,
        do_sample=False,
        use_cache=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **kwargs,
    )
    start = input_ids.shape[1]
    return [tokenizer.decode(out[row, start:], skip_special_tokens=True) for row in range(len(batch))]
