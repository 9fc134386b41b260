"""Turning documents into training pairs, and scoring a model on instances (validation
loss on the reference answers plus strict/lenient F1 of its generated answers, entities
and relations alike)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from data_loaders.document import Document
from modeling.generation import generate_answers
from modeling.training import Encoded, encode_all, mean_answer_loss

from .instances import NER, RE, TASKS, Instance, make_instances, make_ner_instances
from .prompt import build_messages, target_text
from .relation_scoring import RelationScorer, RelationScores
from .scoring import EntityScorer, EntityScores

# A site whose corpus annotates only the entities in relations (ADE): entity precision is
# not measured, entity recall and relation scores are (data_loaders.mapping's score_by).
SCORE_BY_ENTITY_RECALL = "relations-and-entity-recall"
SCORE_BY: tuple[str, ...] = (SCORE_BY_ENTITY_RECALL,)

_PRF_KEYS = tuple(f"{m}-{s}" for m in ("strict", "lenient") for s in ("precision", "recall", "f1"))
# Every site reports exactly these keys, whatever tasks it has: Flower's FedAvg rejects a
# round whose replies differ. Unprefixed keys are the entity scores (as before relations).
METRIC_KEYS: tuple[str, ...] = (
    "val-loss", *_PRF_KEYS, "unaligned", "malformed",
    *(f"re-{k}" for k in _PRF_KEYS), "re-unaligned", "re-malformed",
    "ner-instances", "re-instances", "num-examples",
)


def ner_instances(docs: Sequence[Document], entity_types: Sequence[str]) -> list[Instance]:
    instances: list[Instance] = []
    for doc in docs:
        made, _ = make_ner_instances(doc, entity_types)
        instances += made
    return instances


def task_instances(
    docs: Sequence[Document],
    entity_types: Sequence[str],
    relation_types: Sequence[str],
    tasks: Sequence[str] = TASKS,
) -> list[Instance]:
    """NER and relation instances of ``docs``, mixed document by document (multi-task)."""
    instances: list[Instance] = []
    for doc in docs:
        made, _ = make_instances(doc, entity_types, relation_types, tasks)
        instances += made
    return instances


def site_instances(site, split: str, tasks: Sequence[str] = TASKS) -> list[Instance]:
    """The instances of one split of a site (`data_loaders.sites.SiteData`), asking only
    for the types the site annotates."""
    return task_instances(site.splits[split], site.entity_types, site.relation_types, tasks)


def training_pairs(instances: Sequence[Instance]) -> list[tuple[list[dict[str, str]], str]]:
    return [(build_messages(inst), target_text(inst)) for inst in instances]


def stable_subset(instances: Sequence[Instance], limit: int) -> list[Instance]:
    """`limit` instances chosen by a hash of their position in the corpus (0 = all),
    so every run and every strategy scores the same ones."""
    if not limit or limit >= len(instances):
        return list(instances)

    def key(i: Instance) -> str:
        # NER keys are unchanged from before relations existed, so NER subsets are too.
        where = f"{i.doc_id}:{i.offset}" + ("" if i.task == NER else f":{i.task}")
        return hashlib.sha256(where.encode()).hexdigest()

    chosen = sorted(instances, key=key)[:limit]
    return sorted(chosen, key=lambda i: (i.doc_id, i.offset, TASKS.index(i.task)))


def check_score_by(score_by: str | None) -> None:
    """Raise for a ``score_by`` other than None (score everything) or those in SCORE_BY."""
    if score_by is not None and score_by not in SCORE_BY:
        raise ValueError(f"score_by: expected None or one of {list(SCORE_BY)}, got {score_by!r}")


@dataclass
class Evaluation:
    """Validation loss over all instances, entity scores of the NER instances and relation
    scores of the RE instances. ``num_ner_instances`` defaults to all of them."""

    loss: float
    scores: EntityScores
    num_instances: int
    relations: RelationScores = field(default_factory=lambda: RelationScorer().result())
    num_ner_instances: int | None = None
    num_re_instances: int = 0

    def __post_init__(self) -> None:
        if self.num_ner_instances is None:
            self.num_ner_instances = self.num_instances - self.num_re_instances

    def to_metrics(self) -> dict[str, float]:
        """The keys of ``METRIC_KEYS``, in that order, at every site: relation scores are
        0.0 where a site has no relation instances, entity scores 0.0 where it has no NER
        ones, entity precision and F1 0.0 under ``relations-and-entity-recall``."""
        return {
            "val-loss": self.loss,
            **self.scores.to_metrics(),
            **self.relations.to_metrics("re-"),
            "ner-instances": self.num_ner_instances,
            "re-instances": self.num_re_instances,
            "num-examples": self.num_instances,
        }

    def to_markdown(self) -> str:
        """The entity table and the relation table, each under a heading."""
        parts = [f"Validation loss: {self.loss:.4f} over {self.num_instances} instances.", ""]
        for title, count, scores in (("Entities", self.num_ner_instances, self.scores),
                                     ("Relations", self.num_re_instances, self.relations)):
            parts.append(f"### {title} ({count} instances)\n")
            parts.append(scores.to_markdown() if count else f"No {title.lower()} scored.")
            parts.append("")
        return "\n".join(parts).rstrip() + "\n"


def score_outputs(
    instances: Sequence[Instance], outputs: Sequence[str], score_by: str | None = None
) -> tuple[EntityScores, RelationScores]:
    """Score model outputs (one per instance, in order) without a model: NER instances by
    the entity scorer, RE instances by the relation scorer."""
    check_score_by(score_by)
    if len(instances) != len(outputs):
        raise ValueError(f"{len(instances)} instances but {len(outputs)} outputs")
    entities = EntityScorer(recall_only=score_by == SCORE_BY_ENTITY_RECALL)
    relations = RelationScorer()
    for inst, output in zip(instances, outputs):
        (relations if inst.task == RE else entities).add(inst, output)
    return entities.result(), relations.result()


def evaluation_from_outputs(
    instances: Sequence[Instance], outputs: Sequence[str], loss: float, score_by: str | None = None
) -> Evaluation:
    """An ``Evaluation`` from a validation loss and already generated outputs."""
    entities, relations = score_outputs(instances, outputs, score_by)
    num_re = sum(inst.task == RE for inst in instances)
    return Evaluation(loss, entities, len(instances), relations, len(instances) - num_re, num_re)


class InstanceEvaluator:
    """Scores adapters on one fixed set of instances (NER, RE or both); the tokenization
    is done once. ``score_by`` is the site's (see ``SCORE_BY``): with
    ``"relations-and-entity-recall"`` entity precision is not measured."""

    def __init__(self, tokenizer, instances: Sequence[Instance], max_length: int,
                 max_new_tokens: int = 96, batch_size: int = 16, score_by: str | None = None) -> None:
        if not instances:
            raise ValueError("no instances to evaluate on")
        check_score_by(score_by)
        self.tokenizer = tokenizer
        self.instances = list(instances)
        self.encoded: list[Encoded]
        self.encoded, _ = encode_all(tokenizer, training_pairs(self.instances), max_length)
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.score_by = score_by

    def loss(self, model) -> float:
        return mean_answer_loss(model, self.encoded, self.tokenizer.pad_token_id, self.batch_size)

    def generate(self, model, description: str = "score",
                 instances: Sequence[Instance] | None = None) -> list[str]:
        """Answers for ``instances`` (default: all), in one batched generation."""
        chosen = self.instances if instances is None else instances
        if not chosen:
            return []
        prompts = [build_messages(inst) for inst in chosen]
        return generate_answers(model, self.tokenizer, prompts, self.max_new_tokens, self.batch_size, description)

    def scores(self, model, description: str = "score") -> EntityScores:
        """Entity scores of the NER instances (only those are generated)."""
        ner = [inst for inst in self.instances if inst.task == NER]
        return score_outputs(ner, self.generate(model, description, ner), self.score_by)[0]

    def relation_scores(self, model, description: str = "score") -> RelationScores:
        """Relation scores of the RE instances (only those are generated)."""
        re_ = [inst for inst in self.instances if inst.task == RE]
        return score_outputs(re_, self.generate(model, description, re_), self.score_by)[1]

    def evaluate(self, model, description: str = "score") -> Evaluation:
        loss = self.loss(model)
        return evaluation_from_outputs(self.instances, self.generate(model, description), loss, self.score_by)
