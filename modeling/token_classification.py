"""Token classification (`model.task = "token-classification"`, docs/token-classification.md): a
Hugging Face model with a classification head over a fixed label set, LoRA on its layers and the
head trained whole (PEFT's `modules_to_save`), so an adapter is the LoRA factors plus the head.

An encoder (BERT, PubMedBERT) loads as `AutoModelForTokenClassification` with a `classifier`;
a decoder such as the embedded SmolLM2 as `LlamaForTokenClassification` with a `score` head,
whose tokens see only the words to their left.

What a label means (BIO over entity types) is the task layer's (clinical_ie/tagging.py): here
a sentence arrives as its words' character spans with one label id per word. Each word is
tokenized on its own, with the whitespace before it, so its tokens are its own; its tag sits on
its last token, the first one of a decoder that has seen the whole word.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .training import BatchStep

GENERATIVE = "generative"
TOKEN_CLASSIFICATION = "token-classification"
MODEL_TASKS: tuple[str, ...] = (GENERATIVE, TOKEN_CLASSIFICATION)
# Where transformers' token-classification models keep their head: encoders (BERT, RoBERTa)
# `classifier`, decoders (LLaMA, Qwen2, Mistral) `score`.
HEAD_NAMES: tuple[str, ...] = ("classifier", "score")
LABELS_FILE = "token_labels.json"  # beside adapter_config.json: the head's labels, in order


@dataclass(frozen=True)
class Tagged:
    """One sentence for the tagger: its token ids, the token that carries each word's label
    (-1: the word has no token of its own, or lost it to the length cap, and is predicted as
    label 0), each word's gold label id (empty when only predicting) and the label ids it may
    take (empty: all)."""

    input_ids: tuple[int, ...]
    positions: tuple[int, ...]
    tags: tuple[int, ...] = ()
    allowed: tuple[int, ...] = ()
    cut: int = 0  # words past the length cap

    @property
    def prefix(self) -> tuple[int, ...]:
        """No shared prefix (what training's batching groups by)."""
        return ()

    @property
    def answer_len(self) -> int:
        """Words with a gold label and a token: what the loss sums over."""
        return sum(1 for p in self.positions if p >= 0) if self.tags else 0


def _special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a text ([CLS] and [SEP] for BERT;
    none, or a BOS, for a decoder)."""
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for i in range(len(full) - len(bare) + 1):
        if full[i : i + len(bare)] == bare:
            return full[:i], full[i + len(bare) :]
    return [], []


def encode_words(tokenizer, text: str, words: Sequence[tuple[int, int]], max_length: int,
                 tags: Sequence[int] = (), allowed: Sequence[int] = ()) -> Tagged:
    """A sentence's words as token ids, each word tokenized with the whitespace before it; at
    most `max_length` tokens (special tokens included): words past it keep no token (`cut`)."""
    if tags and len(tags) != len(words):
        raise ValueError(f"{len(words)} words but {len(tags)} tags")
    before, after = _special_tokens(tokenizer)
    ends = [end for _, end in words]
    pieces = [text[previous:end] for previous, end in zip([0, *ends], ends)]
    ids, positions, cut = list(before), [], 0
    room = max_length - len(after)
    for piece_ids in tokenizer(pieces, add_special_tokens=False)["input_ids"] if pieces else []:
        if piece_ids and not cut and len(ids) + len(piece_ids) <= room:
            ids.extend(piece_ids)
            positions.append(len(ids) - 1)
        else:
            cut += bool(piece_ids)  # once one word is past the cap, so is every later one
            positions.append(-1)
    return Tagged(tuple(ids + after), tuple(positions), tuple(tags), tuple(allowed), cut)


def collate_tagged(batch: Sequence[Tagged], pad_id: int, device) -> dict:
    """Right-padded ids and mask, label ids at each word's token (-100 elsewhere)."""
    length = max(len(e.input_ids) for e in batch)
    input_ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), length), dtype=torch.long)
    labels = torch.full((len(batch), length), -100, dtype=torch.long)
    for i, e in enumerate(batch):
        input_ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids, dtype=torch.long)
        attention[i, : len(e.input_ids)] = 1
        for position, tag in zip(e.positions, e.tags):
            if position >= 0:
                labels[i, position] = tag
    return {"input_ids": input_ids.to(device), "attention_mask": attention.to(device), "labels": labels.to(device),
            "allowed": [e.allowed for e in batch], "tokens": sum(len(e.input_ids) for e in batch),
            "answer_tokens": sum(e.answer_len for e in batch)}


def _logits(model, batch: dict) -> torch.Tensor:
    """Float logits, each row's labels outside its `allowed` ones at -inf: an instance asks
    only for its site's types, so the other types' labels neither train nor predict there."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    mask = torch.zeros(logits.shape[0], logits.shape[-1], dtype=torch.bool, device=logits.device)
    for i, allowed in enumerate(batch["allowed"]):
        if allowed:
            mask[i, list(allowed)] = True
        else:
            mask[i] = True
    return logits.masked_fill(~mask[:, None, :], float("-inf"))


def _summed_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100,
                           reduction="sum")


def tag_loss(model, batch: dict) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over the labelled words, and their count."""
    return _summed_loss(_logits(model, batch), batch["labels"]), batch["answer_tokens"]


TAGGING = BatchStep(collate_tagged, tag_loss)  # what `train_round` trains a tagger with


@torch.no_grad()
def run_tagger(model, examples: Sequence[Tagged], pad_id: int, batch_size: int = 16) -> tuple[float, int, list[list[int]]]:
    """One pass over `examples`: the summed loss over their gold labels and its count (0, 0
    without gold), and each word's predicted label id (0 for words without a token)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loss_sum, count = 0.0, 0
    predicted: list[list[int]] = [[] for _ in examples]
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = collate_tagged([examples[i] for i in idx], pad_id, device)
        logits = _logits(model, batch)
        if batch["answer_tokens"]:
            loss_sum += float(_summed_loss(logits, batch["labels"]))
            count += batch["answer_tokens"]
        best = logits.argmax(dim=-1).tolist()
        for row, i in enumerate(idx):
            predicted[i] = [best[row][p] if p >= 0 else 0 for p in examples[i].positions]
    model.train(was_training)
    return loss_sum, count, predicted


def load_token_classifier(name: str, labels: Sequence[str], quantization: str = "auto", dtype: str = "auto",
                          seed: int = 0):
    """The model with a fresh classification head over `labels` (initialised from `seed`);
    returns (model, tokenizer)."""
    from transformers import AutoModelForTokenClassification

    from .base import load_base_model

    if len(set(labels)) != len(labels) or not labels:
        raise ValueError(f"token classification: expected distinct labels, got {list(labels)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, tokenizer = load_base_model(name, quantization, dtype, AutoModelForTokenClassification,
                                           num_labels=len(labels), id2label=dict(enumerate(labels)),
                                           label2id={label: i for i, label in enumerate(labels)})
    head_name(model)  # refuse a model without a known head now, not at LoRA time
    return model, tokenizer


def head_name(model) -> str:
    """The attribute holding the model's classification head (`HEAD_NAMES`); of a PeftModel,
    its base model's."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for name in HEAD_NAMES:
        if isinstance(getattr(base, name, None), torch.nn.Module):
            return name
    raise ValueError(f"{type(base).__name__} has no classification head named {list(HEAD_NAMES)}; "
                     "token classification needs an AutoModelForTokenClassification model")


def load_for_task(task: str, name: str, quantization: str, dtype: str, lora, seed: int = 0,
                  labels: Sequence[str] = ()):
    """The run's model with its initial LoRA adapter (from `seed`) and its tokenizer: for
    GENERATIVE the causal LM, for TOKEN_CLASSIFICATION the model with a fresh head over
    `labels`, trained and sent with the adapter. The coordinator and every site build it alike,
    so both hold the same adapter keys. `lora`: modeling.lora.LoraSettings."""
    from .base import load_base_model, resolve_model_path
    from .lora import attach_lora

    if task not in MODEL_TASKS:
        raise ValueError(f"model.task: {task!r} is not one of {list(MODEL_TASKS)}")
    if task == GENERATIVE:
        model, tokenizer = load_base_model(name, quantization, dtype)
        head = None
    else:
        model, tokenizer = load_token_classifier(name, labels, quantization, dtype, seed=seed)
        head = head_name(model)
    return attach_lora(model, lora, seed=seed, base_model_name=resolve_model_path(name), head=head), tokenizer


def save_labels(folder: Path, labels: Sequence[str]) -> Path:
    """Write the head's labels beside an adapter (`LABELS_FILE`)."""
    path = Path(folder) / LABELS_FILE
    path.write_text(json.dumps({"labels": list(labels)}, indent=2) + "\n")
    return path


def read_labels(folder: Path) -> tuple[str, ...]:
    """The head's labels saved beside a token-classification adapter."""
    path = Path(folder) / LABELS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: a token-classification adapter keeps its head's labels "
                                "there (written with every adapter a token-classification run saves)")
    try:
        labels = json.loads(path.read_text())["labels"]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: expected a JSON object with a list 'labels' ({type(err).__name__})") from None
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels):
        raise ValueError(f"{path}: 'labels' must be a non-empty list of strings")
    return tuple(labels)


def adapter_task(folder: Path) -> str:
    """`TOKEN_CLASSIFICATION` for an adapter folder whose PEFT config is a token-classification
    one, else `GENERATIVE`."""
    path = Path(folder) / "adapter_config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (not a PEFT adapter folder)")
    return TOKEN_CLASSIFICATION if json.loads(path.read_text()).get("task_type") == "TOKEN_CLS" else GENERATIVE
