"""Flower's strategies and DP wrappers behind our screening, built from the run config.

Each name builds through server_app.strategy_factory.build_strategy from a validated run
config, sends the right train config, and aggregates hand-built replies as Flower would
(checked against the formulas); DP modes build, send their clipping norm and aggregate;
bad values are ConfigErrors that name the key.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
)

from server_app.strategy_factory import build_strategy
from settings.config import ConfigError, validate
from strategies import (
    DPSettings,
    FedMedLoRA,
    FedMedLoRAPlus,
    ScreenedStrategy,
    StrategyWrapper,
    WrapperSettings,
    compose,
    dp_clipping_mod,
)
from strategies.reporting import RoundReporting
from strategies.resume import Resume
from support.messages import error_reply, instruction, reply
from support.strategy_harness import (
    GLOBAL,
    SHAPES,
    FakeGrid,
    aggregate,
    build,
    good_replies,
    layers,
    run_config,
    server_identity,  # noqa: F401 - autouse fixture: lets configure_train build messages
    site_states,
    to_record,
    validation_loss,
)
from wire import protocol

REPO = Path(__file__).resolve().parents[1]
FLOWER = {
    "fedprox": FedProx,
    "fedavgm": FedAvgM,
    "fedadam": FedAdam,
    "fedyogi": FedYogi,
    "fedtrimmedavg": FedTrimmedAvg,
    "fedmedian": FedMedian,
    "krum": Krum,
}
NUMS = [10 * (i + 1) for i in range(4)]  # good_replies' num-examples
SHARES = [n / sum(NUMS) for n in NUMS]


def stacked(states: list[dict[str, np.ndarray]], key: str) -> np.ndarray:
    return np.stack([s[key] for s in states]).astype(np.float64)


def fedavg(states: list[dict[str, np.ndarray]], key: str) -> np.ndarray:
    return np.tensordot(np.array(SHARES), stacked(states, key), axes=1)


# --- every Flower-based name -----------------------------------------------------------


@pytest.mark.parametrize("name", list(FLOWER))
def test_builds_from_the_run_config_and_aggregates(name: str) -> None:
    strategy = build(name)
    assert isinstance(strategy, StrategyWrapper)
    # The registered class is Flower's, bare; directly under the report wrapper (no DP between).
    assert isinstance(strategy.core, FLOWER[name]) and not isinstance(strategy.core, StrategyWrapper)
    assert isinstance(layers(strategy)[-2], RoundReporting)
    assert strategy.core.min_available_nodes == 4 and strategy.core.min_train_nodes == 4
    out, report = aggregate(strategy, good_replies())
    assert list(out) == list(SHAPES) and all(out[k].shape == s for k, s in SHAPES.items())
    assert [u.site for u in report.updates] == ["h1", "h2", "h3", "h4"]
    assert [u.num_examples for u in report.updates] == NUMS
    assert math.fsum(u.weight for u in report.updates) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("name", "overrides", "attributes"),
    [
        ("fedprox", {"strategy.proximal-mu": 0.05}, {"proximal_mu": 0.05}),
        ("fedavgm", {}, {"server_learning_rate": 1.0, "server_momentum": 0.5}),
        ("fedavgm", {"strategy.server-learning-rate": 0.5, "strategy.server-momentum": 0.9},
         {"server_learning_rate": 0.5, "server_momentum": 0.9}),
        ("fedadam", {}, {"eta": 5e-3, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3}),
        ("fedadam", {"strategy.server-learning-rate": 3e-3}, {"eta": 3e-3}),
        ("fedyogi", {}, {"eta": 3e-3}),
        ("fedtrimmedavg", {"strategy.trim-beta": 0.25}, {"beta": 0.25}),
        ("krum", {"strategy.krum-byzantine": 1}, {"num_malicious_nodes": 1, "num_nodes_to_select": 1}),
    ],
)
def test_flower_parameters_come_from_the_run_config(name: str, overrides: dict, attributes: dict) -> None:
    core = build(name, **overrides).core
    assert {k: getattr(core, k) for k in attributes} == attributes


def test_fedprox_sends_proximal_mu_where_the_client_reads_it() -> None:
    strategy = build_strategy(run_config("fedprox", **{"strategy.proximal-mu": 0.01}), SHAPES, None)
    messages = list(strategy.configure_train(3, to_record(GLOBAL), ConfigRecord(), FakeGrid()))
    assert len(messages) == 4
    for msg in messages:
        config = msg.content[protocol.CONFIG]
        assert config["proximal-mu"] == 0.01 and config["server-round"] == 3
    # client_app/handlers.py hands this key of the same ConfigRecord to train_round's FedProx term.
    assert strategy.core.configrecord_key == protocol.CONFIG
    assert 'config.get("proximal-mu", 0.0)' in (REPO / "client_app" / "handlers.py").read_text()


def test_proximal_mu_is_sent_by_any_strategy() -> None:
    for name, mu in (("fedmedlora-plus", 0.02), ("fedadam", 0.02), ("fedmedlora", 0.0)):
        strategy = build_strategy(run_config(name, **{"strategy.proximal-mu": mu}), SHAPES, validation_loss)
        config = next(iter(strategy.configure_train(1, to_record(GLOBAL), ConfigRecord(), FakeGrid()))).content["config"]
        assert config.get("proximal-mu") == (mu or None)


def test_fedprox_and_fedavgm_defaults_average_like_fedavg_in_the_first_round() -> None:
    # FedAvgM's momentum has nothing to carry yet: its first step is the averaged update.
    states = site_states()
    for name in ("fedprox", "fedavgm"):
        out, report = aggregate(build(name), good_replies(states))
        assert [u.weight for u in report.updates] == pytest.approx(SHARES)
        for key in SHAPES:
            np.testing.assert_allclose(out[key], fedavg(states, key), rtol=1e-5, atol=1e-7)


def test_fedadam_takes_one_adam_step_from_the_global_adapter() -> None:
    states = site_states()
    out, _ = aggregate(build("fedadam"), good_replies(states))
    eta, b1, b2, tau = 5e-3, 0.9, 0.99, 1e-3
    for key in SHAPES:
        delta = fedavg(states, key) - GLOBAL[key]
        m, v = (1 - b1) * delta, (1 - b2) * delta**2
        eta_norm = eta * math.sqrt(1 - b2**2) / (1 - b1**2)  # server round 1
        np.testing.assert_allclose(out[key], GLOBAL[key] + eta_norm * m / (np.sqrt(v) + tau), rtol=1e-4, atol=1e-6)
        assert out[key].dtype == np.float32  # Flower's FedAdam returns float64; we cast


def test_fedmedian_and_trimmed_mean() -> None:
    states = site_states(seed=9)
    out, report = aggregate(build("fedmedian"), good_replies(states))
    assert report.extra["weights"] == "num-examples share"
    for key in SHAPES:
        np.testing.assert_allclose(out[key], np.median(stacked(states, key), axis=0), rtol=1e-6)
    out, _ = aggregate(build("fedtrimmedavg", **{"strategy.trim-beta": 0.25}), good_replies(states))
    for key in SHAPES:
        middle = np.sort(stacked(states, key), axis=0)[1:3]  # 4 sites, one cut from each tail
        np.testing.assert_allclose(out[key], middle.mean(axis=0), rtol=1e-5, atol=1e-7)


def test_krum_selects_one_site_and_reports_it(caplog: pytest.LogCaptureFixture) -> None:
    states = site_states(n=5)
    states[2] = {k: v + 1.0 for k, v in states[2].items()}  # the outlier
    replies = [reply(i + 1, s, 10, f"h{i + 1}") for i, s in enumerate(states)]
    strategy = build("krum", **{"strategy.krum-byzantine": 1})
    out, report = aggregate(strategy, replies)
    assert report.extra["weights"] == "krum selection"
    chosen = [u.site for u in report.updates if u.weight == 1.0]
    assert len(chosen) == 1 and chosen != ["h3"]
    assert sorted(u.weight for u in report.updates) == [0.0] * 4 + [1.0]
    for key in SHAPES:
        np.testing.assert_array_equal(out[key], states[int(chosen[0][1:]) - 1][key])
    with caplog.at_level(logging.WARNING, logger="flwr"):
        aggregate(build("krum", **{"strategy.krum-byzantine": 2}), replies)
    assert "needs more than 6 sites, got 5" in caplog.text


def test_whole_loop_on_a_fake_grid() -> None:
    class EchoGrid(FakeGrid):
        """Train replies: the global adapter + 0.01 * node id; node 4 sends a NaN."""

        def send_and_receive(self, messages, timeout=None) -> list[Message]:
            out = []
            for msg in messages:
                node, kind = msg.metadata.dst_node_id, msg.metadata.message_type
                if kind == MessageType.TRAIN:
                    state = {k: v.numpy() + 0.01 * node for k, v in msg.content["arrays"].items()}
                    if node == 4:
                        state[next(iter(state))][0, 0] = np.nan
                    out.append(Message(content=reply(node, state, 10, f"h{node}").content,
                                       reply_to=instruction(node, kind)))
                else:
                    metrics = MetricRecord({"num-examples": 1, "val-loss": float(node)})
                    out.append(Message(content=RecordDict({"metrics": metrics}), reply_to=instruction(node, kind)))
            return out

    # node 4 is rejected every round: 3 usable sites must be enough (strategy.min-sites = 3)
    strategy = build_strategy(run_config("fedavgm", **{"strategy.min-sites": 3}), SHAPES, None)
    result = strategy.start(EchoGrid(), to_record(GLOBAL), num_rounds=2)
    # Each round's averaged update is the mean of 0.01, 0.02, 0.03; the default server momentum
    # 0.5 carries half of round 1's into round 2: 0.02, then 0.02 + 0.01.
    for key in SHAPES:
        np.testing.assert_allclose(result.arrays[key].numpy(), GLOBAL[key] + 0.05, rtol=1e-5, atol=1e-6)
    assert strategy.round_report().rejected[0][0] == "h4"
    assert result.evaluate_metrics_clientapp[2]["val-loss"] == pytest.approx(2.5)


def test_a_plain_flower_class_by_module_path_is_screened() -> None:
    strategy = build("flwr.serverapp.strategy:FedAvg")
    assert isinstance(strategy, StrategyWrapper) and type(strategy.core) is FedAvg
    states = site_states()
    bad = {k: v.copy() for k, v in states[0].items()}
    bad[next(iter(bad))][0, 0] = np.inf
    out, report = aggregate(strategy, [*good_replies(states), reply(9, bad, 10, "bad")])
    assert report.rejected == [("bad", f"{next(iter(SHAPES))} has 1 non-finite value(s)")]
    for key in SHAPES:
        np.testing.assert_allclose(out[key], fedavg(states, key), rtol=1e-5, atol=1e-7)


# --- differential privacy ----------------------------------------------------------------

DP = {
    "server-fixed": DifferentialPrivacyServerSideFixedClipping,
    "server-adaptive": DifferentialPrivacyServerSideAdaptiveClipping,
    "client-fixed": DifferentialPrivacyClientSideFixedClipping,
    "client-adaptive": DifferentialPrivacyClientSideAdaptiveClipping,
}
DP_SETTINGS = {"strategy.dp-noise-multiplier": 0.1, "strategy.dp-clipping-norm": 0.5}


def test_under_dp_each_reply_is_screened_once(caplog: pytest.LogCaptureFixture,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import strategies.base

    checked: list[str] = []
    full_check = strategies.base.check_reply

    def counting_check(msg, shapes, key, site):  # noqa: ANN001, ANN202
        checked.append(site)
        return full_check(msg, shapes, key, site)

    monkeypatch.setattr(strategies.base, "check_reply", counting_check)
    strategy = build("fedmedlora", **{"strategy.dp": "server-fixed", **DP_SETTINGS})
    states = site_states()
    bad = {k: v.copy() for k, v in states[0].items()}
    bad[next(iter(bad))][0, 0] = np.nan
    with caplog.at_level(logging.WARNING, logger="flwr"):
        out, report = aggregate(strategy, [*good_replies(states), reply(9, bad, 10, "bad")])
    assert out is not None
    # Every reply decoded and checked once, by the screening; the core under the DP wrapper
    # reads the DP wrapper's replies without checking them again.
    assert sorted(checked) == ["bad", "h1", "h2", "h3", "h4"]
    assert report.rejected == [("bad", f"{next(iter(SHAPES))} has 1 non-finite value(s)")]
    assert caplog.text.count("update from site bad rejected") == 1
    # The core's own weights, read once through the DP wrapper: n_k shares of 10, 20, 30, 40.
    assert report.extra["weights"] == "FedMedLoRA"
    assert [u.weight for u in report.updates] == pytest.approx([0.1, 0.2, 0.3, 0.4])


@pytest.mark.parametrize("mode", list(DP))
@pytest.mark.parametrize("name", ["fedmedlora", "fedprox"])
def test_dp_wrappers_build_and_aggregate(name: str, mode: str) -> None:
    strategy = build(name, **{"strategy.dp": mode, **DP_SETTINGS})
    dp = layers(strategy)[-2]  # Flower's DP wrapper, directly around the bare strategy
    assert isinstance(dp, DP[mode]) and isinstance(layers(strategy)[-3], RoundReporting)
    assert dp.strategy is strategy.core and strategy.invariants == ()
    assert dp.num_sampled_clients == 4  # strategy.min-sites
    config = next(iter(strategy.configure_train(1, to_record(GLOBAL), ConfigRecord(), FakeGrid()))).content["config"]
    assert ("clipping_norm" in config) == mode.startswith("client")
    # An error reply does not cost the round: the screening drops it before Flower's wrapper.
    out, report = aggregate(strategy, [*good_replies(), error_reply(9)])
    assert out is not None and list(out) == list(SHAPES)
    assert all(np.isfinite(v).all() and v.dtype == np.float32 for v in out.values())
    assert [s for s, _ in report.rejected] == ["node 9"]
    assert len(report.updates) == 4


def test_server_fixed_dp_without_noise_is_the_clipped_fedavg() -> None:
    states = site_states()
    clip = 0.02
    strategy = build("fedmedlora", **{"strategy.dp": "server-fixed", "strategy.dp-noise-multiplier": 0.0,
                                      "strategy.dp-clipping-norm": clip})
    out, report = aggregate(strategy, good_replies(states))
    assert [u.weight for u in report.updates] == pytest.approx(SHARES)
    deltas = [{k: s[k].astype(np.float64) - GLOBAL[k] for k in SHAPES} for s in states]
    factors = [min(1.0, clip / math.sqrt(sum(float(np.sum(d * d)) for d in delta.values()))) for delta in deltas]
    assert max(factors) < 1  # every update was clipped
    for key in SHAPES:
        expected = GLOBAL[key] + sum(w * f * d[key] for w, f, d in zip(SHARES, factors, deltas))
        np.testing.assert_allclose(out[key], expected, rtol=1e-5, atol=1e-7)


def test_dp_noise_is_seeded_and_scaled() -> None:
    cfg = {"strategy.dp": "server-fixed", "strategy.dp-noise-multiplier": 1.0, "strategy.dp-clipping-norm": 0.4}
    noisy, _ = aggregate(build("fedmedlora", **cfg), good_replies())
    again, _ = aggregate(build("fedmedlora", **cfg), good_replies())
    clean, _ = aggregate(build("fedmedlora", **{**cfg, "strategy.dp-noise-multiplier": 0.0}), good_replies())
    noise = np.concatenate([(noisy[k] - clean[k]).ravel() for k in SHAPES])
    assert all(np.array_equal(noisy[k], again[k]) for k in SHAPES)
    assert np.std(noise) == pytest.approx(1.0 * 0.4 / 4, rel=0.3)  # noise * clip / sampled sites


def test_dp_refuses_a_strategy_that_is_not_a_weighted_mean_of_the_updates(caplog: pytest.LogCaptureFixture) -> None:
    """Flower's noise bounds one site's effect on a weighted mean of clipped updates; a
    strategy that weighs by validation loss, selects, steps an optimiser or forms exact
    products is refused at start, not warned about."""
    build("fedmedlora", **{"strategy.dp": "server-fixed"})
    build("fedmedlora-equal", **{"strategy.dp": "server-fixed"})
    for name in ("fedmedlora-plus", "krum", "fedadam", "exact", "fedsvd"):
        with pytest.raises(ConfigError, match=f"cannot be combined with strategy.name = '{name}'"):
            build(name, **{"strategy.dp": "server-fixed"})
    with pytest.raises(ValueError, match="cannot wrap FedMedLoRAPlus"):  # a plugin built outside the config
        compose(FedMedLoRAPlus(score_fn=lambda state: 1.0, expected_shapes=SHAPES),
                WrapperSettings(dp=DPSettings("server-fixed", 1.0, 1.0, 4)))
    # Unequal num-examples weights are accounted for (server_app/report.py), still said at aggregation.
    with caplog.at_level(logging.WARNING, logger="flwr"):
        aggregate(build("fedmedlora", **{"strategy.dp": "server-fixed"}), good_replies())
    assert "calibrated for equal site weights" in caplog.text


def test_dp_refuses_more_sampled_sites_than_a_round_is_sure_to_aggregate() -> None:
    with pytest.raises(ConfigError, match="strategy.dp-num-sampled-sites: 30 is more than strategy.min-sites = 3"):
        validate({"strategy.dp": "server-fixed", "strategy.dp-num-sampled-sites": 30, "strategy.min-sites": 3})
    validate({"strategy.dp": "server-fixed", "strategy.dp-num-sampled-sites": 3, "strategy.min-sites": 3})


# --- client side -------------------------------------------------------------------------


def _site_call(state: dict[str, np.ndarray]):
    def call_next(msg: Message, context: Context) -> Message:
        content = RecordDict({"arrays": to_record(state), "metrics": MetricRecord({"num-examples": 3})})
        return Message(content=content, reply_to=msg)

    return call_next


@pytest.mark.parametrize("mode", ["none", "server-fixed", "client-fixed", "client-adaptive"])
def test_client_dp_mod_clips_only_in_client_modes(mode: str) -> None:
    ins = instruction(5)
    ins.content = RecordDict({"arrays": to_record(GLOBAL), "config": ConfigRecord({"clipping_norm": 0.1})})
    far = {k: v + 1.0 for k, v in GLOBAL.items()}
    context = Context(run_id=1, node_id=5, node_config={}, state=RecordDict(), run_config={"strategy.dp": mode})
    out = dp_clipping_mod(ins, context, _site_call(far))
    arrays = out.content["arrays"]
    norm = math.sqrt(sum(float(np.sum((arrays[k].numpy().astype(np.float64) - GLOBAL[k]) ** 2)) for k in SHAPES))
    if mode.startswith("client"):
        assert norm == pytest.approx(0.1, rel=1e-4)
    else:
        assert norm > 1
    assert ("norm_bit" in out.content["metrics"]) == (mode == "client-adaptive")


# --- configuration errors ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"strategy.dp": "laplace"}, r"strategy.dp: 'laplace' is not one of \['none', 'server-fixed'"),
        ({"strategy.dp-noise-multiplier": -1.0}, "strategy.dp-noise-multiplier: expected a number >= 0"),
        ({"strategy.dp-noise-multiplier": float("nan")}, "strategy.dp-noise-multiplier"),
        ({"strategy.dp-clipping-norm": 0.0}, "strategy.dp-clipping-norm: expected a number > 0"),
        ({"strategy.dp-num-sampled-sites": -2}, "strategy.dp-num-sampled-sites"),
        ({"strategy.dp": "server-adaptive", "strategy.dp-noise-multiplier": 1.0},
         "strategy.dp-noise-multiplier: 1.0 is too large.*server-adaptive.*3 sites"),
        ({"strategy.proximal-mu": -0.1}, "strategy.proximal-mu"),
        ({"strategy.server-learning-rate": -1.0}, "strategy.server-learning-rate"),
        ({"strategy.server-momentum": 1.0}, r"strategy.server-momentum: expected a number in \[0, 1\)"),
        ({"strategy.trim-beta": 0.5}, r"strategy.trim-beta: expected a number in \[0, 0.5\)"),
        ({"strategy.krum-byzantine": -1}, "strategy.krum-byzantine"),
        ({"strategy.max-update-norm": -1.0}, "strategy.max-update-norm"),
        ({"strategy.update-norm-action": "drop"}, r"strategy.update-norm-action: 'drop' is not one of \['clip', 'reject'\]"),
        ({"strategy.name": "fedsgd"}, r"strategy.name.*'fedsgd'.*'fedadam'.*'krum'"),
    ],
)
def test_bad_values_are_config_errors_naming_the_key(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate(overrides)


def test_factory_errors_are_config_errors() -> None:
    cfg = validate({"strategy.name": "fedmedlora"})

    def unvalidated(**strategy: object):  # a config that did not pass through validate
        return dataclasses.replace(cfg, strategy=dataclasses.replace(cfg.strategy, **strategy))

    with pytest.raises(ConfigError, match="strategy.name.*'nope'"):
        build_strategy(unvalidated(name="nope"), SHAPES, None)
    with pytest.raises(ConfigError, match="strategy.dp: 'laplace'"):
        build_strategy(unvalidated(dp="laplace"), SHAPES, None)
    with pytest.raises(ConfigError, match="fedmedlora-plus needs the coordinator's validation loss"):
        build_strategy(unvalidated(name="fedmedlora-plus"), SHAPES, None)


def test_unused_strategy_keys_are_named(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="server_app.strategy_factory"):
        build_strategy(validate({"strategy.trim-beta": 0.3, "strategy.dp-clipping-norm": 2.0}), SHAPES, None)
    assert "strategy.trim-beta = 0.3 has no effect with strategy.name = 'fedmedlora'" in caplog.text
    assert "strategy.dp-clipping-norm = 2.0 has no effect" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="server_app.strategy_factory"):
        build_strategy(validate({"strategy.name": "fedtrimmedavg", "strategy.trim-beta": 0.3}), SHAPES, None)
    assert "has no effect" not in caplog.text


def test_lora_fedavg_family_is_wrapped_once() -> None:
    strategy = build("fedmedlora")
    # One screening, one report, nothing between the report and the strategy.
    assert [type(layer) for layer in layers(strategy)] == [Resume, ScreenedStrategy, RoundReporting, FedMedLoRA]


def test_float64_and_float16_replies_reach_flower_as_float32() -> None:
    states = site_states()
    replies = good_replies([{k: v.astype(np.float64) for k, v in states[0].items()},
                            {k: v.astype(np.float16) for k, v in states[1].items()}, *states[2:]])
    for name in ("fedmedian", "fedprox"):
        out, report = aggregate(build(name), replies)
        assert report.rejected == [] and all(v.dtype == np.float32 for v in out.values())
