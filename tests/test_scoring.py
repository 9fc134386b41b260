"""Strict/lenient scoring: hand-computed counts and a cross-check against nervaluate."""

from __future__ import annotations

import pytest
from nervaluate import Evaluator

from clinical_ie.instances import GoldEntity, Instance
from clinical_ie.scoring import PRF, EntityScorer


def gold(typ: str, *spans: tuple[int, int]) -> GoldEntity:
    return GoldEntity(type=typ, spans=tuple(spans), text="")


def test_hand_computed_strict_and_lenient() -> None:
    golds = [
        gold("problem", (0, 10)),
        gold("problem", (20, 25), (35, 40)),  # discontiguous
        gold("problem", (50, 55)),
        gold("drug", (60, 67)),
    ]
    preds = [
        ("problem", 0, 10),   # strict g1
        ("problem", 20, 40),  # first fragment start .. last fragment end: strict g2
        ("problem", 51, 55),  # partial overlap: lenient g3 only
        ("drug", 60, 67),     # strict g4
        ("drug", 60, 67),     # duplicate: one-to-one leaves it a false positive
        ("problem", 70, 75),  # spurious
    ]
    scorer = EntityScorer()
    scorer.add_spans(golds, preds, unaligned=1)
    res = scorer.result()
    assert (res.strict.tp, res.strict.fp, res.strict.fn) == (3, 4, 1)
    assert (res.lenient.tp, res.lenient.fp, res.lenient.fn) == (4, 3, 0)
    assert res.strict.precision == pytest.approx(3 / 7)
    assert res.strict.recall == pytest.approx(3 / 4)
    assert res.strict.f1 == pytest.approx(2 * (3 / 7) * (3 / 4) / (3 / 7 + 3 / 4))
    assert res.lenient.precision == pytest.approx(4 / 7)
    assert res.lenient.recall == 1.0
    assert res.unaligned == 1
    problem_strict, problem_lenient = res.per_type["problem"]
    assert (problem_strict.tp, problem_strict.fp, problem_strict.fn) == (2, 2, 1)
    assert (problem_lenient.tp, problem_lenient.fp, problem_lenient.fn) == (3, 1, 0)
    drug_strict, _ = res.per_type["drug"]
    assert (drug_strict.tp, drug_strict.fp, drug_strict.fn) == (1, 1, 0)


def test_discontiguous_rules() -> None:
    g = [gold("problem", (20, 25), (35, 40))]
    cases = {
        (20, 40): (1, 1),  # covers every fragment: strict
        (20, 25): (0, 1),  # first fragment only: lenient
        (37, 40): (0, 1),  # inside the last fragment: lenient
        (27, 33): (0, 0),  # only the gap: no match
        (20, 41): (0, 1),  # wrong end: lenient only
    }
    for (s, e), (strict_tp, lenient_tp) in cases.items():
        scorer = EntityScorer()
        scorer.add_spans(g, [("problem", s, e)])
        res = scorer.result()
        assert (res.strict.tp, res.lenient.tp) == (strict_tp, lenient_tp), (s, e)


def test_type_must_match() -> None:
    scorer = EntityScorer()
    scorer.add_spans([gold("problem", (0, 5))], [("drug", 0, 5)])
    res = scorer.result()
    assert res.strict == PRF(0, 1, 1) and res.lenient == PRF(0, 1, 1)


def test_one_to_one_matching() -> None:
    # One wide prediction over two gold entities matches only one of them.
    scorer = EntityScorer()
    scorer.add_spans([gold("problem", (0, 5)), gold("problem", (10, 15))], [("problem", 0, 20)])
    assert scorer.result().lenient == PRF(1, 0, 1)
    # A greedy pass would give (8,12) to A and leave (0,3) without a partner.
    scorer = EntityScorer()
    scorer.add_spans(
        [gold("problem", (0, 10)), gold("problem", (5, 15))], [("problem", 8, 12), ("problem", 0, 3)]
    )
    assert scorer.result().lenient == PRF(2, 0, 0)
    # Strict pairs are taken before lenient ones.
    scorer = EntityScorer()
    scorer.add_spans([gold("problem", (0, 10))], [("problem", 0, 5), ("problem", 0, 10)])
    res = scorer.result()
    assert res.strict == PRF(1, 1, 0) and res.lenient == PRF(1, 1, 0)


def test_add_parses_aligns_and_counts_unaligned_as_fp() -> None:
    text = "Fever and cough, given aspirin."
    inst = Instance(
        doc_id="d", offset=0, text=text, entity_types=("problem", "drug"),
        entities=(
            GoldEntity("problem", ((0, 5),), "Fever"),
            GoldEntity("problem", ((10, 15),), "cough"),
            GoldEntity("drug", ((23, 30),), "aspirin"),
        ),
    )
    scorer = EntityScorer()
    scorer.add(inst, '{"problem": ["Fever", "cough", "rash"], "drug": ["aspirin"], "test": ["x"]}')
    scorer.add(inst, '{"problem": ["fev')  # truncated: malformed, nothing predicted
    res = scorer.result()
    assert res.strict == PRF(3, 1, 3)  # "rash" is unaligned: a false positive
    assert res.lenient == PRF(3, 1, 3)
    assert res.per_type["problem"][0] == PRF(2, 1, 2)
    assert res.per_type["drug"][0] == PRF(1, 0, 1)
    assert res.unaligned == 1 and res.malformed == 1
    metrics = res.to_metrics("eval-")
    assert set(metrics) == {
        f"eval-{k}" for k in (
            "strict-precision", "strict-recall", "strict-f1",
            "lenient-precision", "lenient-recall", "lenient-f1", "unaligned", "malformed",
        )
    }
    assert metrics["eval-strict-precision"] == pytest.approx(0.75)
    assert "| problem |" in res.to_markdown() and "| **micro** |" in res.to_markdown()


def test_metric_keys_do_not_depend_on_data() -> None:
    assert set(EntityScorer().result().to_metrics()) == {
        "strict-precision", "strict-recall", "strict-f1",
        "lenient-precision", "lenient-recall", "lenient-f1", "unaligned", "malformed",
    }
    assert all(v == 0.0 for v in EntityScorer().result().to_metrics().values())


# Contiguous spans only (nervaluate has no fragments), no overlaps across types and at
# most one candidate per prediction: there nervaluate's greedy matching and ours agree.
# nervaluate's ends are inclusive.
NERVAL_GOLD = [
    [("problem", 0, 10), ("problem", 15, 20), ("drug", 30, 37)],
    [("problem", 5, 12)],
    [],
    [("drug", 0, 6), ("problem", 10, 20)],
]
NERVAL_PRED = [
    [("problem", 0, 10), ("problem", 14, 18), ("drug", 30, 37), ("drug", 40, 45)],
    [],
    [("problem", 3, 8)],
    [("drug", 0, 6), ("problem", 12, 20), ("problem", 25, 30)],
]


def _nerval(docs: list[list[tuple[str, int, int]]]) -> list[list[dict]]:
    return [[{"label": t, "start": s, "end": e - 1} for t, s, e in doc] for doc in docs]


def test_agrees_with_nervaluate() -> None:
    scorer = EntityScorer()
    for g, p in zip(NERVAL_GOLD, NERVAL_PRED):
        scorer.add_spans([gold(t, (s, e)) for t, s, e in g], p)
    ours = scorer.result()
    assert ours.strict == PRF(3, 5, 3) and ours.lenient == PRF(5, 3, 1)  # by hand

    results = Evaluator(
        _nerval(NERVAL_GOLD), _nerval(NERVAL_PRED), tags=["problem", "drug"], loader="dict"
    ).evaluate()

    def same(prf: PRF, nv, correct: int) -> None:
        assert correct == prf.tp
        assert nv.actual == prf.tp + prf.fp and nv.possible == prf.tp + prf.fn
        assert nv.precision == pytest.approx(prf.precision)
        assert nv.recall == pytest.approx(prf.recall)
        assert nv.f1 == pytest.approx(prf.f1)

    # nervaluate "strict" (exact boundaries and type) is our strict.
    same(ours.strict, results["overall"]["strict"], results["overall"]["strict"].correct)
    # nervaluate "ent_type" (same type, any overlap) is our lenient; it never counts
    # "partial", so its half-credit formula reduces to plain precision/recall.
    ent_type = results["overall"]["ent_type"]
    assert ent_type.partial == 0
    same(ours.lenient, ent_type, ent_type.correct)
    for typ, (strict, lenient) in ours.per_type.items():
        per = results["entities"][typ]
        same(strict, per["strict"], per["strict"].correct)
        same(lenient, per["ent_type"], per["ent_type"].correct)
        # "partial" ignores types, so it coincides with lenient only within one type, and
        # only in counts: its precision gives half credit to partial matches.
        assert per["partial"].correct + per["partial"].partial == lenient.tp
        assert per["partial"].correct == strict.tp
