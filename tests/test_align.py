"""align_predictions: k-th copy -> k-th unused occurrence, drops counted."""

from __future__ import annotations

from clinical_ie.align import align_predictions


def test_kth_copy_maps_to_kth_occurrence() -> None:
    text = "aspirin then aspirin then aspirin"
    spans, dropped = align_predictions([("drug", "aspirin")] * 3, text)
    assert spans == [("drug", 0, 7), ("drug", 13, 20), ("drug", 26, 33)]
    assert dropped == 0


def test_copies_beyond_occurrences_are_dropped() -> None:
    spans, dropped = align_predictions([("drug", "aspirin")] * 3, "aspirin and aspirin")
    assert spans == [("drug", 0, 7), ("drug", 12, 19)]
    assert dropped == 1


def test_not_found_and_empty_are_counted() -> None:
    spans, dropped = align_predictions(
        [("problem", "fever"), ("problem", "cough"), ("problem", "  "), ("problem", "")],
        "fever since monday",
    )
    assert spans == [("problem", 0, 5)]
    assert dropped == 3


def test_case_insensitive_fallback_after_exact() -> None:
    text = "Fever at night, fever by day"
    spans, dropped = align_predictions([("problem", "fever"), ("problem", "fever")], text)
    # exact occurrence first, then the case-insensitive one
    assert spans == [("problem", 16, 21), ("problem", 0, 5)]
    assert dropped == 0
    assert align_predictions([("problem", "FEVER")], text)[0] == [("problem", 0, 5)]


def test_types_are_independent() -> None:
    spans, dropped = align_predictions([("problem", "pain"), ("severity", "pain")], "pain")
    assert spans == [("problem", 0, 4), ("severity", 0, 4)]
    assert dropped == 0


def test_short_mention_prefers_occurrence_outside_longer_one() -> None:
    text = "chest pain and pain"
    spans, _ = align_predictions([("problem", "pain"), ("problem", "chest pain")], text)
    assert spans == [("problem", 15, 19), ("problem", 0, 10)]
    # nested gold of the same type still aligns when no separate occurrence exists
    spans, _ = align_predictions([("problem", "left chest pain"), ("problem", "chest pain")], "left chest pain")
    assert spans == [("problem", 0, 15), ("problem", 5, 15)]


def test_surrounding_whitespace_ignored() -> None:
    assert align_predictions([("drug", " aspirin ")], "took aspirin") == ([("drug", 5, 12)], 0)
