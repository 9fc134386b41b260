"""Strict and lenient precision/recall/F1 of entities and relations (docs/architecture.md,
"Scoring"): one scorer, parametrised by arity.

An item is typed and has arguments: an entity has one (its span), a relation two (its
ordered arguments; the first predicted argument is compared with ``arg1``, the second
with ``arg2``). Strict: same type, and every predicted argument span starts at its gold
argument's first fragment and ends at its last (so it covers every fragment). Lenient:
same type, and every predicted argument overlaps a fragment of its gold argument.
Matching is one-to-one: strict pairs first, then a maximum matching of lenient pairs among
the rest. Predictions with an argument that is not in the sentence (unaligned) are false
positives of their type under both.

Given entities, a predicted pair of entity numbers is scored through the spans of the
entities the prompt listed (the covering span of each): gold entities give the relation
step alone, predicted ones (from entity extraction) the pipeline, where an entity span
that only overlaps its gold argument is a lenient match. A number naming no listed entity
counts as an unaligned relation.

Corpora that annotate only the entities taking part in relations (ADE) leave correct
predictions unannotated, so entity precision there means nothing: such a site scores with
``recall_only`` (its ``score_by = "relations-and-entity-recall"``), which reports entity
recall and marks precision and F1 as not measured (0.0 in metrics, n/a in tables).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .align import AlignedRelation, align_predictions, align_relations
from .instances import GoldEntity, GoldRelation, Instance
from .parsing import parse_entities, parse_numbered_relations, parse_relations
from .prompt import argument_text

Span = tuple[int, int]
PredSpan = tuple[str, int, int]
# (type, gold arguments) and (type, predicted argument spans): the scorer's common form.
GoldItem = tuple[str, tuple[GoldEntity, ...]]
PredictedItem = tuple[str, tuple[Span, ...]]


@dataclass
class PRF:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def __add__(self, other: PRF) -> PRF:
        return PRF(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)


@dataclass
class EntityScores:
    """Micro scores over the scored types, a per-type (strict, lenient) table, and the
    number of unaligned predictions and malformed outputs."""

    strict: PRF
    lenient: PRF
    per_type: dict[str, tuple[PRF, PRF]]
    unaligned: int = 0
    malformed: int = 0
    recall_only: bool = False  # precision not measured: the gold is partial (see above)

    def to_metrics(self, prefix: str = "") -> dict[str, float]:
        """Flat metrics with the same keys at every site (Flower requires identical keys);
        with ``recall_only`` the precision and F1 values are 0.0 (not measured)."""
        metrics: dict[str, float] = {}
        for name, prf in (("strict", self.strict), ("lenient", self.lenient)):
            metrics[f"{prefix}{name}-precision"] = 0.0 if self.recall_only else prf.precision
            metrics[f"{prefix}{name}-recall"] = prf.recall
            metrics[f"{prefix}{name}-f1"] = 0.0 if self.recall_only else prf.f1
        metrics[f"{prefix}unaligned"] = float(self.unaligned)
        metrics[f"{prefix}malformed"] = float(self.malformed)
        return metrics

    def to_markdown(self) -> str:
        header = (
            "| type | gold | pred | strict P | strict R | strict F1 "
            "| lenient P | lenient R | lenient F1 |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
        )
        rows = [header]
        entries = [*self.per_type.items(), ("**micro**", (self.strict, self.lenient))]
        for name, (strict, lenient) in entries:
            rows.append(
                f"| {name} | {strict.tp + strict.fn} | {strict.tp + strict.fp} "
                f"| {self._cell(strict.precision)} | {strict.recall:.3f} | {self._cell(strict.f1)} "
                f"| {self._cell(lenient.precision)} | {lenient.recall:.3f} | {self._cell(lenient.f1)} |"
            )
        notes = f"\nUnaligned predictions: {self.unaligned}; malformed outputs: {self.malformed}."
        if self.recall_only:
            notes += " Precision and F1 not measured: only entities in relations are annotated."
        return "\n".join(rows) + "\n" + notes

    def _cell(self, value: float) -> str:
        return "n/a" if self.recall_only else f"{value:.3f}"


@dataclass
class RelationScores(EntityScores):
    """Micro scores over the relation types asked, a per-type (strict, lenient) table, and
    the number of unaligned predicted relations and malformed outputs."""

    def to_metrics(self, prefix: str = "re-") -> dict[str, float]:
        """``re-strict-precision`` ... ``re-lenient-f1``, ``re-unaligned``, ``re-malformed``."""
        return super().to_metrics(prefix)


class Scorer:
    """Accumulates strict/lenient counts per type over items of any arity."""

    scores = EntityScores

    def __init__(self, recall_only: bool = False) -> None:
        self.recall_only = recall_only
        self._per_type: dict[str, list[PRF]] = {}
        # Unaligned predictions given without a type: micro false positives only.
        self._untyped_fp = 0
        self._unaligned = 0
        self._malformed = 0

    def add_items(
        self,
        gold: Sequence[GoldItem],
        predicted: Sequence[PredictedItem],
        unaligned: Mapping[str, int] | None = None,
        types: Sequence[str] = (),
    ) -> None:
        """Score aligned predictions; ``unaligned`` counts false positives per type;
        ``types`` are listed in the table even without gold or predictions."""
        unaligned = unaligned or {}
        self._unaligned += sum(unaligned.values())
        seen = [*types, *(g[0] for g in gold), *(p[0] for p in predicted), *unaligned]
        for typ in dict.fromkeys(seen):
            g = [args for t, args in gold if t == typ]
            p = [spans for t, spans in predicted if t == typ]
            strict_tp, lenient_tp = match_counts(g, p)
            extra_fp = unaligned.get(typ, 0)
            counts = self._per_type.setdefault(typ, [PRF(), PRF()])
            counts[0] = counts[0] + PRF(strict_tp, len(p) - strict_tp + extra_fp, len(g) - strict_tp)
            counts[1] = counts[1] + PRF(lenient_tp, len(p) - lenient_tp + extra_fp, len(g) - lenient_tp)

    def result(self):
        per_type = {t: (PRF() + strict_t, PRF() + lenient_t) for t, (strict_t, lenient_t) in self._per_type.items()}
        strict, lenient = PRF(fp=self._untyped_fp), PRF(fp=self._untyped_fp)
        for strict_t, lenient_t in per_type.values():
            strict, lenient = strict + strict_t, lenient + lenient_t
        return self.scores(strict, lenient, per_type, self._unaligned, self._malformed, self.recall_only)


class EntityScorer(Scorer):
    """Entities (arity 1); ``recall_only`` for corpora that annotate only the entities in
    relations (see the module docstring)."""

    def add(self, instance: Instance, output_text: str) -> None:
        """Parse, align and score one model output against the instance's gold."""
        parsed = parse_entities(output_text, allowed_types=instance.entity_types)
        self._malformed += int(parsed.malformed)
        predicted: list[PredSpan] = []
        unaligned: dict[str, int] = {}
        for typ in instance.entity_types:
            # Alignment is per type, so aligning type by type attributes unaligned ones.
            aligned, dropped = align_predictions([p for p in parsed.entities if p[0] == typ], instance.text)
            predicted.extend(aligned)
            unaligned[typ] = dropped
        self._add_entities(instance.entities, predicted, unaligned, instance.entity_types)

    def add_spans(self, gold: Sequence[GoldEntity], predicted: Sequence[PredSpan], unaligned: int = 0,
                  types: Sequence[str] = ()) -> None:
        """Score already aligned predictions; ``unaligned`` counts as untyped false positives;
        ``types`` are listed in the table even without gold or predictions."""
        self._untyped_fp += unaligned
        self._unaligned += unaligned
        self._add_entities(gold, predicted, {}, types)

    def _add_entities(self, gold: Sequence[GoldEntity], predicted: Sequence[PredSpan],
                      unaligned: Mapping[str, int], types: Sequence[str]) -> None:
        self.add_items([(g.type, (g,)) for g in gold], [(t, ((s, e),)) for t, s, e in predicted], unaligned, types)


class RelationScorer(Scorer):
    """Relations (arity 2), end to end or given entities."""

    scores = RelationScores

    def add(self, instance: Instance, output_text: str) -> None:
        """Parse, align and score one model output against the instance's gold relations."""
        if instance.given_entities:
            predicted, unaligned, malformed = numbered_predictions(instance, output_text)
            self._malformed += int(malformed)
            self.add_relations(instance.relations, predicted, unaligned, instance.relation_types)
            return
        parsed = parse_relations(output_text, allowed_types=instance.relation_types)
        self._malformed += int(parsed.malformed)
        predicted: list[AlignedRelation] = []
        unaligned: dict[str, int] = {}
        for typ in instance.relation_types:
            # Type by type, so each unaligned relation is a false positive of its own type.
            aligned, dropped = align_relations([r for r in parsed.relations if r[0] == typ], instance.text)
            predicted.extend(aligned)
            unaligned[typ] = dropped
        self.add_relations(instance.relations, predicted, unaligned, instance.relation_types)

    def add_relations(
        self,
        gold: Sequence[GoldRelation],
        predicted: Sequence[AlignedRelation],
        unaligned: Mapping[str, int] | None = None,
        types: Sequence[str] = (),
    ) -> None:
        """Score already aligned predictions (see `Scorer.add_items`)."""
        self.add_items([(g.type, (g.arg1, g.arg2)) for g in gold], [(t, (a, b)) for t, a, b in predicted],
                       unaligned, types)


def numbered_predictions(
    instance: Instance, output_text: str
) -> tuple[list[AlignedRelation], dict[str, int], bool]:
    """A given-entities answer -> relations between the spans of the listed entities,
    the per-type count of pairs naming no listed entity, and whether it was malformed."""
    listed = instance.entities
    texts = [argument_text(e, instance.text) for e in listed]  # as the prompt shows them
    parsed = parse_numbered_relations(output_text, instance.relation_types, texts)
    spans = [(e.start, e.end) for e in listed]
    predicted = [(typ, spans[a], spans[b]) for typ, a, b in parsed.relations]
    return predicted, parsed.unresolved, parsed.malformed


def match_counts(gold: Sequence[tuple[GoldEntity, ...]], predicted: Sequence[tuple[Span, ...]]) -> tuple[int, int]:
    """One-to-one (strict, lenient) true positives between gold items and predicted items
    of a single type, argument by argument: strict pairs first, then lenient pairs among
    the rest."""
    free_pred = list(range(len(predicted)))
    free_gold = []
    for g in gold:
        extent = tuple((arg.start, arg.end) for arg in g)
        exact = next((j for j in free_pred if tuple(predicted[j]) == extent), None)
        if exact is None:
            free_gold.append(g)
        else:
            free_pred.remove(exact)
    strict_tp = len(gold) - len(free_gold)
    overlaps = [
        [j for j in free_pred if len(predicted[j]) == len(g)
         and all(_overlaps(span, arg) for span, arg in zip(predicted[j], g))]
        for g in free_gold
    ]
    return strict_tp, strict_tp + max_matching(overlaps)


def _overlaps(span: Span, gold: GoldEntity) -> bool:
    return any(s < span[1] and span[0] < e for s, e in gold.spans)


def max_matching(candidates: list[list[int]]) -> int:
    """Size of a maximum bipartite matching, ``candidates[g]`` listing the predictions gold
    item ``g`` may pair with (augmenting paths, deterministic order)."""
    owner: dict[int, int] = {}

    def augment(g: int, visited: set[int]) -> bool:
        for p in candidates[g]:
            if p in visited:
                continue
            visited.add(p)
            if p not in owner or augment(owner[p], visited):
                owner[p] = g
                return True
        return False

    return sum(augment(g, set()) for g in range(len(candidates)))
