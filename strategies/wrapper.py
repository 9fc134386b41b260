"""StrategyWrapper: a Flower strategy that holds another (`self.strategy`) and adds one job.

Built the way Flower builds its DP wrappers (`DifferentialPrivacyServerSideFixedClipping`
holds `strategy` and calls its hooks): every hook goes to the wrapped strategy unless the
wrapper overrides it. strategies/compose.py stacks the wrappers around a bare strategy.

What the ServerApp asks of the stack beyond Flower's hooks (the round report, checkpoint
state, the class name, each site's own adapter) goes down to the layer that answers it;
what the wrappers need from the bare strategy at the bottom (`core`) is asked through
strategies/core_hooks.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from . import core_hooks
from .checkpoint_state import load_strategy_state, strategy_state
from .round_report import RoundReport


class StrategyWrapper(Strategy):
    """Holds `strategy` and passes every hook to it; subclasses override the hooks of their job."""

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy

    @property
    def core(self) -> Strategy:
        """The bare strategy at the bottom of the stack (under any of Flower's DP wrappers too)."""
        return core_hooks.core_of(self)

    @property
    def invariants(self) -> tuple[str, ...]:
        """The wrapped strategy's invariants (tests/test_conformance.py); Flower's DP wrappers have none."""
        return tuple(getattr(self.strategy, "invariants", ()))

    # --- Flower's hooks: the wrapped strategy's ------------------------------------------

    def summary(self) -> None:
        """Log summary configuration of the strategy."""
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.strategy.aggregate_train(server_round, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)

    # --- the run's Grid -------------------------------------------------------------------

    def wrap_grid(self, grid: Grid) -> Grid:
        """The Grid the run's exchanges go through: `grid` as the wrapped layers need it (the
        screening watches it, secure aggregation runs the train exchanges). `start` calls it
        once; the deeper a layer, the closer its Grid sits to the wire."""
        inner = getattr(self.strategy, "wrap_grid", None)
        return inner(grid) if callable(inner) else grid

    # --- what the ServerApp asks of the stack --------------------------------------------

    def round_report(self, server_round: int | None = None) -> RoundReport:
        """The report of `server_round` (default: the latest round), from the layer that keeps it."""
        return self.strategy.round_report(server_round)

    def state_dict(self) -> dict[str, Any]:
        """What the stack carries from one round to the next (strategies/checkpoint_state.py);
        wrappers keep nothing of their own."""
        return strategy_state(self.strategy)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        load_strategy_state(self.strategy, state)

    def class_name(self) -> str:
        """The bare strategy's class, as checkpoints name it."""
        return type(self.core).__qualname__

    def personal_adapters(self, global_state: Mapping[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
        """Each site's own adapter by name, from a personalising strategy (FedSA-LoRA); else none."""
        return core_hooks.personal_adapters(self.core, global_state)
