"""FFA-LoRA, RoLoRA, FedSA-LoRA and FedSVD at the coordinator; the aggregation error every
round reports; the randomized solver of exact aggregation; the combinations refused at start."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import ConfigRecord, MessageType

from settings.config import ConfigError, validate
from strategies import TooFewSites
from strategies.aggregation_error import module_error
from strategies.exact import exact_factors, randomized_factors
from strategies.fedsvd import refactorise
from support.strategy_harness import (
    BASE_CONFIG,
    GLOBAL,
    PAIRS,
    SHAPES,
    FakeGrid,
    aggregate,
    as_sent,
    build,
    good_replies,
    server_identity,  # noqa: F401 - autouse fixture: lets configure_train build messages
    site_states,
    to_record,
)
from wire import protocol


def dense(b: np.ndarray, a: np.ndarray) -> np.ndarray:
    return np.asarray(b, np.float64) @ np.asarray(a, np.float64)


def weights_by_site(report) -> list[float]:
    weights = {u.site: u.weight for u in report.updates}
    return [weights[f"h{i + 1}"] for i in range(len(weights))]


def dense_error(states, weights, out) -> tuple[float, list[float]]:
    """The aggregation error from the dense out x in products: overall, and per module."""
    differences, averages = [], []
    for a_key, b_key in PAIRS:
        average = sum(w * dense(s[b_key], s[a_key]) for s, w in zip(states, weights, strict=True))
        differences.append(np.linalg.norm(average - dense(out[b_key], out[a_key])) ** 2)
        averages.append(np.linalg.norm(average) ** 2)
    per_module = [math.sqrt(d / a) for d, a in zip(differences, averages, strict=True)]
    return math.sqrt(sum(differences) / sum(averages)), per_module


def instructions(strategy, server_round: int, arrays: dict[str, np.ndarray], kind: str = "train"):
    configure = strategy.configure_train if kind == "train" else strategy.configure_evaluate
    return {m.metadata.dst_node_id: m for m in configure(server_round, to_record(arrays), ConfigRecord(), FakeGrid())}


def message_arrays(message) -> dict[str, np.ndarray]:
    record = next(iter(message.content.array_records.values()))
    return {k: record[k].numpy() for k in record.keys()}


def message_config(message) -> ConfigRecord:
    return next(iter(message.content.config_records.values()))


# --- the aggregation error ----------------------------------------------------------------


def test_module_error_equals_the_dense_norms():
    rng = np.random.default_rng(0)
    sites = [(rng.standard_normal((7, 3)), rng.standard_normal((3, 5))) for _ in range(4)]
    weights = [0.1, 0.2, 0.3, 0.4]
    returned = (rng.standard_normal((7, 3)), rng.standard_normal((3, 5)))
    average = sum(w * dense(b, a) for (b, a), w in zip(sites, weights, strict=True))
    difference, norm = module_error(sites, weights, returned)
    assert difference == pytest.approx(np.linalg.norm(average - dense(*returned)) ** 2, rel=1e-10)
    assert norm == pytest.approx(np.linalg.norm(average) ** 2, rel=1e-10)


def test_every_round_reports_the_error_of_averaging_a_and_b_apart():
    states = site_states(seed=1, spread=0.3)
    out, report = aggregate(build("fedmedlora"), good_replies(states))
    overall, per_module = dense_error(states, weights_by_site(report), out)
    error = report.extra["aggregation-error"]
    assert error["overall"] == pytest.approx(overall, rel=1e-5)
    assert error["max"] == pytest.approx(max(per_module), rel=1e-5)
    assert error["modules"] == len(PAIRS) and error["overall"] > 1e-3


def test_exact_aggregation_has_the_smallest_error_of_any_rank_r_adapter():
    # Eckart-Young: the best rank-r factors of the average beat the product of the averages.
    states = site_states(seed=2, spread=0.3)
    _, plain = aggregate(build("fedmedlora"), good_replies(states))
    _, exact = aggregate(build("exact"), good_replies(states))
    assert exact.extra["aggregation-error"]["overall"] < plain.extra["aggregation-error"]["overall"]


def test_the_error_can_be_switched_off():
    _, report = aggregate(build("fedmedlora", **{"strategy.aggregation-error": False}), good_replies())
    assert "aggregation-error" not in report.extra


# --- FFA-LoRA and RoLoRA: one factor trained and sent ------------------------------------


def test_ffa_lora_sites_train_and_send_only_b_and_a_stays_the_shared_start():
    strategy = build("ffa-lora")
    messages = instructions(strategy, 1, GLOBAL)
    assert {(message_config(m)[protocol.TRAIN_FACTORS], message_config(m)[protocol.SEND_FACTORS])
            for m in messages.values()} == {("B", "B")}
    states = site_states(seed=4, spread=0.3)
    sent = as_sent(strategy, good_replies(states))
    assert all(set(next(iter(m.content.array_records.values())).keys()) == {b for _, b in PAIRS} for m in sent)
    out, report = aggregate(strategy, good_replies(states))
    assert report.rejected == []
    for a_key, b_key in PAIRS:
        np.testing.assert_array_equal(out[a_key], GLOBAL[a_key])  # A never moves
        weights = weights_by_site(report)
        expected = sum(w * s[b_key].astype(np.float64) for s, w in zip(states, weights, strict=True))
        np.testing.assert_allclose(out[b_key], expected, rtol=1e-6, atol=1e-7)
    # Every site shares A, so averaging B is exact.
    assert report.extra["aggregation-error"]["overall"] < 1e-6
    # About half the adapter up: B is 22 of the 42 parameters here.
    _, whole = aggregate(build("fedmedlora"), good_replies(states))
    ratio = sum(u.bytes_up for u in report.updates) / sum(u.bytes_up for u in whole.updates)
    assert 0.45 < ratio < 0.6


def test_ffa_lora_under_server_side_dp_sees_whole_adapters_through_flowers_wrapper():
    states = site_states(seed=4, spread=0.3)
    strategy = build("ffa-lora", **{"strategy.dp": "server-fixed", "strategy.dp-noise-multiplier": 0.0,
                                    "strategy.dp-clipping-norm": 100.0})
    out, report = aggregate(strategy, good_replies(states))
    plain, _ = aggregate(build("ffa-lora"), good_replies(states))
    assert report.rejected == [] and len(report.updates) == 4
    for key in SHAPES:  # no noise, nothing clipped: the plain FFA-LoRA aggregate
        np.testing.assert_allclose(out[key], plain[key], rtol=1e-5, atol=1e-7)


def test_a_reply_with_the_factor_it_should_have_kept_is_rejected():
    strategy = build("ffa-lora")
    states = site_states(seed=4)
    strategy.configure_train(1, to_record(GLOBAL), ConfigRecord(), FakeGrid())
    with pytest.raises(TooFewSites):  # whole adapters, A included: none is usable
        strategy.aggregate_train(1, good_replies(states))
    rejected = strategy.round_report().rejected
    assert len(rejected) == 4 and all("unexpected" in reason and "lora_A" in reason for _, reason in rejected)


def test_rolora_alternates_b_then_a_and_the_other_factor_stays():
    strategy = build("rolora")
    core = strategy.core
    assert [core.factor_rule(r) for r in (1, 2, 3)] == [("B", "B"), ("A", "A"), ("B", "B")]
    states = site_states(seed=6, spread=0.3)
    out1, report1 = aggregate(strategy, good_replies(states))
    for a_key, _ in PAIRS:
        np.testing.assert_array_equal(out1[a_key], GLOBAL[a_key])
    messages = instructions(strategy, 2, out1)
    assert {message_config(m)[protocol.TRAIN_FACTORS] for m in messages.values()} == {"A"}
    arrays, _ = strategy.aggregate_train(2, as_sent(strategy, good_replies(states), server_round=2))
    out2 = {k: arrays[k].numpy() for k in arrays.keys()}
    for a_key, b_key in PAIRS:
        np.testing.assert_array_equal(out2[b_key], out1[b_key])  # round 2 trained A only
        assert not np.array_equal(out2[a_key], out1[a_key])
    assert strategy.round_report().extra["aggregation-error"]["overall"] < 1e-6


# --- FedSVD: B trained, B̄A refactorised --------------------------------------------------


def test_refactorise_keeps_the_product_and_gives_a_orthonormal_rows():
    rng = np.random.default_rng(1)
    b, a = rng.standard_normal((9, 3)), rng.standard_normal((3, 7))
    new_b, new_a = refactorise(b, a)
    np.testing.assert_allclose(dense(new_b, new_a), dense(b, a), atol=1e-12)
    np.testing.assert_allclose(new_a @ new_a.T, np.eye(3), atol=1e-12)
    norms = np.linalg.norm(new_b, axis=0)
    assert all(norms[:-1] >= norms[1:])  # singular values descending


def test_fedsvd_returns_the_exact_average_update_with_a_new_orthonormal_a():
    states = site_states(seed=7, spread=0.3)
    out, report = aggregate(build("fedsvd"), good_replies(states))
    weights = weights_by_site(report)
    for a_key, b_key in PAIRS:
        b_mean = sum(w * s[b_key].astype(np.float64) for s, w in zip(states, weights, strict=True))
        np.testing.assert_allclose(dense(out[b_key], out[a_key]), b_mean @ GLOBAL[a_key].astype(np.float64),
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out[a_key].astype(np.float64) @ out[a_key].T, np.eye(2), atol=1e-5)
    assert report.extra["aggregation-error"]["overall"] < 1e-5


# --- FedSA-LoRA: A shared, each site its own B --------------------------------------------


def test_fedsa_lora_serves_each_site_the_shared_a_with_its_own_b():
    strategy = build("fedsa-lora")
    states = site_states(seed=8, spread=0.3)
    out, report = aggregate(strategy, good_replies(states))
    weights = weights_by_site(report)
    for key in SHAPES:  # the returned adapter, for a new site: every tensor averaged
        expected = sum(w * s[key].astype(np.float64) for s, w in zip(states, weights, strict=True))
        np.testing.assert_allclose(out[key], expected, rtol=1e-6, atol=1e-7)
    for kind in ("train", "evaluate"):
        for node, message in instructions(strategy, 2, out, kind).items():
            arrays = message_arrays(message)
            for a_key, b_key in PAIRS:
                np.testing.assert_array_equal(arrays[a_key], out[a_key])
                np.testing.assert_array_equal(arrays[b_key], states[node - 1][b_key])
            assert message.metadata.message_type == (MessageType.TRAIN if kind == "train" else MessageType.EVALUATE)
    personal = strategy.personal_adapters(out)
    assert sorted(personal) == ["h1", "h2", "h3", "h4"]
    for i, name in enumerate(["h1", "h2", "h3", "h4"]):
        for a_key, b_key in PAIRS:
            np.testing.assert_array_equal(personal[name][b_key], states[i][b_key])
            np.testing.assert_array_equal(personal[name][a_key], out[a_key])

    # A checkpoint keeps every site's B: a restored strategy serves them the same.
    restored = build("fedsa-lora")
    restored.load_state_dict(strategy.state_dict())
    for node, message in instructions(restored, 2, out).items():
        for _, b_key in PAIRS:
            np.testing.assert_array_equal(message_arrays(message)[b_key], states[node - 1][b_key])


# --- the randomized solver of exact aggregation ----------------------------------------------


def _sites(rng, n, rank, out=60, inp=50, shared=0.9):
    """Updates that share most of one low-rank direction, as sites trained from one start do."""
    base_b, base_a = rng.standard_normal((out, rank)), rng.standard_normal((rank, inp))
    bs = [shared * base_b + rng.standard_normal((out, rank)) for _ in range(n)]
    as_ = [shared * base_a + 0.3 * rng.standard_normal((rank, inp)) for _ in range(n)]
    return bs, as_


def test_randomized_factors_are_exact_when_the_sketch_covers_every_rank():
    rng = np.random.default_rng(3)
    bs, as_ = _sites(rng, n=2, rank=4)  # stacked rank 8 = the sketch's 2r columns
    scales = [0.25, 0.75]
    full = sum(c * dense(b, a) for b, a, c in zip(bs, as_, scales, strict=True))
    fast = randomized_factors(bs, as_, scales, rank=4)
    best = exact_factors(bs, as_, scales, 4)
    np.testing.assert_allclose(dense(fast.b, fast.a), dense(best.b, best.a), atol=1e-3 * np.abs(full).max())


def test_randomized_factors_come_within_a_percent_of_the_best_rank_r_residual():
    rng = np.random.default_rng(4)
    bs, as_ = _sites(rng, n=20, rank=8, out=300, inp=200)
    scales = [1 / 20] * 20
    full = sum(c * dense(b, a) for b, a, c in zip(bs, as_, scales, strict=True))
    fast = randomized_factors(bs, as_, scales, rank=8, seed=1)
    best = exact_factors(bs, as_, scales, 8)
    optimal = np.linalg.norm(full - dense(best.b, best.a))
    assert np.linalg.norm(full - dense(fast.b, fast.a)) <= 1.01 * optimal


def test_randomized_factors_of_a_low_rank_or_zero_sum_are_finite_and_exact():
    """Sites whose products sum to rank 3 (or are zero: B is zero before any training) leave
    the sketch partly or wholly empty: the factors still reproduce M, with no NaN."""
    rng = np.random.default_rng(6)
    b, a = rng.standard_normal((40, 3)), rng.standard_normal((3, 30))
    bs = [np.pad(b, ((0, 0), (0, 5))), np.pad(-0.5 * b, ((0, 0), (0, 5)))]  # rank 8 factors, rank-3 sum
    as_ = [np.pad(a, ((0, 5), (0, 0))), np.pad(a, ((0, 5), (0, 0)))]
    fast = randomized_factors(bs, as_, [0.5, 0.5], rank=8)
    assert np.isfinite(fast.b).all() and np.isfinite(fast.a).all()
    np.testing.assert_allclose(dense(fast.b, fast.a), 0.25 * dense(b, a), atol=1e-4)
    zero = randomized_factors([np.zeros_like(b)] * 2, [a, a], [0.5, 0.5], rank=4)
    assert np.isfinite(zero.b).all() and not dense(zero.b, zero.a).any() and zero.dropped_energy == 0.0


def test_orthonormal_columns_spans_an_ill_conditioned_block():
    from strategies.lora_algebra import orthonormal_columns

    rng = np.random.default_rng(7)
    y = (rng.standard_normal((500, 12)) * np.logspace(0, -5, 12)).astype(np.float32)
    q = orthonormal_columns(y)
    assert q.shape == (500, 12)
    np.testing.assert_allclose(q.T @ q, np.eye(12), atol=1e-5)
    np.testing.assert_allclose(q @ (q.T @ y), y, atol=1e-5 * np.abs(y).max())


def test_exact_with_the_randomized_solver_runs_as_a_strategy():
    states = site_states(seed=9, spread=0.3)
    out, report = aggregate(build("exact", **{"strategy.exact-solver": "randomized"}), good_replies(states))
    best, _ = aggregate(build("exact"), good_replies(states))
    assert report.rejected == [] and all(out[k].shape == SHAPES[k] for k in SHAPES)
    for a_key, b_key in PAIRS:  # 4 sites x rank 2 = 8 > the sketch's 4 columns: close, not equal
        np.testing.assert_allclose(dense(out[b_key], out[a_key]), dense(best[b_key], best[a_key]), atol=0.05)


# --- combinations refused at start ----------------------------------------------------------


@pytest.mark.parametrize("name", ["ffa-lora", "rolora", "fedsvd"])
def test_client_side_dp_is_refused_for_strategies_that_send_one_factor(name):
    with pytest.raises(ConfigError, match="client-side clipping pairs the reply's tensors"):
        validate({**BASE_CONFIG, "strategy.name": name, "strategy.dp": "client-fixed"})
    if name != "fedsvd":  # server side works (FedSVD's refactorisation is not a weighted mean: refused)
        validate({**BASE_CONFIG, "strategy.name": name, "strategy.dp": "server-fixed"})
    validate({**BASE_CONFIG, "strategy.name": name, "strategy.secure-aggregation": True})  # a sum is enough


def test_fedsa_lora_is_refused_with_secure_aggregation_and_with_dp():
    with pytest.raises(ConfigError, match="secure-aggregation = true cannot be combined with strategy.name"):
        validate({**BASE_CONFIG, "strategy.name": "fedsa-lora", "strategy.secure-aggregation": True})
    with pytest.raises(ConfigError, match="each of its sites starts from its own B"):
        validate({**BASE_CONFIG, "strategy.name": "fedsa-lora", "strategy.dp": "server-fixed"})
