"""ExactLoRA on hand-built Flower replies: exactness, truncation, mixed ranks, screening, scale.

Dense products are formed here only, as the reference; the strategy never forms them.
Replies are built as in tests/support/messages.py: `Message(content, reply_to=instruction)`.
"""

from __future__ import annotations

import itertools
import logging
import time
import tracemalloc

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from threadpoolctl import threadpool_limits

from settings.config import validate
from strategies import compose
from strategies.exact import ExactLoRA, exact_factors, lora_modules
from strategies.registry import available_strategies, strategy_class
from support.messages import instruction

OUT, IN, R = 12, 10, 3
P = "base_model.model.layers.0.q_proj"  # one LoRA module
A_KEY, B_KEY = f"{P}.lora_A.weight", f"{P}.lora_B.weight"
SHAPES = {A_KEY: (R, IN), B_KEY: (OUT, R)}
NUMS = (1, 2, 5)  # num-examples: weights 1/8, 2/8, 5/8
ALPHA = 6.0


def reply(node_id: int, state: dict[str, np.ndarray], num_examples: float, site: str, **metrics) -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(np.asarray(v)) for k, v in state.items()}),
            "metrics": MetricRecord({"train-loss": 1.0, "num-examples": num_examples, **metrics}),
            "site": ConfigRecord({"name": site}),
        }
    )
    return Message(content=content, reply_to=instruction(node_id))


def site_state(rng: np.random.Generator, rank: int = R, out: int = OUT, inp: int = IN) -> dict[str, np.ndarray]:
    return {
        A_KEY: rng.standard_normal((rank, inp)).astype(np.float32),
        B_KEY: rng.standard_normal((out, rank)).astype(np.float32),
    }


def dense(states, weights, alphas) -> np.ndarray:
    """The reference: sum_k p_k (alpha_k / r_k) B_k A_k in float64."""
    return sum(
        p * a / s[A_KEY].shape[0] * (s[B_KEY].astype(np.float64) @ s[A_KEY].astype(np.float64))
        for s, p, a in zip(states, weights, alphas, strict=True)
    )


def best_rank(m: np.ndarray, k: int) -> np.ndarray:
    u, s, vt = np.linalg.svd(m, full_matrices=False)
    return (u[:, :k] * s[:k]) @ vt[:k]


def product(arrays: ArrayRecord, alpha: float = ALPHA, r: int = R) -> np.ndarray:
    """(alpha / r) B A of the returned global adapter."""
    return alpha / r * (arrays[B_KEY].numpy().astype(np.float64) @ arrays[A_KEY].numpy().astype(np.float64))


@pytest.fixture
def states() -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(7)
    return [site_state(rng) for _ in NUMS]


def replies_of(states) -> list[Message]:
    return [reply(i + 1, s, n, f"h{i + 1}") for i, (s, n) in enumerate(zip(states, NUMS, strict=True))]


WEIGHTS = [n / sum(NUMS) for n in NUMS]


# --- the math, in float64 ------------------------------------------------------------


def test_full_rank_reproduces_the_dense_sum(states) -> None:
    m = dense(states, WEIGHTS, [ALPHA] * 3)
    scales = [p * ALPHA / R for p in WEIGHTS]
    result = exact_factors([s[B_KEY] for s in states], [s[A_KEY] for s in states], scales, "full")
    assert result.b.shape == (OUT, 3 * R) and result.a.shape == (3 * R, IN)
    np.testing.assert_allclose(result.b @ result.a, m, rtol=0, atol=1e-10)
    assert result.dropped_energy == pytest.approx(0.0, abs=1e-15)


def test_truncation_is_the_best_rank_r_approximation(states) -> None:
    m = dense(states, WEIGHTS, [ALPHA] * 3)
    scales = [p * ALPHA / R for p in WEIGHTS]
    result = exact_factors([s[B_KEY] for s in states], [s[A_KEY] for s in states], scales, R)
    approx = result.b @ result.a
    reference = best_rank(m, R)
    assert np.linalg.norm(m - approx) == pytest.approx(np.linalg.norm(m - reference), abs=1e-8)
    np.testing.assert_allclose(approx, reference, atol=1e-8)  # unique: random singular values are distinct
    s = np.linalg.svd(m, compute_uv=False)
    assert result.dropped_energy == pytest.approx(1 - np.sum(s[:R] ** 2) / np.sum(s**2), abs=1e-12)
    # Singular values split evenly: B^T B = A A^T = diag(s_r).
    np.testing.assert_allclose(result.b.T @ result.b, np.diag(s[:R]), atol=1e-9)
    np.testing.assert_allclose(result.a @ result.a.T, np.diag(s[:R]), atol=1e-9)


# --- the strategy on replies ---------------------------------------------------------


def test_full_rank_strategy_is_exact_up_to_float32(states) -> None:
    strategy = compose(ExactLoRA(rank="full", alpha=ALPHA, expected_shapes=SHAPES))
    arrays, _ = strategy.aggregate_train(1, replies_of(states))
    assert arrays[A_KEY].numpy().shape == (3 * R, IN) and arrays[A_KEY].numpy().dtype == np.float32
    m = dense(states, WEIGHTS, [ALPHA] * 3)
    np.testing.assert_allclose(product(arrays), m, rtol=0, atol=1e-5 * np.abs(m).max())
    assert strategy.round_report().extra["truncated-energy"] == {"max": 0.0, "mean": 0.0, "modules": 1}
    assert [u.weight for u in strategy.round_report().updates] == pytest.approx(WEIGHTS)


def test_default_rank_gives_global_shapes_and_logs_dropped_energy(states, caplog) -> None:
    strategy = compose(ExactLoRA(alpha=ALPHA, expected_shapes=SHAPES))
    with caplog.at_level(logging.INFO, logger="flwr"):
        arrays, metrics = strategy.aggregate_train(3, replies_of(states))
    assert {k: arrays[k].numpy().shape for k in arrays.keys()} == SHAPES
    m = dense(states, WEIGHTS, [ALPHA] * 3)
    reference = best_rank(m, R)
    assert np.linalg.norm(m - product(arrays)) == pytest.approx(np.linalg.norm(m - reference), rel=1e-5)
    s = np.linalg.svd(m, compute_uv=False)
    expected = 1 - np.sum(s[:R] ** 2) / np.sum(s**2)
    extra = strategy.round_report().extra["truncated-energy"]
    assert extra["max"] == pytest.approx(expected) and extra["mean"] == pytest.approx(expected)
    assert f"round 3: exact LoRA aggregation to rank global dropped max {expected:.3g}" in caplog.text
    assert metrics["train-loss"] == pytest.approx(1.0)


def test_alpha_cancels_when_sites_share_rank_and_alpha(states) -> None:
    a = compose(ExactLoRA(alpha=ALPHA, expected_shapes=SHAPES)).aggregate_train(1, replies_of(states))[0]
    b = compose(ExactLoRA(expected_shapes=SHAPES)).aggregate_train(1, replies_of(states))[0]
    # Same raw product B A: the strategy's alpha only matters when sites differ in rank or alpha.
    np.testing.assert_allclose(product(a, 1.0, 1), product(b, 1.0, 1), rtol=1e-5, atol=1e-5)


def test_sites_with_different_ranks_and_alphas() -> None:
    rng = np.random.default_rng(3)
    ranks, alphas = (2, 3, 5), (4.0, None, 16.0)  # site 2 uses the strategy's alpha
    states = [site_state(rng, rank) for rank in ranks]
    replies = [
        reply(i + 1, s, n, f"h{i + 1}", **({"lora-alpha": a} if a is not None else {}))
        for i, (s, n, a) in enumerate(zip(states, NUMS, alphas, strict=True))
    ]
    strategy = compose(ExactLoRA(alpha=ALPHA, expected_shapes=SHAPES))
    arrays, _ = strategy.aggregate_train(1, replies)
    assert strategy.round_report().rejected == []
    assert {k: arrays[k].numpy().shape for k in arrays.keys()} == SHAPES
    m = dense(states, WEIGHTS, [4.0, ALPHA, 16.0])
    assert np.linalg.norm(m - product(arrays)) == pytest.approx(np.linalg.norm(m - best_rank(m, R)), rel=1e-5)

    full, _ = compose(ExactLoRA(rank="full", alpha=ALPHA, expected_shapes=SHAPES)).aggregate_train(1, replies)
    assert full[A_KEY].numpy().shape == (sum(ranks), IN)
    np.testing.assert_allclose(product(full), m, atol=1e-5 * np.abs(m).max())


class FakeGrid:
    """Enough of flwr's Grid for `configure_train`: the connected nodes."""

    def get_node_ids(self) -> list[int]:
        return [1, 2, 3]


@pytest.fixture
def server_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Instruction messages take their run from the ServerApp process's identity."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 0)


@pytest.mark.usefixtures("server_identity")
@pytest.mark.parametrize("configure", ["configure_train", "configure_evaluate"])
def test_each_site_is_sent_its_own_rank(configure: str) -> None:
    rng = np.random.default_rng(11)
    ranks, alphas = (2, 3, 5), (4.0, ALPHA, 16.0)  # node 2 has the global rank R = 3
    states = [site_state(rng, rank) for rank in ranks]
    replies = [
        reply(i + 1, s, n, f"h{i + 1}", **{"lora-alpha": a})
        for i, (s, n, a) in enumerate(zip(states, NUMS, alphas, strict=True))
    ]
    strategy = compose(ExactLoRA(alpha=ALPHA, expected_shapes=SHAPES))
    arrays, _ = strategy.aggregate_train(1, replies)
    m = dense(states, WEIGHTS, alphas)

    messages = getattr(strategy, configure)(2, arrays, ConfigRecord({}), FakeGrid())
    sent = {msg.metadata.dst_node_id: msg.content.array_records for msg in messages}
    assert sorted(sent) == [1, 2, 3]
    for node, rank, alpha in zip((1, 2, 3), ranks, alphas, strict=True):
        (record,) = sent[node].values()
        assert record[A_KEY].numpy().shape == (rank, IN)
        assert record[B_KEY].numpy().shape == (OUT, rank)
        # The site's own scaling alpha_k / r_k applied to its factors gives M's best rank-r_k part.
        np.testing.assert_allclose(
            product(record, alpha, rank), best_rank(m, rank), atol=1e-5 * np.abs(m).max()
        )
    # The global-rank site gets the global adapter itself.
    assert next(iter(sent[2].values())) is arrays


@pytest.mark.usefixtures("server_identity")
def test_a_changed_global_adapter_is_sent_to_every_site_as_it_is(caplog) -> None:
    rng = np.random.default_rng(12)
    states = [site_state(rng, rank) for rank in (2, 3, 5)]
    replies = [reply(i + 1, s, n, f"h{i + 1}") for i, (s, n) in enumerate(zip(states, NUMS, strict=True))]
    strategy = compose(ExactLoRA(alpha=ALPHA, expected_shapes=SHAPES))
    arrays, _ = strategy.aggregate_train(1, replies)
    noised = ArrayRecord({k: Array(arrays[k].numpy() + 1e-3) for k in arrays.keys()})  # e.g. DP noise
    with caplog.at_level(logging.WARNING):
        messages = strategy.configure_train(2, noised, ConfigRecord({}), FakeGrid())
    assert all(next(iter(m.content.array_records.values())) is noised for m in messages)
    assert "not the one aggregated last" in caplog.text


def test_all_zero_updates_give_a_zero_adapter(states) -> None:
    for state in states:
        state[B_KEY][:] = 0  # B starts at zero in LoRA: M = 0
    strategy = compose(ExactLoRA(alpha=ALPHA, expected_shapes=SHAPES))
    arrays, _ = strategy.aggregate_train(1, replies_of(states))
    for key in SHAPES:
        assert not arrays[key].numpy().any()
    assert strategy.round_report().extra["truncated-energy"]["max"] == 0.0


def test_rank_below_global_is_zero_padded(states) -> None:
    arrays, _ = compose(ExactLoRA(rank=1, alpha=ALPHA, expected_shapes=SHAPES)).aggregate_train(1, replies_of(states))
    a, b = arrays[A_KEY].numpy(), arrays[B_KEY].numpy()
    assert a.shape == (R, IN) and b.shape == (OUT, R)
    assert not a[1:].any() and not b[:, 1:].any()
    m = dense(states, WEIGHTS, [ALPHA] * 3)
    np.testing.assert_allclose(product(arrays), best_rank(m, 1), atol=1e-5 * np.abs(m).max())


def test_non_lora_keys_are_averaged_plainly(states) -> None:
    shapes = {**SHAPES, "head.bias": (4,)}
    for i, s in enumerate(states):
        s["head.bias"] = np.full(4, float(i + 1), np.float32)
    arrays, _ = compose(ExactLoRA(alpha=ALPHA, expected_shapes=shapes)).aggregate_train(1, replies_of(states))
    assert list(arrays.keys()) == list(shapes)
    np.testing.assert_allclose(arrays["head.bias"].numpy(), sum(p * (i + 1) for i, p in enumerate(WEIGHTS)))


def test_result_independent_of_reply_order(states) -> None:
    replies = replies_of(states)

    def run(order):
        strategy = compose(ExactLoRA(alpha=ALPHA, expected_shapes=SHAPES))
        arrays, _ = strategy.aggregate_train(1, list(order))
        return {k: arrays[k].numpy() for k in arrays.keys()}, strategy.round_report()

    base, base_report = run(replies)
    for order in itertools.permutations(replies):
        arrays, report = run(order)
        for key in SHAPES:
            np.testing.assert_array_equal(arrays[key], base[key])
        assert report == base_report


def _with(**shapes: tuple[int, ...]):
    """A reply state maker: the good state with some tensors replaced by zeros of these shapes."""
    keys = {"A": A_KEY, "B": B_KEY}
    return lambda s: {**s, **{keys[k]: np.zeros(v, np.float32) for k, v in shapes.items()}}


@pytest.mark.parametrize(
    "make, metrics, reason",
    [
        (_with(A=(R, IN + 1)), {}, f"{A_KEY} has shape (3, 11), expected (3, 10)"),
        (_with(B=(OUT - 1, R)), {}, f"{B_KEY} has shape (11, 3), expected (12, 3)"),
        (_with(A=(2, IN + 1), B=(OUT, 2)), {}, f"{A_KEY} has shape (2, 11), expected (3, 10)"),
        (_with(A=(4, IN)), {}, f"{P}: lora_A has rank 4 but lora_B has rank 3"),
        (_with(A=(R, IN, 1)), {}, f"{A_KEY} has shape (3, 10, 1), expected (3, 10)"),
        (lambda s: {B_KEY: s[B_KEY]}, {}, f"adapter keys differ: missing [{A_KEY}], unexpected []"),
        (lambda s: s, {"lora-alpha": 0.0}, "'lora-alpha' must be a number > 0, got 0.0"),
    ],
    ids=["wrong in", "wrong out", "rank and in", "ranks disagree", "3-D", "missing A", "bad alpha"],
)
def test_malformed_reply_is_rejected_and_the_rest_aggregated(states, make, metrics, reason) -> None:
    strategy = compose(ExactLoRA(alpha=ALPHA, expected_shapes=SHAPES))
    good = replies_of(states)
    arrays, _ = strategy.aggregate_train(1, [*good, reply(99, make(dict(states[0])), 4, "bad", **metrics)])
    assert strategy.round_report().rejected == [("bad", reason)]
    expected, _ = compose(ExactLoRA(alpha=ALPHA, expected_shapes=SHAPES)).aggregate_train(1, good)
    for key in SHAPES:
        np.testing.assert_array_equal(arrays[key].numpy(), expected[key].numpy())
    assert strategy.core.expected_shapes == SHAPES  # the per-site swap is undone


# --- construction and registry -------------------------------------------------------


def test_registered_and_declares_exact_product() -> None:
    assert "exact" in available_strategies()
    assert strategy_class("exact") is ExactLoRA
    assert ExactLoRA.invariants == ("exact-product",)


def test_from_run_config() -> None:
    cfg = validate({"lora.r": R, "lora.alpha": 64, "strategy.exact-rank": "full"})
    strategy = ExactLoRA.from_run_config(cfg, SHAPES, None, min_available_nodes=3)
    assert (strategy.rank, strategy.alpha, strategy.min_available_nodes) == ("full", 64.0, 3)
    assert ExactLoRA.from_run_config(validate({**cfg.as_dict(), "strategy.exact-rank": "2"}), SHAPES).rank == 2
    assert ExactLoRA.from_run_config(validate({"lora.r": R, "lora.alpha": 64}), SHAPES).rank is None
    with pytest.raises(ValueError, match="lora.r = 8"):
        ExactLoRA.from_run_config(validate({"lora.r": 8, "lora.alpha": 64}), SHAPES)


@pytest.mark.parametrize("rank", [0, -1, "half", 2.5, True])
def test_bad_rank_is_refused(rank) -> None:
    with pytest.raises(ValueError, match="strategy.exact-rank"):
        ExactLoRA(rank=rank)


def test_lora_modules_pairs_only() -> None:
    shapes = {A_KEY: (R, IN), B_KEY: (OUT, R), "x.lora_A.weight": (2, 4), "head.bias": (4,)}
    assert [(m.prefix, m.rank, m.in_features, m.out_features) for m in lora_modules(shapes)] == [(P, R, IN, OUT)]


# --- scale: an 8B-shaped module set without dense matrices ---------------------------

DIM, RANK_8B, SITES_8B = 4096, 16, 20  # LLaMA-3-8B q_proj / o_proj, the paper's r, 20 sites


def one_blas_thread():
    """Time with one BLAS thread, as the strategy itself runs: threaded LAPACK slows down
    many-fold when other processes hold the cores, which would make a wall-clock bound flaky."""
    return threadpool_limits(limits=1, user_api="blas")


def test_8b_module_factors_in_far_less_memory_than_one_dense_matrix() -> None:
    rng = np.random.default_rng(0)
    bs = [rng.standard_normal((DIM, RANK_8B), dtype=np.float32) for _ in range(SITES_8B)]
    as_ = [rng.standard_normal((RANK_8B, DIM), dtype=np.float32) for _ in range(SITES_8B)]
    tracemalloc.start()
    try:
        with one_blas_thread():
            result = exact_factors(bs, as_, [1 / SITES_8B] * SITES_8B, RANK_8B)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.b.shape == (DIM, RANK_8B) and result.a.shape == (RANK_8B, DIM)
    dense_bytes = DIM * DIM * 8
    assert peak < dense_bytes / 2, f"peak {peak / 2**20:.0f} MiB for one module"


def test_8b_shapes_aggregate_in_seconds() -> None:
    modules = 4
    rng = np.random.default_rng(0)
    shapes = {}
    for i in range(modules):
        shapes[f"layers.{i}.self_attn.q_proj.lora_A.weight"] = (RANK_8B, DIM)
        shapes[f"layers.{i}.self_attn.q_proj.lora_B.weight"] = (DIM, RANK_8B)
    states = [{key: rng.standard_normal(s, dtype=np.float32) for key, s in shapes.items()} for _ in range(SITES_8B)]
    replies = [reply(k + 1, state, k + 1, f"h{k:02d}") for k, state in enumerate(states)]
    strategy = compose(ExactLoRA(alpha=32, expected_shapes=shapes))
    strategy.aggregation_error = False  # timed: the aggregation alone
    with one_blas_thread():
        start = time.perf_counter()
        arrays, _ = strategy.aggregate_train(1, replies)
        seconds = time.perf_counter() - start
    assert {k: arrays[k].numpy().shape for k in arrays.keys()} == shapes
    assert seconds < 8.0  # about 2 s on one core here; a dense 4096 x 4096 SVD per module takes far longer
    assert 0 < strategy.round_report().extra["truncated-energy"]["mean"] < 1
