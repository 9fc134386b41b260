"""The pure parts of the single-site and validation-subset benchmarks."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from support.paths import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

import single_site  # noqa: E402
import validation_subset  # noqa: E402


def _round(cells: dict[int, tuple[bool, float]]) -> dict:
    return {"by_size": {n: {"same_ranking": same, "weight_l1": l1} for n, (same, l1) in cells.items()}}


def test_smallest_agreeing_size_needs_every_larger_size_and_round_to_agree():
    agree_from_32 = _round({8: (True, 0.01), 16: (False, 0.2), 32: (True, 0.02), 64: (True, 0.01)})
    assert validation_subset.smallest_agreeing_size([agree_from_32], 0.05) == 32
    later_round = _round({8: (True, 0.0), 16: (True, 0.0), 32: (True, 0.09), 64: (True, 0.01)})
    assert validation_subset.smallest_agreeing_size([agree_from_32, later_round], 0.05) == 64
    never = _round({8: (True, 0.0), 64: (False, 0.0)})
    assert validation_subset.smallest_agreeing_size([never], 0.05) is None


def test_softmax_weights_are_fed_medlora_plus_weights():
    w = validation_subset.softmax_weights([0.5, 1.0, 2.0])
    expected = np.exp([0.5, 0.0, -1.0]) / np.exp([0.5, 0.0, -1.0]).sum()
    assert w == pytest.approx(expected)
    assert validation_subset.ranking([0.7, 0.2, 0.9]) == [1, 0, 2]


def test_single_site_test_set_pairs_relations_with_the_chosen_sentences():
    from data_loaders.sites import ensure_demo_corpus, load_site

    site = load_site(ensure_demo_corpus() / "site-a")
    chosen = single_site.test_instances(site, 10, "given-entities")
    ner = [(i.doc_id, i.offset) for i in chosen if i.task == "ner"]
    re_ = [(i.doc_id, i.offset) for i in chosen if i.task == "re"]
    assert len(ner) == 10 and re_ and set(re_) <= set(ner)
    assert all(i.given_entities for i in chosen if i.task == "re")
