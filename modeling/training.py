"""Local LoRA training and loss evaluation on (chat prompt, answer) pairs.

The loss covers answer tokens only, and the output layer (a fifth of a small model's
arithmetic) is applied to answer positions only, through `logits_to_keep`. The
learning-rate schedule is a pure function of the global step, so a site derives its
position from `server-round` and the schedule continues across rounds even when
every round runs in a fresh process.

Shared prefix: most of a prompt is the instruction, the same for every instance of one
task and type set. An `Encoded` instance records how many of its leading tokens are that
instruction (`prefix_len`); batches are formed from instances with the same prefix, the
prefix runs once per batch (batch 1, with its key/value cache), the cache is broadcast
to the batch and only the per-instance suffixes (sentence and answer) run on it.
Gradients flow through the broadcast cache into the prefix's LoRA weights, so loss and
gradients equal the per-instance computation (`collate(..., share_prefix=False)`, kept
as the reference the tests compare against). See docs/architecture.md, "Shared prefix".
"""

from __future__ import annotations

import inspect
import logging
import math
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

SCHEDULER_CHOICES = ("cosine", "linear", "constant")


@dataclass(frozen=True)
class Encoded:
    """One training instance: prompt tokens followed by `answer_len` answer tokens; the
    first `prefix_len` prompt tokens are the instruction shared by every instance of the
    same task and type set (0: nothing shared)."""

    input_ids: tuple[int, ...]
    answer_len: int
    prefix_len: int = 0

    @property
    def prefix(self) -> tuple[int, ...]:
        return self.input_ids[: self.prefix_len]


@dataclass(frozen=True)
class TrainSettings:
    learning_rate: float = 2e-4
    batch_size: int = 4
    local_epochs: float = 2.0
    max_steps: int = 0  # per round; 0 = no cap
    warmup_ratio: float = 0.05
    lr_scheduler: str = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_length: int = 512
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [
            (self.learning_rate > 0, "train.learning-rate", "a positive number"),
            (self.batch_size >= 1, "train.batch-size", "an integer >= 1"),
            (self.local_epochs > 0, "train.local-epochs", "a positive number"),
            (self.max_steps >= 0, "train.max-steps", "an integer >= 0 (0 = no cap)"),
            (0 <= self.warmup_ratio < 1, "train.warmup-ratio", "a number in [0, 1)"),
            (self.lr_scheduler in SCHEDULER_CHOICES, "train.lr-scheduler", f"one of {list(SCHEDULER_CHOICES)}"),
            (self.max_grad_norm >= 0, "train.max-grad-norm", "a number >= 0 (0 = no clipping)"),
            (self.max_length >= 16, "train.max-length", "an integer >= 16"),
        ]
        for ok, key, expected in checks:
            if not ok:
                raise ValueError(f"{key}: expected {expected}, got {getattr(self, _attr(key))!r}")

    def steps_per_round(self, num_examples: int) -> int:
        steps = math.ceil(num_examples * self.local_epochs / self.batch_size)
        return min(steps, self.max_steps) if self.max_steps else steps


def _attr(key: str) -> str:
    return key.split(".", 1)[1].replace("-", "_")


def lr_factor(step: int, total_steps: int, settings: TrainSettings) -> float:
    """Multiplier of the base learning rate at global step `step` (0-based)."""
    warmup = math.ceil(settings.warmup_ratio * total_steps)
    if step < warmup:
        return (step + 1) / warmup
    if settings.lr_scheduler == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    if settings.lr_scheduler == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def encode(
    tokenizer, messages: list[dict[str, str]], answer: str | None, prefix_end: str | None = None
) -> Encoded:
    """Tokenize a chat prompt (with the generation prompt) and, if given, its answer.

    With `prefix_end`, the rendered prompt up to and including its first occurrence is the
    shared prefix: it and the rest are tokenized separately and concatenated, so training,
    scoring and generation all see exactly these ids whether or not they share the prefix.
    """
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    cut = prompt.find(prefix_end) if prefix_end else -1
    if cut >= 0:
        cut += len(prefix_end)
        prefix_ids = _token_ids(tokenizer, prompt[:cut])
        prompt_ids = prefix_ids + _token_ids(tokenizer, prompt[cut:])
    else:
        prefix_ids, prompt_ids = [], _token_ids(tokenizer, prompt)
    if answer is None:
        return Encoded(tuple(prompt_ids), 0, len(prefix_ids))
    answer_ids = _token_ids(tokenizer, answer) + [tokenizer.eos_token_id]
    return Encoded(tuple(prompt_ids + answer_ids), len(answer_ids), len(prefix_ids))


def _token_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_all(
    tokenizer,
    pairs: Iterable[tuple[list[dict[str, str]], str]],
    max_length: int,
    prefix_end: str | None = None,
) -> tuple[list[Encoded], int]:
    """Encode (messages, answer) pairs; drop (and count) those longer than max_length,
    since truncating an answer would teach the model to stop mid-answer."""
    kept, dropped = [], 0
    for messages, answer in pairs:
        enc = encode(tokenizer, messages, answer, prefix_end)
        if len(enc.input_ids) > max_length:
            dropped += 1
        else:
            kept.append(enc)
    if dropped:
        log.warning("dropped %d instance(s) longer than train.max-length=%d tokens", dropped, max_length)
    return kept, dropped


def collate(
    batch: Sequence[Encoded], pad_id: int, device, share_prefix: bool = True
) -> dict[str, torch.Tensor | int]:
    """Left-pad so every answer ends at the last position; explicit position ids keep
    padded rows positioned as if unpadded.

    When every instance has the same non-empty prefix (and `share_prefix`), the batch
    holds that prefix once (`prefix_ids`, shape 1 x P) and only the suffixes, left-padded
    after it: pad positions sit between prefix and suffix, masked out, and the suffix's
    position ids continue from P as if unpadded."""
    prefix = batch[0].prefix
    shared = share_prefix and bool(prefix) and all(e.prefix == prefix for e in batch)
    skip = len(prefix) if shared else 0
    rows = [e.input_ids[skip:] for e in batch]
    length = max(len(r) for r in rows)
    keep = min(length, max(e.answer_len for e in batch) + 1)
    input_ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), length), dtype=torch.long)
    labels = torch.full((len(batch), length), -100, dtype=torch.long)
    for i, (e, row) in enumerate(zip(batch, rows)):
        n = len(row)
        ids = torch.tensor(row, dtype=torch.long)
        input_ids[i, length - n :] = ids
        attention[i, length - n :] = 1
        if e.answer_len:
            labels[i, length - e.answer_len :] = ids[n - e.answer_len :]
    position_ids = skip + (attention.cumsum(-1) - 1).clamp(min=0)
    out: dict[str, torch.Tensor | int] = {
        "input_ids": input_ids.to(device),
        "attention_mask": attention.to(device),
        "position_ids": position_ids.to(device),
        "labels": labels.to(device),
        "keep": keep,
        "tokens": sum(len(e.input_ids) for e in batch),  # non-padding tokens, prefix counted per instance
        # Counted here, on the host: counting the labels on a GPU would stall every step.
        "answer_tokens": sum(e.answer_len for e in batch),
    }
    if shared:
        out["prefix_ids"] = torch.tensor([prefix], dtype=torch.long).to(device)
        full_mask = torch.cat([torch.ones((len(batch), skip), dtype=torch.long), attention], dim=1)
        out["attention_mask"] = full_mask.to(device)
    return out


def prefix_cache(model, prefix_ids: torch.Tensor, batch_size: int):
    """Run the shared prefix once and broadcast its key/value cache to `batch_size` rows.
    Under autograd the cache keeps its graph, so the suffixes' loss reaches the LoRA
    weights through the prefix too."""
    out = model(input_ids=prefix_ids, use_cache=True, logits_to_keep=1)
    cache = out[cache_keyword(model)]
    cache.batch_repeat_interleave(batch_size)
    return cache


def cache_keyword(model) -> str:
    """The name a model's forward takes its key/value cache by: `cache` in newer
    transformers releases, `past_key_values` before (the old name logs a warning)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def answer_loss(model, batch: dict) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over answer tokens, and their count."""
    return answer_token_losses(model, batch).sum(), batch["answer_tokens"]


def answer_token_losses(model, batch: dict) -> torch.Tensor:
    """Cross-entropy of every answer token, shape (rows, positions); 0 elsewhere."""
    keep = batch["keep"]
    shared = "prefix_ids" in batch
    cache = {cache_keyword(model): prefix_cache(model, batch["prefix_ids"], batch["input_ids"].shape[0])} if shared else {}
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        logits_to_keep=keep,
        use_cache=shared,
        **cache,
    )
    logits = out.logits[:, :-1, :].float()
    labels = batch["labels"][:, -keep + 1 :] if keep > 1 else batch["labels"][:, :0]
    losses = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="none"
    )
    return losses.reshape(labels.shape)


def by_prefix(examples: Sequence[Encoded]) -> list[list[Encoded]]:
    """Instances grouped by shared prefix, groups in order of first appearance."""
    return [[examples[i] for i in group] for group in prefix_groups(examples)]


def prefix_groups(examples: Sequence[Encoded]) -> list[list[int]]:
    """Positions of the instances, grouped by shared prefix in order of first appearance."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, e in enumerate(examples):
        groups.setdefault(e.prefix, []).append(i)
    return list(groups.values())


def _batches(examples: Sequence[Encoded], batch_size: int, rng: random.Random) -> list[list[Encoded]]:
    """Shuffle, then within each shared prefix group similar lengths (less padding) and
    shuffle the batches, so every batch shares one prefix."""
    order = list(examples)
    rng.shuffle(order)
    window = batch_size * 16
    batches = []
    for group in by_prefix(order):
        for i in range(0, len(group), window):
            chunk = sorted(group[i : i + window], key=lambda e: len(e.input_ids))
            batches += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


@dataclass
class TrainResult:
    loss: float
    steps: int
    tokens: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def _device(model) -> torch.device:
    return next(p for p in model.parameters()).device


def train_round(
    model,
    examples: Sequence[Encoded],
    settings: TrainSettings,
    pad_id: int,
    server_round: int,
    num_rounds: int,
    proximal_mu: float = 0.0,
    description: str = "train",
    share_prefix: bool = True,
) -> TrainResult:
    """Train the adapter for one federated round (`server_round` is 1-based).

    With `proximal_mu` > 0 the FedProx term mu/2 * ||w - w_global||^2 over the
    trainable (adapter) weights is added, w_global being the weights at round start.
    """
    if not examples:
        raise ValueError("no training instances at this site")
    steps = settings.steps_per_round(len(examples))
    total_steps = steps * num_rounds
    first_step = (server_round - 1) * steps
    rng = random.Random(f"{settings.seed}-{server_round}")
    params = [p for p in model.parameters() if p.requires_grad]
    anchor = [p.detach().clone() for p in params] if proximal_mu > 0 else None
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    device = _device(model)
    model.train()

    loss_sum, loss_tokens, tokens, done = 0.0, 0, 0, 0
    start = time.perf_counter()
    queue: list[list[Encoded]] = []
    with tqdm(total=steps, desc=description, unit="step", leave=False, disable=None) as bar:
        while done < steps:
            if not queue:
                queue = _batches(examples, settings.batch_size, rng)
            batch = collate(queue.pop(), pad_id, device, share_prefix)
            for group in optimizer.param_groups:
                group["lr"] = settings.learning_rate * lr_factor(first_step + done, total_steps, settings)
            loss, count = answer_loss(model, batch)
            objective = loss / max(count, 1)
            if anchor is not None:
                prox = sum(((p - a) ** 2).sum() for p, a in zip(params, anchor))
                objective = objective + 0.5 * proximal_mu * prox
            objective.backward()
            if settings.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss_sum += float(loss.detach())
            loss_tokens += count
            tokens += batch["tokens"]
            done += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / max(loss_tokens, 1):.3f}")
    seconds = time.perf_counter() - start
    model.eval()
    return TrainResult(loss_sum / max(loss_tokens, 1), done, tokens, seconds)


@torch.no_grad()
def mean_answer_loss(
    model, examples: Sequence[Encoded], pad_id: int, batch_size: int = 8, share_prefix: bool = True,
    description: str | None = None,
) -> float:
    """Mean cross-entropy per answer token (the validation loss Fed-MedLoRA+ weights by)."""
    if not examples:
        raise ValueError("no validation instances to compute a loss on")
    per_instance = instance_answer_losses(model, examples, pad_id, batch_size, share_prefix, description)
    return sum(loss for loss, _ in per_instance) / max(sum(n for _, n in per_instance), 1)


@torch.no_grad()
def instance_answer_losses(
    model, examples: Sequence[Encoded], pad_id: int, batch_size: int = 8, share_prefix: bool = True,
    description: str | None = None,
) -> list[tuple[float, int]]:
    """(summed answer-token cross-entropy, answer tokens) of every instance, in order.
    With a `description`, a progress bar shows (it is off where stderr is no terminal)."""
    was_training = model.training
    model.eval()
    device = _device(model)
    out: list[tuple[float, int]] = [(0.0, 0)] * len(examples)
    with tqdm(total=len(examples), desc=description, unit="instance", leave=False,
              disable=None if description else True) as bar:
        for group in prefix_groups(examples):
            ordered = sorted(group, key=lambda i: len(examples[i].input_ids))
            for start in range(0, len(ordered), batch_size):
                idx = ordered[start : start + batch_size]
                batch = collate([examples[i] for i in idx], pad_id, device, share_prefix)
                rows = answer_token_losses(model, batch).sum(dim=1)
                for i, loss in zip(idx, rows.tolist()):
                    out[i] = (loss, examples[i].answer_len)
                bar.update(len(idx))
    model.train(was_training)
    return out
