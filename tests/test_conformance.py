"""Conformance suite: every registered strategy, the example plugin and DP-wrapped variants.

Each strategy is built the way the ServerApp builds it (validated run config ->
server_app.strategy_factory.build_strategy), configured for a round (so server-side
optimisers and the update-norm bound know the global adapter) and fed hand-built replies
(tests/test_strategies.py's `reply`). Universal checks (docs/architecture.md, "Strategy conformance"): output keys,
order and shapes of the global adapter, float32, finite; malformed updates rejected without
failing the round; the same output for the same replies in any order (seeded, for DP noise);
the update-norm bound. Declared invariants: "weights-sum-to-one", "exact-product".

To check a strategy that is not registered here:
`CONFORMANCE_STRATEGIES=package.module:Class pytest tests/test_conformance.py` (comma-separated).
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message
from flwr.serverapp.strategy import Strategy

from fedmedlora.config import validate
from server_app.strategy_factory import build_strategy
from strategies import available_strategies
from test_strategies import error_reply, reply

PLUGIN = "examples.my_strategy:LossInverse"
KNOWN_INVARIANTS = {"weights-sum-to-one", "exact-product"}

# Two LoRA modules (PEFT key names), rank 2: A is (r, in), B is (out, r).
Q, DOWN = "base_model.model.model.layers.0.self_attn.q_proj", "base_model.model.model.layers.0.mlp.down_proj"
SHAPES = {
    f"{Q}.lora_A.weight": (2, 6),
    f"{Q}.lora_B.weight": (5, 2),
    f"{DOWN}.lora_A.weight": (2, 4),
    f"{DOWN}.lora_B.weight": (6, 2),
}
PAIRS = [(f"{Q}.lora_A.weight", f"{Q}.lora_B.weight"), (f"{DOWN}.lora_A.weight", f"{DOWN}.lora_B.weight")]
BASE_CONFIG: dict[str, Any] = {"lora.r": 2, "lora.alpha": 4, "strategy.min-sites": 4}
NUM_SITES = 4

# DP-wrapped variants: the universal checks hold for them too.
DP_VARIANTS = {
    "fedmedlora[dp=server-fixed]": {"strategy.name": "fedmedlora", "strategy.dp": "server-fixed",
                                    "strategy.dp-noise-multiplier": 0.5, "strategy.dp-clipping-norm": 2.0},
    "fedmedlora-plus[dp=client-fixed]": {"strategy.name": "fedmedlora-plus", "strategy.dp": "client-fixed",
                                         "strategy.dp-noise-multiplier": 0.5},
    "krum[dp=server-adaptive]": {"strategy.name": "krum", "strategy.dp": "server-adaptive",
                                 "strategy.dp-noise-multiplier": 0.1, "strategy.dp-num-sampled-sites": 4},
}
# More `module:Class` strategies to check, from the environment.
EXTRA = [s.strip() for s in os.environ.get("CONFORMANCE_STRATEGIES", "").split(",") if s.strip()]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "name" in metafunc.fixturenames:
        metafunc.parametrize("name", [*available_strategies(), PLUGIN, *EXTRA, *DP_VARIANTS])


# --- building and feeding a strategy ---------------------------------------------------


def validation_loss(state: dict[str, np.ndarray]) -> float:
    """Deterministic stand-in for the coordinator's validation loss (Fed-MedLoRA+)."""
    return float(sum(np.abs(v).mean() for v in state.values()))


class FakeGrid:
    """Enough of flwr's Grid for `configure_train`: the connected nodes."""

    def __init__(self, num_nodes: int = NUM_SITES) -> None:
        self.num_nodes = num_nodes

    def get_node_ids(self) -> list[int]:
        return list(range(1, self.num_nodes + 1))


@pytest.fixture(autouse=True)
def server_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Instruction messages take their run from the ServerApp process's identity."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 0)


def run_config(name: str, **overrides: Any) -> dict[str, Any]:
    base = {**BASE_CONFIG, **DP_VARIANTS.get(name, {"strategy.name": name})}
    return validate({**base, **overrides})


def build(name: str, global_state: dict[str, np.ndarray] | None = None, **overrides: Any) -> Strategy:
    """Build as the ServerApp does and configure round 1 from `global_state`."""
    strategy = build_strategy(run_config(name, **overrides), SHAPES, validation_loss)
    record = to_record(global_state if global_state is not None else GLOBAL)
    strategy.configure_train(1, record, ConfigRecord(), FakeGrid())
    return strategy


def to_record(state: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v, np.float32)) for k, v in state.items()})


def random_state(rng: np.random.Generator, scale: float = 0.1) -> dict[str, np.ndarray]:
    return {k: (rng.standard_normal(s) * scale).astype(np.float32) for k, s in SHAPES.items()}


GLOBAL = random_state(np.random.default_rng(100))


def site_states(seed: int = 0, n: int = NUM_SITES, spread: float = 0.01) -> list[dict[str, np.ndarray]]:
    """Sites near the global adapter, as after a little local training."""
    rng = np.random.default_rng(seed)
    return [{k: (GLOBAL[k] + spread * rng.standard_normal(v.shape)).astype(np.float32) for k, v in GLOBAL.items()}
            for _ in range(n)]


def good_replies(states: list[dict[str, np.ndarray]] | None = None) -> list[Message]:
    states = site_states() if states is None else states
    # Distinct sizes and losses, so every weighting has something to weigh.
    return [reply(i + 1, s, 10 * (i + 1), f"h{i + 1}", {"train-loss": 1.0 + 0.25 * i, "norm_bit": 0})
            for i, s in enumerate(states)]


def aggregate(strategy: Strategy, replies: list[Message]) -> tuple[dict[str, np.ndarray] | None, Any]:
    np.random.seed(0)  # Flower's DP noise draws from numpy's global generator
    arrays, _ = strategy.aggregate_train(1, replies)
    out = None if arrays is None else {k: arrays[k].numpy() for k in arrays.keys()}
    return out, strategy.last_train_report


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


def _nan(states: list[dict[str, np.ndarray]]) -> Message:
    state = {k: v.copy() for k, v in states[0].items()}
    state[PAIRS[0][0]][0, 0] = np.nan
    return reply(99, state, 10, "bad")


MALFORMED = {
    "nan": _nan,
    "inf": lambda s: reply(99, {**s[0], PAIRS[1][1]: np.full((6, 2), np.inf, np.float32)}, 10, "bad"),
    "wrong shape": lambda s: reply(99, {**s[0], PAIRS[0][0]: np.zeros((3, 6), np.float32)}, 10, "bad"),
    "missing key": lambda s: reply(99, {k: v for k, v in s[0].items() if k != PAIRS[1][0]}, 10, "bad"),
    "error reply": lambda s: error_reply(99),
}


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
    out, report = aggregate(build(name), good_replies([same] * NUM_SITES))
    assert math.fsum(u.weight for u in report.updates) == pytest.approx(1.0, abs=1e-9)
    for key in SHAPES:
        np.testing.assert_allclose(out[key], same[key], rtol=1e-6, atol=1e-7)


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
