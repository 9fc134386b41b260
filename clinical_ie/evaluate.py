"""Turning documents into training pairs, and scoring a model on instances (validation
loss on the reference answers plus strict/lenient F1 of its generated answers, entities
and relations alike).

Relations are scored two ways. ``re-*``: the relation instances as built (given entities:
the gold entities listed, the relation step alone; end to end: the model finds the
arguments itself). ``re-e2e-*``: the whole pipeline, entity extraction then relation
extraction among the predicted entities (end-to-end mode: the same as ``re-*``)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from data_loaders.document import Document
from modeling.generation import generate_answers
from modeling.training import Encoded, encode_all, mean_answer_loss

from .align import predicted_entities
from .instances import (
    DEFAULT_RE_MODE,
    NER,
    RE,
    TASKS,
    Instance,
    check_re_mode,
    make_instances,
    make_ner_instances,
)
from .prompt import PREFIX_END, answer_constraint, build_messages, target_text
from .scoring import EntityScorer, EntityScores, RelationScorer, RelationScores

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
    *(f"re-e2e-{k}" for k in _PRF_KEYS), "re-e2e-unaligned", "re-e2e-malformed",
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
    re_mode: str = DEFAULT_RE_MODE,
) -> list[Instance]:
    """NER and relation instances of ``docs``, mixed document by document (multi-task);
    ``re_mode`` is how relation instances ask (``instances.RE_MODES``)."""
    check_re_mode(re_mode)
    instances: list[Instance] = []
    for doc in docs:
        made, _ = make_instances(doc, entity_types, relation_types, tasks, re_mode=re_mode)
        instances += made
    return instances


def site_instances(
    site, split: str, tasks: Sequence[str] = TASKS, re_mode: str = DEFAULT_RE_MODE
) -> list[Instance]:
    """The instances of one split of a site (`data_loaders.sites.SiteData`), asking only
    for the types the site annotates (``re_mode``: config key ``data.re-mode``)."""
    return task_instances(site.splits[split], site.entity_types, site.relation_types, tasks, re_mode)


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
    scores of the RE instances as built (``relations``; with ``given_entities``, on the
    gold entities) and through the pipeline (``relations_e2e``; 0 where not measured).
    ``num_ner_instances`` defaults to all of them."""

    loss: float
    scores: EntityScores
    num_instances: int
    relations: RelationScores = field(default_factory=lambda: RelationScorer().result())
    num_ner_instances: int | None = None
    num_re_instances: int = 0
    relations_e2e: RelationScores = field(default_factory=lambda: RelationScorer().result())
    given_entities: bool = False

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
            **self.relations_e2e.to_metrics("re-e2e-"),
            "ner-instances": self.num_ner_instances,
            "re-instances": self.num_re_instances,
            "num-examples": self.num_instances,
        }

    def to_markdown(self) -> str:
        """The entity table and the relation tables (with gold entities, end to end), each
        under a heading."""
        parts = [f"Validation loss: {self.loss:.4f} over {self.num_instances} instances.", ""]
        tables = [("Entities", self.num_ner_instances, self.scores)]
        if not self.num_re_instances:
            tables.append(("Relations", 0, self.relations))
        elif self.given_entities:
            tables += [("Relations with gold entities", self.num_re_instances, self.relations),
                       ("Relations end to end (entities predicted, then relations)",
                        self.num_re_instances, self.relations_e2e)]
        else:
            tables.append(("Relations end to end", self.num_re_instances, self.relations))
        for title, count, scores in tables:
            parts.append(f"### {title} ({count} instances)\n")
            parts.append(scores.to_markdown() if count else f"No {title.split()[0].lower()} scored.")
            parts.append("")
        return "\n".join(parts).rstrip() + "\n"


def score_outputs(
    instances: Sequence[Instance], outputs: Sequence[str], score_by: str | None = None
) -> tuple[EntityScores, RelationScores]:
    """Score model outputs (one per instance, in order) without a model: NER instances by
    the entity scorer, RE instances by the relation scorer."""
    entities, relations = _scorers(instances, outputs, score_by, "outputs")
    for inst, output in zip(instances, outputs):
        (relations if inst.task == RE else entities).add(inst, output)
    return entities.result(), relations.result()


def score_spans(
    instances: Sequence[Instance], spans: Sequence[Sequence[tuple[str, int, int]] | None], score_by: str | None = None
) -> tuple[EntityScores, RelationScores]:
    """``score_outputs`` for predictions that are spans already (token classification): one
    list of sentence-relative (type, start, end) per NER instance, scored by the same entity
    scorer; relation instances (their entry is ignored) score their gold as missed."""
    entities, relations = _scorers(instances, spans, score_by, "span lists")
    for inst, found in zip(instances, spans):
        if inst.task == RE:
            relations.add_relations(inst.relations, [], types=inst.relation_types)
        else:
            entities.add_spans(inst.entities, list(found or ()), types=inst.entity_types)
    return entities.result(), relations.result()


def _scorers(instances: Sequence[Instance], predictions: Sequence, score_by: str | None,
             what: str) -> tuple[EntityScorer, RelationScorer]:
    """Fresh scorers for `score_by`, once the predictions are known to be one per instance."""
    check_score_by(score_by)
    if len(instances) != len(predictions):
        raise ValueError(f"{len(instances)} instances but {len(predictions)} {what}")
    return EntityScorer(recall_only=score_by == SCORE_BY_ENTITY_RECALL), RelationScorer()


def evaluation_from_outputs(
    instances: Sequence[Instance], outputs: Sequence[str], loss: float, score_by: str | None = None,
    relations_e2e: RelationScores | None = None,
) -> Evaluation:
    """An ``Evaluation`` from a validation loss and already generated outputs (one per
    instance). End-to-end relation instances score the pipeline themselves; for
    given-entities ones pass the pipeline's scores as ``relations_e2e`` (else 0.0)."""
    entities, relations = score_outputs(instances, outputs, score_by)
    num_re = sum(inst.task == RE for inst in instances)
    given = any(inst.task == RE and inst.given_entities for inst in instances)
    if relations_e2e is None:
        relations_e2e = RelationScorer().result() if given else relations
    return Evaluation(loss, entities, len(instances), relations, len(instances) - num_re, num_re,
                      relations_e2e, given)


class InstanceEvaluator:
    """Scores adapters on one fixed set of instances (NER, RE or both); the tokenization
    is done once. ``score_by`` is the site's (see ``SCORE_BY``): with
    ``"relations-and-entity-recall"`` entity precision is not measured. ``constrained``:
    generation holds each answer to its instance (``prompt.answer_constraint``; config key
    ``eval.constrained``)."""

    def __init__(self, tokenizer, instances: Sequence[Instance], max_length: int,
                 max_new_tokens: int = 96, batch_size: int = 16, score_by: str | None = None,
                 constrained: bool = False) -> None:
        if not instances:
            raise ValueError("no instances to evaluate on")
        check_score_by(score_by)
        self.tokenizer = tokenizer
        self.instances = list(instances)
        self.encoded: list[Encoded]
        self.encoded, _ = encode_all(tokenizer, training_pairs(self.instances), max_length,
                                     prefix_end=PREFIX_END)
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.score_by = score_by
        self.constrained = constrained

    def loss(self, model, description: str | None = None) -> float:
        """Mean answer-token cross-entropy; a `description` shows a progress bar."""
        return mean_answer_loss(model, self.encoded, self.tokenizer.pad_token_id, self.batch_size,
                                description=description)

    def generate(self, model, description: str = "score",
                 instances: Sequence[Instance] | None = None) -> list[str]:
        """Answers for ``instances`` (default: all), in one batched generation."""
        chosen = self.instances if instances is None else instances
        if not chosen:
            return []
        prompts = [build_messages(inst) for inst in chosen]
        constraints = [answer_constraint(inst) for inst in chosen] if self.constrained else None
        return generate_answers(model, self.tokenizer, prompts, self.max_new_tokens, self.batch_size,
                                description, prefix_end=PREFIX_END, constraints=constraints)

    def scores(self, model, description: str = "score") -> EntityScores:
        """Entity scores of the NER instances (only those are generated)."""
        ner = [inst for inst in self.instances if inst.task == NER]
        return score_outputs(ner, self.generate(model, description, ner), self.score_by)[0]

    def relation_scores(self, model, description: str = "score") -> RelationScores:
        """Relation scores of the RE instances as built (only those are generated)."""
        re_ = [inst for inst in self.instances if inst.task == RE]
        return score_outputs(re_, self.generate(model, description, re_), self.score_by)[1]

    def evaluate(self, model, description: str = "score", end_to_end: bool = True) -> Evaluation:
        """Loss and scores of every instance. Given-entities relation instances are also
        scored through the pipeline (``end_to_end``): their sentences' entity answers come
        from the same generation pass as the instances (entity prompts added for
        sentences the set lacks), then a second pass asks for relations among the
        predicted entities. Without ``end_to_end`` the ``re-e2e-*`` metrics are 0.0 there."""
        loss = self.loss(model, f"{description} loss")
        given = [i for i in self.instances if i.task == RE and i.given_entities] if end_to_end else []
        has_ner = {_sentence_key(i) for i in self.instances if i.task == NER}
        extra = [_ner_instance(i) for i in given if i.entity_types and _sentence_key(i) not in has_ner]
        extra = list({_sentence_key(i): i for i in extra}.values())  # a sentence once
        outputs = self.generate(model, description, self.instances + extra)
        own = outputs[: len(self.instances)]
        pipeline = None
        if given:
            answers = {_sentence_key(i): out for i, out in zip(self.instances + extra, outputs) if i.task == NER}
            pipeline = self._pipeline(model, f"{description} (relations end to end)", given, answers)
        return evaluation_from_outputs(self.instances, own, loss, self.score_by, pipeline)

    def _pipeline(self, model, description: str, given: Sequence[Instance],
                  ner_answers: dict[tuple, str]) -> RelationScores:
        """Relation scores with each instance's entity list replaced by the entities its
        sentence's entity answer names; fewer than two entities: no relation, not asked."""
        rows = []
        for inst in given:
            answer = ner_answers.get(_sentence_key(inst))
            entities = predicted_entities(_ner_instance(inst), answer)[0] if answer is not None else ()
            rows.append(replace(inst, entities=entities))
        asked = [r for r in rows if len(r.entities) >= 2]
        outputs = dict(zip(map(id, asked), self.generate(model, description, asked)))
        scorer = RelationScorer()
        for row in rows:
            scorer.add(row, outputs.get(id(row), "{}"))
        return scorer.result()


def _ner_instance(inst: Instance) -> Instance:
    """The entity instance of a relation instance's sentence (the site's entity types)."""
    return Instance(inst.doc_id, inst.offset, inst.text, inst.entity_types, ())


def _sentence_key(inst: Instance) -> tuple:
    return inst.doc_id, inst.offset, inst.text, inst.entity_types
