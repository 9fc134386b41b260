"""95% bootstrap intervals for strict/lenient micro scores (docs/architecture.md, "Scoring").

Sentences of one note are not independent, so the resampling unit is the document: each
resample draws documents with replacement and sums their true/false positive and false
negative counts, which is exactly how the micro scores sum them. Each instance is scored
once; the resamples only re-add counts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from clinical_ie.evaluate import SCORE_BY_ENTITY_RECALL, score_outputs
from clinical_ie.instances import RE, Instance

# (task, matching) pairs, in the order of the count arrays.
MEASURES: tuple[str, ...] = ("ner-strict", "ner-lenient", "re-strict", "re-lenient")


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


def document_counts(instances: Sequence[Instance], outputs: Sequence[Any], score_by: str | None = None,
                    score: Callable = score_outputs) -> tuple[list[str], np.ndarray]:
    """Per document, the (tp, fp, fn) of each measure: an array [documents, measures, 3].
    `score` scores one instance's output (`score_outputs`: generated answers; `score_spans`:
    a tagger's spans)."""
    if len(instances) != len(outputs):
        raise ValueError(f"{len(instances)} instances but {len(outputs)} outputs")
    docs: dict[str, np.ndarray] = {}
    for inst, out in zip(instances, outputs):
        entities, relations = score([inst], [out], score_by)
        counts = docs.setdefault(inst.doc_id, np.zeros((len(MEASURES), 3), dtype=np.int64))
        if inst.task == RE:
            counts[2] += (relations.strict.tp, relations.strict.fp, relations.strict.fn)
            counts[3] += (relations.lenient.tp, relations.lenient.fp, relations.lenient.fn)
        else:
            counts[0] += (entities.strict.tp, entities.strict.fp, entities.strict.fn)
            counts[1] += (entities.lenient.tp, entities.lenient.fp, entities.lenient.fn)
    names = list(docs)
    return names, np.stack([docs[n] for n in names]) if names else np.zeros((0, len(MEASURES), 3), np.int64)


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    denominator = 2 * tp + fp + fn
    return np.divide(2 * tp, denominator, out=np.zeros(np.shape(tp), dtype=float), where=denominator > 0)


def _recall(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    denominator = tp + fn
    return np.divide(tp, denominator, out=np.zeros(np.shape(tp), dtype=float), where=denominator > 0)


def bootstrap(counts: np.ndarray, resamples: int = 1000, seed: int = 0, level: float = 0.95,
              score_by: str | None = None) -> dict[str, Interval]:
    """Point value and percentile interval of each measure's F1 (entity recall instead of
    entity F1 under ``relations-and-entity-recall``, where entity precision is not measured).
    Keys: ``ner-strict-f1``, ``ner-lenient-f1`` (or ``-recall``), ``re-strict-f1``,
    ``re-lenient-f1``."""
    if counts.ndim != 3 or counts.shape[1:] != (len(MEASURES), 3):
        raise ValueError(f"counts: expected shape [documents, {len(MEASURES)}, 3], got {counts.shape}")
    rng = np.random.default_rng(seed)
    n = counts.shape[0]
    draws = rng.integers(0, n, size=(resamples, n)) if n else np.zeros((resamples, 0), dtype=int)
    sampled = counts[draws].sum(axis=1) if n else np.zeros((resamples, len(MEASURES), 3), np.int64)
    total = counts.sum(axis=0)
    tail = (1 - level) / 2 * 100
    result: dict[str, Interval] = {}
    for m, measure in enumerate(MEASURES):
        recall_only = score_by == SCORE_BY_ENTITY_RECALL and measure.startswith("ner")
        statistic = _recall if recall_only else _f1
        value = float(statistic(*total[m]))
        spread = statistic(sampled[:, m, 0], sampled[:, m, 1], sampled[:, m, 2])
        low, high = np.percentile(spread, [tail, 100 - tail]) if resamples else (value, value)
        result[f"{measure}-{'recall' if recall_only else 'f1'}"] = Interval(value, float(low), float(high))
    return result


def paired_difference(pairs: Sequence[tuple[np.ndarray, np.ndarray]], measure: str = "ner-strict",
                      resamples: int = 1000, seed: int = 0, level: float = 0.95,
                      statistic: str = "f1") -> Interval:
    """F1 of arm a minus F1 of arm b, in F1 points, averaged over test sets, with a paired
    percentile interval.

    `pairs` holds, per test set, the two arms' per-document counts (`document_counts` of the
    same instances, so the same documents in the same order). Each resample draws one set of
    documents per test set and scores both arms on it: what the documents share (how hard
    they are) cancels, and the interval is that of the difference, not of two scores side by
    side. Test sets are resampled independently of each other. `statistic = "recall"` for
    a set whose gold is partial (ADE: entity precision is not measured).
    """
    if statistic not in ("f1", "recall"):
        raise ValueError(f"statistic: {statistic!r} is not 'f1' or 'recall'")
    score = _f1 if statistic == "f1" else _recall
    if measure not in MEASURES:
        raise ValueError(f"measure: {measure!r} is not one of {list(MEASURES)}")
    if not pairs:
        raise ValueError("paired_difference: no test set given")
    m = MEASURES.index(measure)
    rng = np.random.default_rng(seed)
    point = np.zeros(())
    spread = np.zeros(resamples)
    for a, b in pairs:
        if a.shape != b.shape or a.ndim != 3 or a.shape[1:] != (len(MEASURES), 3):
            raise ValueError(f"paired counts: expected two arrays of one shape [documents, {len(MEASURES)}, 3], "
                             f"got {a.shape} and {b.shape}")
        n = a.shape[0]
        draws = rng.integers(0, n, size=(resamples, n)) if n else np.zeros((resamples, 0), dtype=int)
        point = point + score(*a[:, m].sum(axis=0)) - score(*b[:, m].sum(axis=0))
        if n:
            sa, sb = a[draws, m].sum(axis=1), b[draws, m].sum(axis=1)
            spread += score(sa[:, 0], sa[:, 1], sa[:, 2]) - score(sb[:, 0], sb[:, 1], sb[:, 2])
    scale = 100 / len(pairs)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(spread * scale, [tail, 100 - tail]) if resamples else (point * scale,) * 2
    return Interval(float(point * scale), float(low), float(high))
