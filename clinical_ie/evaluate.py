"""Turning documents into training pairs, and scoring a model on instances (validation
loss on the reference answers plus strict/lenient F1 of its generated answers)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

from data_loaders.document import Document
from modeling.generation import generate_answers
from modeling.training import Encoded, encode_all, mean_answer_loss

from .instances import Instance, make_ner_instances
from .prompt import build_messages, target_text
from .scoring import EntityScorer, EntityScores


def ner_instances(docs: Sequence[Document], entity_types: Sequence[str]) -> list[Instance]:
    instances: list[Instance] = []
    for doc in docs:
        made, _ = make_ner_instances(doc, entity_types)
        instances += made
    return instances


def training_pairs(instances: Sequence[Instance]) -> list[tuple[list[dict[str, str]], str]]:
    return [(build_messages(inst), target_text(inst)) for inst in instances]


def stable_subset(instances: Sequence[Instance], limit: int) -> list[Instance]:
    """`limit` instances chosen by a hash of their position in the corpus (0 = all),
    so every run and every strategy scores the same ones."""
    if not limit or limit >= len(instances):
        return list(instances)
    key = lambda i: hashlib.sha256(f"{i.doc_id}:{i.offset}".encode()).hexdigest()  # noqa: E731
    return sorted(sorted(instances, key=key)[:limit], key=lambda i: (i.doc_id, i.offset))


@dataclass
class Evaluation:
    loss: float
    scores: EntityScores
    num_instances: int

    def to_metrics(self) -> dict[str, float]:
        return {"val-loss": self.loss, **self.scores.to_metrics(), "num-examples": self.num_instances}


class InstanceEvaluator:
    """Scores adapters on one fixed set of instances; the tokenization is done once."""

    def __init__(self, tokenizer, instances: Sequence[Instance], max_length: int,
                 max_new_tokens: int = 96, batch_size: int = 16) -> None:
        if not instances:
            raise ValueError("no instances to evaluate on")
        self.tokenizer = tokenizer
        self.instances = list(instances)
        self.encoded: list[Encoded]
        self.encoded, _ = encode_all(tokenizer, training_pairs(self.instances), max_length)
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size

    def loss(self, model) -> float:
        return mean_answer_loss(model, self.encoded, self.tokenizer.pad_token_id, self.batch_size)

    def generate(self, model, description: str = "score") -> list[str]:
        prompts = [build_messages(inst) for inst in self.instances]
        return generate_answers(model, self.tokenizer, prompts, self.max_new_tokens, self.batch_size, description)

    def scores(self, model, description: str = "score") -> EntityScores:
        scorer = EntityScorer()
        for inst, answer in zip(self.instances, self.generate(model, description)):
            scorer.add(inst, answer)
        return scorer.result()

    def evaluate(self, model, description: str = "score") -> Evaluation:
        return Evaluation(self.loss(model), self.scores(model, description), len(self.instances))
