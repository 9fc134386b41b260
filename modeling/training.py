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

import functools
import inspect
import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

SCHEDULER_CHOICES = ("cosine", "linear", "constant")
E = TypeVar("E")


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
    # Chosen on validation splits (docs/benchmarks.md, "Local training settings"); the
    # reference paper's 2e-4 is its value for 1B-8B models.
    learning_rate: float = 2.5e-4
    batch_size: int = 4
    local_epochs: float = 2.0
    max_steps: int = 0  # per round; 0 = no cap
    warmup_ratio: float = 0.05
    lr_scheduler: str = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_length: int = 512
    seed: int = 0
    loraplus_lr_ratio: float = 16.0  # LoRA+: B's learning rate over A's; 0 = plain LoRA (one rate)
    # A site's AdamW moments carry over from round to round, as the sweep's best setting
    # did (docs/benchmarks.md, "Local training settings").
    keep_optimizer_state: bool = True

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
            (self.loraplus_lr_ratio == 0 or self.loraplus_lr_ratio >= 1, "train.loraplus-lr-ratio",
             "0 (off) or a number >= 1"),
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
    encoded = (encode(tokenizer, messages, answer, prefix_end) for messages, answer in pairs)
    return drop_too_long(encoded, lambda enc: len(enc.input_ids) > max_length, max_length)


def drop_too_long(examples: Iterable[E], too_long: Callable[[E], bool], max_length: int) -> tuple[list[E], int]:
    """The examples that fit, and how many did not (logged, naming train.max-length)."""
    kept, dropped = [], 0
    for example in examples:
        if too_long(example):
            dropped += 1
        else:
            kept.append(example)
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


@dataclass(frozen=True)
class BatchStep:
    """What one training step computes: `collate(examples, pad_id, device)` makes a batch (a
    dict with its `tokens`), `loss(model, batch)` its summed loss and the count summed over.
    The default is the generative one (`collate`, `answer_loss`); token classification has its
    own (modeling/token_classification.py, `TAGGING`)."""

    collate: Callable[..., dict]
    loss: Callable[..., tuple[torch.Tensor, int]]


@dataclass
class TrainResult:
    loss: float
    steps: int
    tokens: int
    seconds: float
    optimizer_state: OptimizerState | None = None  # the moments after this round
    optimizer_restored: bool = False  # whether the round began from a previous round's moments

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
    optimizer_state: OptimizerState | None = None,
    step: BatchStep | None = None,
) -> TrainResult:
    """Train the adapter for one federated round (`server_round` is 1-based).

    `step`: how a batch becomes a loss (default: generative answers, `share_prefix` or not).

    With `proximal_mu` > 0 the FedProx term mu/2 * ||w - w_global||^2 over the
    trainable (adapter) weights is added, w_global being the weights at round start.
    With `settings.keep_optimizer_state`, AdamW starts from `optimizer_state` (the previous
    round's moments, when they fit this model) and the result carries the new moments.
    """
    if not examples:
        raise ValueError("no training instances at this site")
    steps = settings.steps_per_round(len(examples))
    total_steps = steps * num_rounds
    first_step = (server_round - 1) * steps
    rng = random.Random(f"{settings.seed}-{server_round}")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    anchor = [p.detach().clone() for p in params] if proximal_mu > 0 else None
    optimizer = make_optimizer(model, params, settings)
    restored = bool(settings.keep_optimizer_state and optimizer_state is not None
                    and optimizer_state.load_into(optimizer, named))
    scale = loss_scale(examples, settings.batch_size)
    device = _device(model)
    step = step or BatchStep(functools.partial(collate, share_prefix=share_prefix), answer_loss)
    model.train()

    loss_sum, loss_tokens, tokens, done = 0.0, 0, 0, 0
    start = time.perf_counter()
    queue: list[list[Encoded]] = []
    with tqdm(total=steps, desc=description, unit="step", leave=False, disable=None) as bar:
        while done < steps:
            if not queue:
                queue = _batches(examples, settings.batch_size, rng)
            batch = step.collate(queue.pop(), pad_id, device)
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * lr_factor(first_step + done, total_steps, settings)
            loss, count = step.loss(model, batch)
            objective = loss / scale
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
    kept = OptimizerState.from_optimizer(optimizer, named) if settings.keep_optimizer_state else None
    return TrainResult(loss_sum / max(loss_tokens, 1), done, tokens, seconds, kept, restored)


def loss_scale(examples: Sequence[Encoded], batch_size: int) -> float:
    """What a batch's summed answer-token loss is divided by: the answer tokens of an average
    batch of this site. A constant, so every answer token weighs the same whatever batch it
    lands in. Dividing by each batch's own token count instead made the tokens of short
    answers weigh far more, because batches are formed from instances of similar length:
    a batch of empty relation answers (`{}`, two tokens) gave each token about ten times the
    weight of a long answer's, and models learnt to answer `{}` (docs/architecture.md,
    "Loss weighting")."""
    return batch_size * sum(e.answer_len for e in examples) / len(examples)


def make_optimizer(model, params: list[torch.nn.Parameter], settings: TrainSettings) -> torch.optim.Optimizer:
    """AdamW over the adapter; with `loraplus_lr_ratio`, PEFT's LoRA+ groups (B at ratio
    times A's rate). Each group keeps its peak rate as `base_lr` for the schedule."""
    if settings.loraplus_lr_ratio:
        from peft.optimizers import create_loraplus_optimizer

        optimizer = create_loraplus_optimizer(model, torch.optim.AdamW, lr=settings.learning_rate,
                                              loraplus_lr_ratio=settings.loraplus_lr_ratio,
                                              weight_decay=settings.weight_decay)
    else:
        optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    for group in optimizer.param_groups:
        group["base_lr"] = group["lr"]
    return optimizer


@dataclass
class OptimizerState:
    """AdamW's moments by parameter name, and its step count: what a site keeps between
    rounds so a round continues the previous one's optimizer instead of restarting it."""

    moments: dict[str, torch.Tensor]  # "<param name>:exp_avg" and "<param name>:exp_avg_sq"
    step: int

    KINDS = ("exp_avg", "exp_avg_sq")

    @classmethod
    def from_optimizer(cls, optimizer: torch.optim.Optimizer, named) -> OptimizerState | None:
        moments, step = {}, 0
        for name, p in named:
            state = optimizer.state.get(p)
            if not state:
                return None  # a round without steps: nothing to keep
            for kind in cls.KINDS:
                moments[f"{name}:{kind}"] = state[kind].detach().to("cpu", copy=True)
            step = int(state["step"])
        return cls(moments, step)

    def load_into(self, optimizer: torch.optim.Optimizer, named) -> bool:
        """Set the moments of every named parameter; False (and nothing set) when they do
        not fit (another rank, other target modules)."""
        expected = {f"{n}:{k}": tuple(p.shape) for n, p in named for k in self.KINDS}
        if expected != {k: tuple(v.shape) for k, v in self.moments.items()}:
            log.warning("the kept optimizer state does not fit this adapter; starting it afresh")
            return False
        for name, p in named:
            optimizer.state[p] = {"step": torch.tensor(float(self.step)),
                                  **{k: self.moments[f"{name}:{k}"].to(p.device, p.dtype).clone()
                                     for k in self.KINDS}}
        return True


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
