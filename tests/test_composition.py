"""The strategy stack: bare strategies in the registry, the wrappers around them in one order
(strategies/compose.py), and the ServerApp's questions answered by the layer that knows."""

from __future__ import annotations

import pytest
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping

from server_app.strategy_factory import build_strategy
from strategies import (
    STRATEGIES,
    DPSettings,
    FedMedLoRA,
    ScreenedStrategy,
    StrategyWrapper,
    WrapperSettings,
    compose,
    register,
    strategy_class,
)
from strategies.norm_bound import NormBound
from strategies.proximal import ProximalTerm
from strategies.registry import WRAPPERS
from strategies.reporting import RoundReporting
from strategies.resume import Resume
from strategies.roster import WatchedGrid
from strategies.secure_aggregation import SecureAggregation, SecureAggregationGrid
from support.strategy_harness import SHAPES, FakeGrid, layers, run_config, validation_loss


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_the_registry_holds_only_bare_strategies(name: str) -> None:
    cls = STRATEGIES[name]
    assert not issubclass(cls, WRAPPERS)
    built = build_strategy(run_config(name), SHAPES, validation_loss)
    # What the factory built from the name is the registered class itself, holding no other strategy,
    # at the bottom of the stack, right under the report wrapper.
    assert type(built.core) is cls and getattr(built.core, "strategy", None) is None
    assert isinstance(layers(built)[-2], RoundReporting)


def test_a_wrapper_cannot_be_registered_or_named() -> None:
    with pytest.raises(TypeError, match="wraps another strategy"):
        register("screened")(ScreenedStrategy)
    with pytest.raises(TypeError, match="wraps another strategy"):
        register("dp")(DifferentialPrivacyServerSideFixedClipping)
    with pytest.raises(ValueError, match="not a bare strategy class"):
        strategy_class("strategies.screened:ScreenedStrategy")
    assert "screened" not in STRATEGIES and "dp" not in STRATEGIES


def test_compose_stacks_the_wrappers_in_one_order() -> None:
    core = FedMedLoRA(expected_shapes=SHAPES)
    settings = WrapperSettings(min_sites=2, max_update_norm=1.0, proximal_mu=0.01, secagg=(8.0, 1000),
                               dp=DPSettings("server-fixed", 0.1, 1.0, 2))
    stack = layers(compose(core, settings))
    assert [type(layer) for layer in stack] == [
        Resume, ScreenedStrategy, SecureAggregation, NormBound, ProximalTerm, RoundReporting,
        DifferentialPrivacyServerSideFixedClipping, FedMedLoRA,
    ]
    assert stack[-1] is core and all(layer.core is core for layer in stack[:-2])
    # The wrappers that report share one RoundReports.
    assert stack[1].reports is stack[3].reports is stack[5].reports
    # The defaults add nothing but the screening and the report.
    assert [type(layer) for layer in layers(compose(FedMedLoRA(expected_shapes=SHAPES)))] == [
        Resume, ScreenedStrategy, RoundReporting, FedMedLoRA,
    ]


def test_the_screening_watches_the_secure_aggregation_grid() -> None:
    """The screening notes the instructions the strategy handed out, above SecAgg+, which
    turns the train exchange into its stages right above the wire."""
    strategy = compose(FedMedLoRA(expected_shapes=SHAPES), WrapperSettings(secagg=(8.0, 1000)))
    wire = FakeGrid()
    grid = strategy.wrap_grid(wire)
    assert isinstance(grid, WatchedGrid) and isinstance(grid._grid, SecureAggregationGrid)
    assert grid._grid._grid is wire


def test_the_stack_answers_what_the_server_app_asks() -> None:
    strategy = build_strategy(run_config("fedmedlora[dp=server-fixed]"), SHAPES, validation_loss)
    assert isinstance(strategy, Resume) and isinstance(strategy, StrategyWrapper)
    assert strategy.class_name() == "FedMedLoRA"  # the bare strategy's, under any wrapper
    assert strategy.invariants == ()  # Flower's DP wrapper keeps none of FedMedLoRA's
    assert build_strategy(run_config("fedmedlora"), SHAPES, None).invariants == FedMedLoRA.invariants
    state = strategy.state_dict()  # the DP wrapper's clipping state around the strategy's own
    assert state == {"wrapped": {"own": {}}}
    strategy.load_state_dict(state)
    assert strategy.personal_adapters({}) == {}
    with pytest.raises(LookupError, match="no report"):
        strategy.round_report()
