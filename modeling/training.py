"""Local LoRA training and loss evaluation on (chat prompt, answer) pairs.

The loss covers answer tokens only, and the output layer (a fifth of a small model's
arithmetic) is applied to answer positions only, through `logits_to_keep`. The
learning-rate schedule is a pure function of the global step, so a site derives its
position from `server-round` and the schedule continues across rounds even when
every round runs in a fresh process.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

SCHEDULER_CHOICES = ("cosine", "linear", "constant")


@dataclass(frozen=True)
class Encoded:
    """One training instance: prompt tokens followed by `answer_len` answer tokens."""

    input_ids: tuple[int, ...]
    answer_len: int


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
    max_length: int = 384
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


def encode(tokenizer, messages: list[dict[str, str]], answer: str | None) -> Encoded:
    """Tokenize a chat prompt (with the generation prompt) and, if given, its answer."""
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if answer is None:
        return Encoded(tuple(prompt_ids), 0)
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return Encoded(tuple(prompt_ids + answer_ids), len(answer_ids))


def encode_all(
    tokenizer, pairs: Iterable[tuple[list[dict[str, str]], str]], max_length: int
) -> tuple[list[Encoded], int]:
    """Encode (messages, answer) pairs; drop (and count) those longer than max_length,
    since truncating an answer would teach the model to stop mid-answer."""
    kept, dropped = [], 0
    for messages, answer in pairs:
        enc = encode(tokenizer, messages, answer)
        if len(enc.input_ids) > max_length:
            dropped += 1
        else:
            kept.append(enc)
    if dropped:
        log.warning("dropped %d instance(s) longer than train.max-length=%d tokens", dropped, max_length)
    return kept, dropped


def collate(batch: Sequence[Encoded], pad_id: int, device) -> dict[str, torch.Tensor | int]:
    """Left-pad so every answer ends at the last position; explicit position ids keep
    padded rows positioned as if unpadded."""
    length = max(len(e.input_ids) for e in batch)
    keep = min(length, max(e.answer_len for e in batch) + 1)
    input_ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), length), dtype=torch.long)
    labels = torch.full((len(batch), length), -100, dtype=torch.long)
    for i, e in enumerate(batch):
        n = len(e.input_ids)
        ids = torch.tensor(e.input_ids, dtype=torch.long)
        input_ids[i, length - n :] = ids
        attention[i, length - n :] = 1
        if e.answer_len:
            labels[i, length - e.answer_len :] = ids[n - e.answer_len :]
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": attention.to(device),
        "position_ids": position_ids.to(device),
        "labels": labels.to(device),
        "keep": keep,
        "tokens": sum(len(e.input_ids) for e in batch),  # non-padding tokens
        # Counted here, on the host: counting the labels on a GPU would stall every step.
        "answer_tokens": sum(e.answer_len for e in batch),
    }


def answer_loss(model, batch: dict) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over answer tokens, and their count."""
    keep = batch["keep"]
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        logits_to_keep=keep,
        use_cache=False,
    )
    logits = out.logits[:, :-1, :].float()
    labels = batch["labels"][:, -keep + 1 :] if keep > 1 else batch["labels"][:, :0]
    count = batch["answer_tokens"]
    loss = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum"
    )
    return loss, count


def _batches(examples: Sequence[Encoded], batch_size: int, rng: random.Random) -> list[list[Encoded]]:
    """Shuffle, then group similar lengths (less padding) and shuffle the groups."""
    order = list(examples)
    rng.shuffle(order)
    window = batch_size * 16
    batches = []
    for i in range(0, len(order), window):
        chunk = sorted(order[i : i + window], key=lambda e: len(e.input_ids))
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
            batch = collate(queue.pop(), pad_id, device)
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
def mean_answer_loss(model, examples: Sequence[Encoded], pad_id: int, batch_size: int = 8) -> float:
    """Mean cross-entropy per answer token (the validation loss Fed-MedLoRA+ weights by)."""
    if not examples:
        raise ValueError("no validation instances to compute a loss on")
    was_training = model.training
    model.eval()
    device = _device(model)
    ordered = sorted(examples, key=lambda e: len(e.input_ids))
    total, count = 0.0, 0
    for i in range(0, len(ordered), batch_size):
        loss, n = answer_loss(model, collate(ordered[i : i + batch_size], pad_id, device))
        total += float(loss)
        count += n
    model.train(was_training)
    return total / max(count, 1)
