"""Conformance suite: every registered strategy, the example plugin and DP-wrapped variants.

Each strategy is built the way the ServerApp builds it (validated run config ->
server_app.strategy_factory.build_strategy), configured for a round (so server-side
optimisers and the update-norm bound know the global adapter) and fed hand-built replies
(tests/support/strategy_harness.py, with tests/support/messages.py's `reply`). Universal
checks (docs/architecture.md, "Strategy conformance"): output keys, order and shapes of the
global adapter, float32, finite; malformed updates rejected without failing the round; the
same output for the same replies in any order (seeded, for DP noise); the update-norm bound.
Declared invariants: "weights-sum-to-one", "exact-product".

To check a strategy that is not registered here:
`CONFORMANCE_STRATEGIES=package.module:Class pytest tests/test_conformance.py` (comma-separated).
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterator

import numpy as np
import pytest
from flwr.app import Message

from support.messages import error_reply
from support.strategy_harness import (
    DP_VARIANTS,
    GLOBAL,
    MALFORMED,
    NUM_SITES,
    PAIRS,
    SHAPES,
    aggregate,
    build,
    good_replies,
    pytest_generate_tests,  # noqa: F401 - parametrises `name`
    sent_factors,
    server_identity,  # noqa: F401 - autouse fixture: lets configure_train build messages
    site_states,
)
from wire import protocol

KNOWN_INVARIANTS = {"weights-sum-to-one", "exact-product"}


def dense(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return b.astype(np.float64) @ a.astype(np.float64)


# --- universal checks ------------------------------------------------------------------


def test_invariants_are_declared_and_known(name: str) -> None:
    strategy = build(name)
    assert isinstance(strategy.invariants, tuple)
    assert set(strategy.invariants) <= KNOWN_INVARIANTS, strategy.invariants
    if name in DP_VARIANTS:
        assert strategy.invariants == ()  # DP keeps none of the weighted-average invariants


def test_output_matches_the_global_adapter(name: str) -> None:
    out, report = aggregate(build(name), good_replies())
    assert out is not None
    assert list(out) == list(SHAPES)
    for key, shape in SHAPES.items():
        assert out[key].shape == shape
        assert out[key].dtype == np.float32
        assert np.isfinite(out[key]).all()
    assert report.rejected == []
    assert {u.site for u in report.updates} == {f"h{i + 1}" for i in range(NUM_SITES)}
    assert all(math.isfinite(u.weight) and u.weight >= 0 for u in report.updates)


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_update_is_rejected_and_the_round_goes_on(
    name: str, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    states = site_states()
    replies = good_replies(states)
    with caplog.at_level(logging.WARNING, logger="flwr"):
        out, report = aggregate(build(name), [*replies[:2], MALFORMED[case](states), *replies[2:]])
    site = "node 99" if case == "error reply" else "bad"
    assert [s for s, _ in report.rejected] == [site]
    assert f"round 1: update from site {site} rejected: {report.rejected[0][1]}" in caplog.text
    assert "bad" not in {u.site for u in report.updates}
    expected, _ = aggregate(build(name), good_replies(states))
    assert out is not None and expected is not None
    for key in SHAPES:
        np.testing.assert_array_equal(out[key], expected[key])


def _orders(replies: list[Message]) -> Iterator[list[Message]]:
    return (list(p) for p in itertools.islice(itertools.permutations(replies), 0, None, 131))


def test_same_output_for_the_same_replies_in_any_order(name: str) -> None:
    states = site_states(seed=3)
    replies = [*good_replies(states), MALFORMED["nan"](states), error_reply(42)]
    base_out, base_report = aggregate(build(name), replies)
    assert base_out is not None
    for order in _orders(replies):
        out, report = aggregate(build(name), order)
        for key in SHAPES:
            np.testing.assert_array_equal(out[key], base_out[key])
        assert report.updates == base_report.updates
        assert report.rejected == base_report.rejected


def test_update_norm_bound_rejects_an_outlier(name: str, caplog: pytest.LogCaptureFixture) -> None:
    states = site_states()
    states[1] = {k: v + 5.0 for k, v in states[1].items()}  # a far larger update than the rest
    # 3 of the 4 sites are left: strategy.min-sites = 3 lets the round go on.
    strategy = build(name, **{"strategy.max-update-norm": 1.0, "strategy.update-norm-action": "reject",
                              "strategy.min-sites": 3})
    with caplog.at_level(logging.WARNING, logger="flwr"):
        out, report = aggregate(strategy, good_replies(states))
    assert out is not None and all(np.isfinite(v).all() for v in out.values())
    assert [s for s, _ in report.rejected] == ["h2"]
    assert "exceeds strategy.max-update-norm = 1" in report.rejected[0][1]
    assert "round 1: update from site h2 rejected: update norm" in caplog.text
    assert report.extra["update-norm"]["h2"] > 1.0 > report.extra["update-norm"]["h1"]


def test_update_norm_bound_clips_an_outlier(name: str) -> None:
    states = site_states()
    states[1] = {k: v + 5.0 for k, v in states[1].items()}
    strategy = build(name, **{"strategy.max-update-norm": 1.0, "strategy.update-norm-action": "clip"})
    out, report = aggregate(strategy, good_replies(states))
    assert out is not None and all(np.isfinite(v).all() for v in out.values())
    assert report.rejected == []
    assert set(report.extra["clipped"]) == {"h2"}
    assert 0 < report.extra["clipped"]["h2"]["factor"] < 1


# --- declared invariants ---------------------------------------------------------------


def test_weights_sum_to_one(name: str) -> None:
    strategy = build(name)
    if "weights-sum-to-one" not in strategy.invariants:
        pytest.skip(f"{name} does not declare weights-sum-to-one")
    _, report = aggregate(strategy, good_replies())
    assert math.fsum(u.weight for u in report.updates) == pytest.approx(1.0, abs=1e-9)

    same = site_states(n=1)[0]
    strategy = build(name)
    out, report = aggregate(strategy, good_replies([same] * NUM_SITES))
    assert math.fsum(u.weight for u in report.updates) == pytest.approx(1.0, abs=1e-9)
    sent = sent_factors(strategy)
    for key in SHAPES:
        # A factor the round keeps at the sites comes back as the adapter the round sent.
        expected = same[key] if protocol.factor_of(key) in (None, *sent) else GLOBAL[key]
        np.testing.assert_allclose(out[key], expected, rtol=1e-6, atol=1e-7)


def test_exact_product(name: str) -> None:
    strategy = build(name)
    if "exact-product" not in strategy.invariants:
        pytest.skip(f"{name} does not declare exact-product")
    # Sites share A, so sum_k w_k B_k A_k has rank r and the rank-r aggregate is exact.
    states = site_states(seed=5)
    for state in states[1:]:
        for a_key, _ in PAIRS:
            state[a_key] = states[0][a_key]
    out, report = aggregate(strategy, good_replies(states))
    weights = {u.site: u.weight for u in report.updates}
    assert math.fsum(weights.values()) == pytest.approx(1.0, abs=1e-9)
    for a_key, b_key in PAIRS:
        expected = sum(weights[f"h{i + 1}"] * dense(s[a_key], s[b_key]) for i, s in enumerate(states))
        np.testing.assert_allclose(dense(out[a_key], out[b_key]), expected, rtol=1e-5, atol=1e-6)
