"""The screening's checks as pure functions: verdicts in, verdicts out, nothing logged or kept."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from strategies.screening import bound_update_norms, canonical_order, check_weights, screen_train_replies
from strategies.screening import check_reply as check
from support.messages import error_reply, reply
from support.toy_adapter import SHAPES, const_state


def _check(msg, site):  # noqa: ANN001, ANN202
    return check(msg, SHAPES, "num-examples", site)


def test_screening_returns_accepted_and_rejected_in_a_fixed_order(caplog: pytest.LogCaptureFixture) -> None:
    nan = const_state(1.0)
    nan[next(iter(nan))][0, 0] = np.nan
    replies = [reply(3, const_state(3.0), 3, "h3"), reply(9, nan, 1, "bad"), reply(1, const_state(1.0), 1, "h1")]
    labelled = [("h3", replies[0]), ("bad", replies[1]), ("node 7", error_reply(7)), ("h1", replies[2])]
    with caplog.at_level(logging.DEBUG):
        screening = screen_train_replies(labelled, _check)
    assert [c.site for c in screening.accepted] == ["h1", "h3"]
    assert [c.num_examples for c in screening.accepted] == [1, 3]
    assert screening.rejected == [
        ("bad", f"{next(iter(SHAPES))} has 1 non-finite value(s)"),
        ("node 7", "error reply (code 7): data/notes.txt line 3: bad span"),
    ]
    assert caplog.text == ""  # the wrapper logs the verdicts, not the checks


def test_norm_bound_rejects_or_moves_without_touching_its_input() -> None:
    global_state = const_state(0.0)
    near, far = reply(1, const_state(0.01), 1, "near"), reply(2, const_state(5.0), 1, "far")
    candidates = canonical_order([_check(near, "near"), _check(far, "far")])
    rejected = bound_update_norms(candidates, global_state, 1.0, "reject")
    assert [c.site for c in rejected.kept] == ["near"] and rejected.rejected[0][0] == "far"
    assert "exceeds strategy.max-update-norm = 1" in rejected.rejected[0][1]
    clipped = bound_update_norms(candidates, global_state, 1.0, "clip")
    assert [c.site for c in clipped.kept] == ["far", "near"] and clipped.rejected == []
    moved = clipped.kept[0]
    assert 0 < moved.clip_factor < 1 and clipped.clipped["far"]["norm-after"] <= 1.0 + 1e-6
    assert candidates[0].clip_factor is None  # the input candidate is unchanged
    assert bound_update_norms(candidates, global_state, 0.0, "reject").kept == candidates


def test_weights_are_checked_with_the_hook_named() -> None:
    candidates = [_check(reply(1, const_state(1.0), 1, "a"), "a"), _check(reply(2, const_state(1.0), 1, "b"), "b")]
    assert check_weights("X.aggregation_weights", candidates, [0.25, 0.75]) == [0.25, 0.75]
    with pytest.raises(ValueError, match="X.aggregation_weights returned weights that do not sum to one"):
        check_weights("X.aggregation_weights", candidates, [0.5, 0.6])
    candidates[0].rejected = "no"
    with pytest.raises(ValueError, match="gave a rejected update a non-zero weight"):
        check_weights("X.aggregation_weights", candidates, [0.5, 0.5])
