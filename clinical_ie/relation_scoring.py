"""Strict and lenient relation precision/recall/F1 (docs/architecture.md, "Scoring").

Strict: same type, and both arguments strict (each predicted span starts at its gold
argument's first fragment and ends at its last). Lenient: same type, and each predicted
argument overlaps a fragment of its gold argument. Arguments are ordered: the first
predicted argument is compared with ``arg1``, the second with ``arg2``. Matching is
one-to-one, strict pairs first, then a maximum matching of lenient pairs among the rest.
Predicted relations with an argument that is not in the sentence (unaligned) are false
positives of their type under both.

Given entities, a predicted pair of entity numbers is scored through the spans of the
entities the prompt listed (the covering span of each): gold entities give the relation
step alone, predicted ones (from entity extraction) the pipeline, where an entity span
that only overlaps its gold argument is a lenient match. A number naming no listed entity
counts as an unaligned relation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .align import AlignedRelation, align_relations
from .instances import GoldEntity, GoldRelation, Instance
from .prompt import argument_text
from .relation_parsing import parse_numbered_relations, parse_relations
from .scoring import PRF, EntityScores, max_matching

Span = tuple[int, int]


@dataclass
class RelationScores(EntityScores):
    """Micro scores over the relation types asked, a per-type (strict, lenient) table, and
    the number of unaligned predicted relations and malformed outputs."""

    def to_metrics(self, prefix: str = "re-") -> dict[str, float]:
        """``re-strict-precision`` ... ``re-lenient-f1``, ``re-unaligned``, ``re-malformed``."""
        return super().to_metrics(prefix)


class RelationScorer:
    """Accumulates strict/lenient relation counts over relation instances."""

    def __init__(self) -> None:
        self._per_type: dict[str, list[PRF]] = {}
        self._unaligned = 0
        self._malformed = 0

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
            aligned, dropped = align_relations(
                [r for r in parsed.relations if r[0] == typ], instance.text
            )
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
        """Score already aligned predictions; ``unaligned`` counts false positives per type;
        ``types`` are listed in the table even without gold or predictions."""
        unaligned = unaligned or {}
        self._unaligned += sum(unaligned.values())
        seen = [*types, *(g.type for g in gold), *(p[0] for p in predicted), *unaligned]
        for typ in dict.fromkeys(seen):
            g = [x for x in gold if x.type == typ]
            p = [(a, b) for t, a, b in predicted if t == typ]
            strict_tp, lenient_tp = relation_match_counts(g, p)
            extra_fp = unaligned.get(typ, 0)
            counts = self._per_type.setdefault(typ, [PRF(), PRF()])
            counts[0] = counts[0] + PRF(strict_tp, len(p) - strict_tp + extra_fp, len(g) - strict_tp)
            counts[1] = counts[1] + PRF(lenient_tp, len(p) - lenient_tp + extra_fp, len(g) - lenient_tp)

    def result(self) -> RelationScores:
        per_type = {t: (PRF() + strict_t, PRF() + lenient_t) for t, (strict_t, lenient_t) in self._per_type.items()}
        strict, lenient = PRF(), PRF()
        for strict_t, lenient_t in per_type.values():
            strict, lenient = strict + strict_t, lenient + lenient_t
        return RelationScores(strict, lenient, per_type, self._unaligned, self._malformed)


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


def relation_match_counts(
    gold: Sequence[GoldRelation], predicted: Sequence[tuple[Span, Span]]
) -> tuple[int, int]:
    """One-to-one (strict, lenient) true positives between gold relations and predicted
    (first span, second span) pairs of a single type."""
    free_pred = list(range(len(predicted)))
    free_gold = []
    for g in gold:
        exact = next((j for j in free_pred if predicted[j] == _extent(g)), None)
        if exact is None:
            free_gold.append(g)
        else:
            free_pred.remove(exact)
    strict_tp = len(gold) - len(free_gold)
    overlaps = [
        [j for j in free_pred
         if _overlaps(predicted[j][0], g.arg1) and _overlaps(predicted[j][1], g.arg2)]
        for g in free_gold
    ]
    return strict_tp, strict_tp + max_matching(overlaps)


def _extent(rel: GoldRelation) -> tuple[Span, Span]:
    return (rel.arg1.start, rel.arg1.end), (rel.arg2.start, rel.arg2.end)


def _overlaps(span: Span, gold: GoldEntity) -> bool:
    return any(s < span[1] and span[0] < e for s, e in gold.spans)
