"""Document-level bootstrap intervals of the micro scores."""

from __future__ import annotations

import numpy as np
import pytest

from clinical_ie.bootstrap import MEASURES, bootstrap, document_counts
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
