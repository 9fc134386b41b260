"""Document-level bootstrap intervals of the micro scores."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.bootstrap import MEASURES, Interval, bootstrap, document_counts, paired_difference
from clinical_ie.evaluate import SCORE_BY_ENTITY_RECALL, score_outputs
from clinical_ie.instances import GoldEntity, Instance
from clinical_ie.prompt import target_text

TEXT = "Fever and cough, given aspirin."
GOLD = (
    GoldEntity("problem", ((0, 5),), "Fever"),
    GoldEntity("problem", ((10, 15),), "cough"),
    GoldEntity("drug", ((23, 30),), "aspirin"),
)


def instance(doc: str) -> Instance:
    return Instance(doc_id=doc, offset=0, text=TEXT, entity_types=("problem", "drug"), entities=GOLD)


def test_counts_sum_to_the_micro_scores() -> None:
    instances = [instance("a"), instance("a"), instance("b"), instance("c")]
    outputs = [
        target_text(instances[0]),                       # all right
        '{"problem": ["Fever", "rash"], "drug": []}',  # 1 tp, 1 fp (unaligned), 2 fn
        '{"problem": ["fev',                            # malformed: 3 fn
        '{"problem": ["Fever and"], "drug": ["aspirin"]}',  # lenient-only problem, strict drug
    ]
    names, counts = document_counts(instances, outputs)
    assert names == ["a", "b", "c"] and counts.shape == (3, len(MEASURES), 3)
    entities, _ = score_outputs(instances, outputs)
    total = counts.sum(axis=0)
    assert tuple(total[0]) == (entities.strict.tp, entities.strict.fp, entities.strict.fn)
    assert tuple(total[1]) == (entities.lenient.tp, entities.lenient.fp, entities.lenient.fn)
    assert tuple(counts[0, 0]) == (4, 1, 2)  # document a: both of its sentences

    result = bootstrap(counts, resamples=500, seed=1)
    assert result["ner-strict-f1"].value == pytest.approx(entities.strict.f1)
    assert result["ner-lenient-f1"].value == pytest.approx(entities.lenient.f1)
    for interval in result.values():
        assert interval.low <= interval.value <= interval.high or interval.low == interval.high
    strict = result["ner-strict-f1"]
    assert strict.low < strict.value < strict.high  # three different documents: a real spread


def test_interval_narrows_with_more_documents_and_is_reproducible() -> None:
    rng = np.random.default_rng(0)

    def documents(n: int) -> np.ndarray:
        counts = np.zeros((n, len(MEASURES), 3), dtype=np.int64)
        counts[:, 0, 0] = rng.integers(0, 5, n)   # tp
        counts[:, 0, 1] = rng.integers(0, 3, n)   # fp
        counts[:, 0, 2] = rng.integers(0, 3, n)   # fn
        return counts

    small, large = documents(10), documents(400)
    width = {n: (r["ner-strict-f1"].high - r["ner-strict-f1"].low)
             for n, r in ((10, bootstrap(small)), (400, bootstrap(large)))}
    assert width[400] < width[10] / 3
    assert bootstrap(small, seed=3) == bootstrap(small, seed=3)


def test_recall_only_sites_report_entity_recall() -> None:
    counts = np.zeros((2, len(MEASURES), 3), dtype=np.int64)
    counts[:, 0] = [[3, 50, 1], [1, 20, 3]]  # precision means nothing here (partial gold)
    result = bootstrap(counts, resamples=200, score_by=SCORE_BY_ENTITY_RECALL)
    assert "ner-strict-recall" in result and "ner-strict-f1" not in result
    assert result["ner-strict-recall"].value == pytest.approx(4 / 8)
    assert "re-strict-f1" in result


def test_rejects_counts_of_the_wrong_shape() -> None:
    with pytest.raises(ValueError, match="expected shape"):
        bootstrap(np.zeros((3, 2, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="2 instances but 1 outputs"):
        document_counts([instance("a"), instance("b")], ["{}"])


def _counts(rows: list[tuple[int, int, int]]) -> np.ndarray:
    """Per-document NER strict counts; the other measures are left at 0."""
    out = np.zeros((len(rows), len(MEASURES), 3), np.int64)
    out[:, 0] = rows
    return out


def test_paired_difference_of_an_arm_with_itself_is_exactly_zero() -> None:
    rng = np.random.default_rng(0)
    a = _counts([tuple(row) for row in rng.integers(0, 6, size=(30, 3))])
    assert paired_difference([(a, a)]) == Interval(0.0, 0.0, 0.0)


def test_pairing_removes_what_the_documents_share() -> None:
    # Arm a finds one more entity than b in every document; documents vary a lot in how
    # hard they are (the share of entities found), which both arms share.
    rng = np.random.default_rng(1)
    sizes = rng.integers(4, 40, size=60)
    found = [int(s * f) for s, f in zip(sizes, rng.uniform(0.1, 0.9, size=60))]
    b = _counts([(f, 1, int(s) - f) for s, f in zip(sizes, found)])
    a = b.copy()
    a[:, 0, 0] += 1
    a[:, 0, 2] -= 1
    paired = paired_difference([(a, b)], resamples=500)
    value = 100 * (bootstrap(a)["ner-strict-f1"].value - bootstrap(b)["ner-strict-f1"].value)
    assert paired.value == pytest.approx(value)
    assert 0 < paired.low < paired.value < paired.high
    side_by_side = bootstrap(a, resamples=500)["ner-strict-f1"]
    # The paired interval is far narrower than either arm's own interval.
    assert paired.high - paired.low < 0.25 * 100 * (side_by_side.high - side_by_side.low)


def test_paired_difference_averages_test_sets_and_checks_shapes() -> None:
    a, b = _counts([(2, 0, 0)] * 5), _counts([(1, 0, 1)] * 5)  # F1 1.0 and 2/3
    c = _counts([(1, 1, 0)] * 4)
    diff = paired_difference([(a, b), (c, c)], resamples=50)
    assert diff.value == pytest.approx(100 * (1 - 2 / 3) / 2)
    with pytest.raises(ValueError, match="one shape"):
        paired_difference([(a, c)])
    with pytest.raises(ValueError, match="measure"):
        paired_difference([(a, b)], measure="ner-exact")
