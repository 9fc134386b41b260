"""Strategies on hand-built Flower replies: averages, weights, rejections, registry.

No model and no Flower run: replies are `Message`s built the way a SuperNode builds them,
`Message(content, reply_to=instruction)`, so `metadata.src_node_id` is the site's node.
"""

from __future__ import annotations

import itertools
import logging
import math

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp.strategy import FedAvg

from settings.config import validate
from strategies import (
    STRATEGIES,
    FedMedLoRA,
    FedMedLoRAPlus,
    LoraFedAvg,
    WrapperSettings,
    available_strategies,
    compose,
    strategy_class,
)
from support.messages import error_reply, instruction, reply
from support.toy_adapter import SHAPES, const_state


def arrays_of(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: record[k].numpy() for k in record.keys()}


def plus(losses: dict[float, float], **kwargs) -> FedMedLoRAPlus:
    """Fed-MedLoRA+ whose score is looked up from the adapter's first value."""
    return compose(FedMedLoRAPlus(
        score_fn=lambda state: losses[float(state["a"].flat[0])], expected_shapes=SHAPES, **kwargs
    ))


# --- Fed-MedLoRA ---------------------------------------------------------------------


def test_fedmedlora_weights_one_to_three_hand_computed() -> None:
    s1 = {"a": np.array([[1, 2], [3, 4]], np.float32), "b": np.array([[0], [4]], np.float32)}
    s2 = {"a": np.array([[5, 6], [7, 8]], np.float32), "b": np.array([[8], [0]], np.float32)}
    strategy = compose(FedMedLoRA(expected_shapes=SHAPES))
    arrays, metrics = strategy.aggregate_train(
        1,
        [
            reply(11, s1, 1, "h1", {"train-loss": 2.0}),
            reply(12, s2, 3, "h2", {"train-loss": 1.0}),
        ],
    )
    out = arrays_of(arrays)
    assert list(out) == ["a", "b"]
    assert out["a"].dtype == np.float32
    # 0.25 * s1 + 0.75 * s2
    np.testing.assert_array_equal(out["a"], [[4, 5], [6, 7]])
    np.testing.assert_array_equal(out["b"], [[6], [1]])
    assert metrics["train-loss"] == pytest.approx(0.25 * 2.0 + 0.75 * 1.0)
    assert "num-examples" not in metrics

    report = strategy.round_report()
    assert report.server_round == 1 and report.rejected == []
    assert [(u.site, u.node_id, u.num_examples, u.weight) for u in report.updates] == [
        ("h1", 11, 1, 0.25),
        ("h2", 12, 3, 0.75),
    ]
    assert report.updates[0].bytes_up == sum(len(Array(v).data) for v in s1.values())
    assert report.updates[0].metrics == {"train-loss": 2.0, "num-examples": 1.0}
    assert "weights-sum-to-one" in FedMedLoRA.invariants


def test_train_metrics_keep_only_keys_every_site_reports() -> None:
    strategy = compose(FedMedLoRA(expected_shapes=SHAPES))
    _, metrics = strategy.aggregate_train(
        1,
        [
            reply(1, const_state(1), 1, metrics={"train-loss": 1.0, "only-here": 5.0}),
            reply(2, const_state(2), 1, metrics={"train-loss": 3.0}),
        ],
    )
    assert dict(metrics) == {"train-loss": pytest.approx(2.0)}


# --- Fed-MedLoRA+ --------------------------------------------------------------------

LOSSES = {1.0: 0.5, 2.0: 1.0, 4.0: 2.0}  # adapter value -> L_k


def plus_replies(nums: tuple[int, int, int] = (10, 10, 10)) -> list[Message]:
    return [reply(i + 1, const_state(v), n, f"h{i + 1}") for i, (v, n) in enumerate(zip(LOSSES, nums))]


def test_fedmedlora_plus_weights_exp_one_minus_loss() -> None:
    # exp(0.5), exp(0), exp(-1) = 1.648721, 1, 0.367879; sum 3.016601
    expected = [0.546549, 0.331499, 0.121952]
    strategy = plus(LOSSES)
    arrays, _ = strategy.aggregate_train(2, plus_replies(nums=(1, 5, 100)))  # sizes ignored
    report = strategy.round_report()
    assert [u.weight for u in report.updates] == pytest.approx(expected, abs=1e-6)
    assert math.fsum(u.weight for u in report.updates) == pytest.approx(1.0, abs=1e-12)
    # 0.546549 * 1 + 0.331499 * 2 + 0.121952 * 4
    for values in arrays_of(arrays).values():
        np.testing.assert_allclose(values, 1.697354, atol=1e-5)
    assert report.extra["validation-loss"] == {"h1": 0.5, "h2": 1.0, "h3": 2.0}
    assert list(report.extra["validation-weight"].values()) == pytest.approx(expected, abs=1e-6)


def test_fedmedlora_plus_temperature_flattens_weights() -> None:
    # T = 2: exp(0.25), exp(0), exp(-0.5) = 1.284025, 1, 0.606531; sum 2.890556
    strategy = plus(LOSSES, temperature=2.0)
    strategy.aggregate_train(1, plus_replies())
    weights = [u.weight for u in strategy.round_report().updates]
    assert weights == pytest.approx([0.444214, 0.345954, 0.209832], abs=1e-6)
    assert max(weights) < 0.546549  # flatter than T = 1


def test_fedmedlora_plus_size_weighted_multiplies_by_n() -> None:
    # n = 1, 2, 3: 1.648721, 2, 1.103638; sum 4.752359
    strategy = plus(LOSSES, size_weighted=True)
    strategy.aggregate_train(1, plus_replies(nums=(1, 2, 3)))
    weights = [u.weight for u in strategy.round_report().updates]
    assert weights == pytest.approx([0.346927, 0.420844, 0.232230], abs=1e-6)


def test_fedmedlora_plus_is_stable_for_large_losses() -> None:
    strategy = plus({1.0: 1000.0, 2.0: 1001.0, 4.0: 5000.0})
    strategy.aggregate_train(1, plus_replies())
    weights = [u.weight for u in strategy.round_report().updates]
    assert weights == pytest.approx([1 / (1 + math.exp(-1)), math.exp(-1) / (1 + math.exp(-1)), 0.0])


def test_fedmedlora_plus_rejects_non_finite_loss() -> None:
    strategy = plus({1.0: 0.5, 2.0: float("nan"), 4.0: 2.0})
    arrays, _ = strategy.aggregate_train(1, plus_replies())
    report = strategy.round_report()
    assert [u.site for u in report.updates] == ["h1", "h3"]
    assert report.rejected == [("h2", "validation loss is not finite (nan)")]
    e1, e3 = math.exp(0.5), math.exp(-1.0)
    expected = (e1 * 1 + e3 * 4) / (e1 + e3)
    np.testing.assert_allclose(arrays_of(arrays)["a"], expected, rtol=1e-6)
    assert set(report.extra["validation-loss"]) == {"h1", "h3"}


def test_fedmedlora_plus_all_losses_non_finite_gives_no_update() -> None:
    strategy = plus({1.0: float("inf"), 2.0: float("nan"), 4.0: float("nan")})
    assert strategy.aggregate_train(1, plus_replies()) == (None, None)
    assert len(strategy.round_report().rejected) == 3


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf")])
def test_fedmedlora_plus_rejects_bad_temperature(temperature: float) -> None:
    with pytest.raises(ValueError, match="strategy.temperature"):
        FedMedLoRAPlus(score_fn=lambda s: 0.0, temperature=temperature)


# --- rejection of malformed replies --------------------------------------------------


def _nan_state() -> dict[str, np.ndarray]:
    state = const_state(9.0)
    state["a"][0, 1] = np.nan
    return state


def _inf_state() -> dict[str, np.ndarray]:
    state = const_state(9.0)
    state["b"][1, 0] = -np.inf
    return state


def _two_array_records(node_id: int) -> Message:
    msg = reply(node_id, const_state(9.0), 10, "bad")
    msg.content["extra"] = ArrayRecord({"a": Array(np.zeros(2, np.float32))})
    return msg


BAD_REPLIES = {
    "nan": (lambda n: reply(n, _nan_state(), 10, "bad"), "a has 1 non-finite value(s)"),
    "inf": (lambda n: reply(n, _inf_state(), 10, "bad"), "b has 1 non-finite value(s)"),
    "wrong shape": (
        lambda n: reply(n, {"a": np.zeros((2, 3), np.float32), "b": np.zeros((2, 1), np.float32)}, 10, "bad"),
        "a has shape (2, 3), expected (2, 2)",
    ),
    "missing key": (
        lambda n: reply(n, {"a": np.zeros((2, 2), np.float32)}, 10, "bad"),
        "adapter keys differ: missing [b], unexpected []",
    ),
    "unexpected key": (
        lambda n: reply(n, {**const_state(9.0), "c": np.zeros(1, np.float32)}, 10, "bad"),
        "adapter keys differ: missing [], unexpected [c]",
    ),
    "int dtype": (
        lambda n: reply(n, {k: np.zeros(s, np.int32) for k, s in SHAPES.items()}, 10, "bad"),
        "a has dtype int32, expected a float dtype",
    ),
    "missing num-examples": (lambda n: reply(n, const_state(9.0), None, "bad"), "MetricRecord has no 'num-examples'"),
    "zero num-examples": (lambda n: reply(n, const_state(9.0), 0, "bad"), "'num-examples' must be > 0, got 0"),
    "list num-examples": (
        lambda n: reply(n, const_state(9.0), [1, 2], "bad"),
        "'num-examples' must be a single number, got list",
    ),
    "two ArrayRecords": (_two_array_records, "expected exactly one ArrayRecord, found 2"),
    "error reply": (lambda n: error_reply(n), "error reply (code 7): data/notes.txt line 3: bad span"),
}


@pytest.mark.parametrize("case", list(BAD_REPLIES))
@pytest.mark.parametrize("strategy_cls", [FedMedLoRA, FedMedLoRAPlus])
def test_malformed_reply_is_rejected_and_the_rest_aggregated(
    case: str, strategy_cls: type, caplog: pytest.LogCaptureFixture
) -> None:
    make_bad, reason = BAD_REPLIES[case]
    if strategy_cls is FedMedLoRAPlus:
        strategy = plus(LOSSES)
    else:
        strategy = compose(FedMedLoRA(expected_shapes=SHAPES))
    good = [reply(1, const_state(1.0), 1, "h1"), reply(2, const_state(2.0), 3, "h2")]
    with caplog.at_level(logging.WARNING, logger="flwr"):
        arrays, _ = strategy.aggregate_train(4, [good[0], make_bad(99), good[1]])
    report = strategy.round_report()
    site = "node 99" if case == "error reply" else "bad"
    assert report.rejected == [(site, reason)]
    assert [u.site for u in report.updates] == ["h1", "h2"]
    assert f"round 4: update from site {site} rejected: {reason}" in caplog.text

    reference = type(strategy.core)(**_same_settings(strategy.core))
    expected, _ = reference.aggregate_train(4, good)
    for key, values in arrays_of(arrays).items():
        np.testing.assert_array_equal(values, expected[key].numpy())


def _same_settings(strategy: LoraFedAvg) -> dict:
    if isinstance(strategy, FedMedLoRAPlus):
        return {"score_fn": strategy.score_fn, "expected_shapes": SHAPES}
    return {"expected_shapes": SHAPES}


def test_site_falls_back_to_node_id_without_site_record() -> None:
    strategy = compose(FedMedLoRA(expected_shapes=SHAPES))
    strategy.aggregate_train(1, [reply(5, const_state(1.0)), reply(6, _nan_state())])
    assert [u.site for u in strategy.round_report().updates] == ["node 5"]
    assert strategy.round_report().rejected[0][0] == "node 6"


def test_all_rejected_returns_none(caplog: pytest.LogCaptureFixture) -> None:
    strategy = compose(FedMedLoRA(expected_shapes=SHAPES))
    with caplog.at_level(logging.WARNING, logger="flwr"):
        result = strategy.aggregate_train(3, [error_reply(1), reply(2, _nan_state(), 10, "h2")])
    assert result == (None, None)
    assert len(strategy.round_report().rejected) == 2
    assert "round 3: no valid update; the global adapter is unchanged" in caplog.text
    assert compose(FedMedLoRA(expected_shapes=SHAPES)).aggregate_train(1, []) == (None, None)


def test_expected_shapes_must_be_set() -> None:
    strategy = compose(FedMedLoRA())
    with pytest.raises(RuntimeError, match="expected adapter shapes are not set"):
        strategy.aggregate_train(1, [reply(1, const_state(1.0))])
    strategy = compose(FedMedLoRA(), WrapperSettings(expected_shapes=SHAPES))
    arrays, _ = strategy.aggregate_train(1, [reply(1, const_state(1.0))])
    assert list(arrays.keys()) == ["a", "b"]


def test_weights_hook_must_sum_to_one() -> None:
    class Broken(LoraFedAvg):
        def aggregation_weights(self, server_round, accepted):
            return [0.5, 0.4]

    with pytest.raises(ValueError, match="do not sum to one"):
        Broken(expected_shapes=SHAPES).aggregate_train(1, [reply(1, const_state(1)), reply(2, const_state(2))])


# --- determinism ---------------------------------------------------------------------


@pytest.mark.parametrize("strategy_cls", [FedMedLoRA, FedMedLoRAPlus])
def test_result_independent_of_reply_order(strategy_cls: type) -> None:
    rng = np.random.default_rng(0)
    states = [{k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()} for _ in range(4)]
    losses = {float(s["a"].flat[0]): float(i) / 3 for i, s in enumerate(states)}
    replies = [reply(i + 1, s, 7 * i + 3, f"h{i}") for i, s in enumerate(states)]
    replies.append(reply(9, _nan_state(), 5, "bad"))
    replies.append(error_reply(10))

    def run(order):
        strategy = plus(losses) if strategy_cls is FedMedLoRAPlus else compose(FedMedLoRA(expected_shapes=SHAPES))
        arrays, metrics = strategy.aggregate_train(1, order)
        return arrays_of(arrays), dict(metrics), strategy.round_report()

    base_arrays, base_metrics, base_report = run(replies)
    for order in itertools.islice(itertools.permutations(replies), 1, None, 97):
        arrays, metrics, report = run(list(order))
        for key in SHAPES:
            np.testing.assert_array_equal(arrays[key], base_arrays[key])
        assert metrics == base_metrics
        assert report == base_report


# --- evaluate ------------------------------------------------------------------------


def test_aggregate_evaluate_skips_errors_and_records_sites() -> None:
    strategy = compose(FedMedLoRA(expected_shapes=SHAPES))
    ev = MessageType.EVALUATE
    replies = [
        Message(
            content=RecordDict(
                {"metrics": MetricRecord({"num-examples": n, "val-loss": loss}), "site": ConfigRecord({"name": s})}
            ),
            reply_to=instruction(i, ev),
        )
        for i, (s, n, loss) in enumerate([("h2", 3, 1.0), ("h1", 1, 2.0)], start=1)
    ]
    metrics = strategy.aggregate_evaluate(1, [error_reply(9), *replies])
    assert metrics["val-loss"] == pytest.approx(0.25 * 2.0 + 0.75 * 1.0)
    assert strategy.round_report(1).evaluated == [
        ("h1", {"num-examples": 1.0, "val-loss": 2.0}),
        ("h2", {"num-examples": 3.0, "val-loss": 1.0}),
    ]


# --- registry ------------------------------------------------------------------------


def test_registry_resolves_names() -> None:
    names = available_strategies()
    assert names == sorted(names) and {"fedmedlora", "fedmedlora-plus"} <= set(names)
    assert strategy_class("fedmedlora") is FedMedLoRA
    assert strategy_class("fedmedlora-plus") is FedMedLoRAPlus
    assert STRATEGIES["fedmedlora"] is FedMedLoRA


def test_registry_resolves_module_paths() -> None:
    assert strategy_class("strategies.fedmedlora_plus:FedMedLoRAPlus") is FedMedLoRAPlus
    assert strategy_class("flwr.serverapp.strategy:FedAvg") is FedAvg


def test_registry_rejects_unknown_names_with_the_list() -> None:
    with pytest.raises(ValueError, match=r"strategy.name.*'fedmedlora', 'fedmedlora-equal', 'fedmedlora-plus'"):
        strategy_class("fedprox-typo")


@pytest.mark.parametrize(
    "name", ["collections:OrderedDict", "no_such_module_xyz:Thing", "strategies.fedmedlora:Missing"]
)
def test_registry_rejects_bad_module_paths(name: str) -> None:
    with pytest.raises(ValueError, match="strategy.name"):
        strategy_class(name)


def test_from_run_config() -> None:
    cfg = validate({"strategy.temperature": 2.0, "strategy.size-weighted": True})
    strategy = FedMedLoRAPlus.from_run_config(cfg, SHAPES, lambda s: 1.0, min_available_nodes=3)
    assert (strategy.temperature, strategy.size_weighted, strategy.min_available_nodes) == (2.0, True, 3)
    assert FedMedLoRA.from_run_config(cfg, SHAPES, None).expected_shapes == SHAPES


# --- the whole FedAvg loop on a fake grid --------------------------------------------


class EchoGrid:
    """Three sites; train replies are the global adapter + node id (node 3 sends a NaN)."""

    def get_node_ids(self) -> list[int]:
        return [1, 2, 3]

    def send_and_receive(self, messages, timeout=None) -> list[Message]:
        out = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            ins = instruction(node, msg.metadata.message_type)
            if msg.metadata.message_type == MessageType.TRAIN:
                state = {k: v.numpy() + node for k, v in msg.content["arrays"].items()}
                if node == 3:
                    state["a"][0, 0] = np.nan
                out.append(Message(content=reply(node, state, node, f"h{node}").content, reply_to=ins))
            else:
                metrics = MetricRecord({"num-examples": 1, "val-loss": float(node)})
                out.append(Message(content=RecordDict({"metrics": metrics}), reply_to=ins))
        return out


def test_start_runs_fedavg_loop_and_infers_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supercore.task_identity import TaskIdentity

    # Instruction messages take their run from the ServerApp process's identity.
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 0)
    strategy = compose(FedMedLoRA(min_available_nodes=3, min_train_nodes=3, min_evaluate_nodes=3))
    initial = ArrayRecord({k: Array(v) for k, v in const_state(0.0).items()})
    result = strategy.start(EchoGrid(), initial, num_rounds=2)
    assert strategy.core.expected_shapes == SHAPES
    # Each round adds (1 * 1 + 2 * 2) / 3 = 5/3; node 3 is rejected.
    np.testing.assert_allclose(result.arrays["a"].numpy(), 10 / 3, rtol=1e-6)
    assert strategy.round_report().rejected == [("h3", "a has 1 non-finite value(s)")]
    assert result.evaluate_metrics_clientapp[2]["val-loss"] == pytest.approx(2.0)


def test_averaging_streams_instead_of_holding_a_copy_per_site() -> None:
    """Peak extra memory of a round stays near one tensor's float64 sum plus the float32
    result, however many sites reply (it used to hold every site's decoded copy)."""
    import tracemalloc

    shapes = {f"layer{i}": (256, 256) for i in range(8)}  # 8 tensors of 256 KiB (float32)
    sites = 12
    rng = np.random.default_rng(0)
    replies = [
        reply(k + 1, {key: rng.standard_normal(s).astype(np.float32) for key, s in shapes.items()},
              num_examples=k + 1, site=f"h{k:02d}")
        for k in range(sites)
    ]
    adapter_bytes = sum(math.prod(s) for s in shapes.values()) * 4
    strategy = compose(FedMedLoRA(expected_shapes=shapes))
    tracemalloc.start()
    try:
        arrays, _ = strategy.aggregate_train(1, replies)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert arrays is not None
    assert peak < 3 * adapter_bytes, f"peak {peak / 2**20:.1f} MiB for a {adapter_bytes / 2**20:.1f} MiB adapter"
    expected = sum((k + 1) * next(iter(r.content.array_records.values()))["layer3"].numpy().astype(np.float64)
                   for k, r in enumerate(replies)) / sum(range(1, sites + 1))
    np.testing.assert_allclose(arrays["layer3"].numpy(), expected, rtol=1e-6, atol=1e-7)
