"""Strict and lenient entity precision/recall/F1 (docs/architecture.md, "Scoring").

Strict: same type, and the predicted span starts at the gold entity's first fragment and
ends at its last (so it covers every fragment). Lenient: same type, and the predicted span
overlaps any fragment. Matching is one-to-one: strict pairs first, then a maximum matching
of lenient pairs among the rest. Predictions whose text is not in the sentence
(unaligned) are false positives under both.

Corpora that annotate only the entities taking part in relations (ADE) leave correct
predictions unannotated, so entity precision there means nothing: such a site scores with
``recall_only`` (its ``score_by = "relations-and-entity-recall"``), which reports entity
recall and marks precision and F1 as not measured (0.0 in metrics, n/a in tables).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .align import align_predictions
from .instances import GoldEntity, Instance
from .parsing import parse_entities

PredSpan = tuple[str, int, int]


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


class EntityScorer:
    """Accumulates strict/lenient counts over instances; ``recall_only`` for corpora that
    annotate only the entities in relations (see the module docstring)."""

    def __init__(self, recall_only: bool = False) -> None:
        self.recall_only = recall_only
        self._per_type: dict[str, list[PRF]] = {}
        # Unaligned predictions given without a type (add_spans): micro false positives only.
        self._untyped_fp = 0
        self._unaligned = 0
        self._malformed = 0

    def add(self, instance: Instance, output_text: str) -> None:
        """Parse, align and score one model output against the instance's gold."""
        parsed = parse_entities(output_text, allowed_types=instance.entity_types)
        self._malformed += int(parsed.malformed)
        predicted: list[PredSpan] = []
        unaligned: dict[str, int] = {}
        for typ in instance.entity_types:
            # Alignment is per type, so aligning type by type attributes unaligned ones.
            aligned, dropped = align_predictions(
                [p for p in parsed.entities if p[0] == typ], instance.text
            )
            predicted.extend(aligned)
            unaligned[typ] = dropped
        self._score(instance.entities, predicted, unaligned, instance.entity_types)

    def add_spans(
        self,
        gold: Sequence[GoldEntity],
        predicted: Sequence[PredSpan],
        unaligned: int = 0,
    ) -> None:
        """Score already aligned predictions; ``unaligned`` counts as untyped false positives."""
        self._untyped_fp += unaligned
        self._unaligned += unaligned
        self._score(gold, predicted, {}, ())

    def result(self) -> EntityScores:
        per_type = {t: (PRF() + strict_t, PRF() + lenient_t) for t, (strict_t, lenient_t) in self._per_type.items()}
        strict, lenient = PRF(fp=self._untyped_fp), PRF(fp=self._untyped_fp)
        for strict_t, lenient_t in per_type.values():
            strict, lenient = strict + strict_t, lenient + lenient_t
        return EntityScores(strict, lenient, per_type, self._unaligned, self._malformed, self.recall_only)

    def _score(
        self,
        gold: Sequence[GoldEntity],
        predicted: Sequence[PredSpan],
        unaligned: Mapping[str, int],
        types: Sequence[str],
    ) -> None:
        self._unaligned += sum(unaligned.values())
        seen = [*types, *(g.type for g in gold), *(p[0] for p in predicted)]
        for typ in dict.fromkeys(seen):
            g = [x for x in gold if x.type == typ]
            p = [(s, e) for t, s, e in predicted if t == typ]
            strict_tp, lenient_tp = match_counts(g, p)
            extra_fp = unaligned.get(typ, 0)
            counts = self._per_type.setdefault(typ, [PRF(), PRF()])
            counts[0] = counts[0] + PRF(strict_tp, len(p) - strict_tp + extra_fp, len(g) - strict_tp)
            counts[1] = counts[1] + PRF(lenient_tp, len(p) - lenient_tp + extra_fp, len(g) - lenient_tp)


def match_counts(gold: Sequence[GoldEntity], predicted: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """One-to-one (strict, lenient) true positives between gold entities and predicted
    spans of a single type: strict pairs first, then lenient pairs among the rest."""
    free_pred = list(range(len(predicted)))
    free_gold = []
    for g in gold:
        exact = next((j for j in free_pred if predicted[j] == (g.start, g.end)), None)
        if exact is None:
            free_gold.append(g)
        else:
            free_pred.remove(exact)
    strict_tp = len(gold) - len(free_gold)
    overlaps = [
        [j for j in free_pred if any(s < predicted[j][1] and predicted[j][0] < e for s, e in g.spans)]
        for g in free_gold
    ]
    return strict_tp, strict_tp + max_matching(overlaps)


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
