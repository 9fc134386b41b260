"""Resume: the outermost wrapper, whose `start` runs Flower's loop and can continue a run.

`start(first_round=...)` > 1 continues a run (server_app/checkpoint.py): `initial_arrays`
is the global adapter after round `first_round - 1` and the stack's state has been restored
with `load_state_dict`. Flower's `Strategy.start` always counts rounds from 1, so it runs
`num_rounds - first_round + 1` rounds, and this wrapper hands every hook below it,
`evaluate_fn` and the returned `Result` the run's own round numbers (the sites'
`server-round`, and so their learning-rate schedule, continues; FedAdam's bias correction
reads it). The round-0 evaluation is not repeated.

`start` also sets up the run's Grid: the one the layers below need (`wrap_grid`), handed
to a bare strategy that sends messages of its own (`use_grid`, strategies/core_hooks.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from logging import INFO

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from . import core_hooks
from .wrapper import StrategyWrapper


class Resume(StrategyWrapper):
    """The strategy it holds, run from round `first_round` on; round r here is `offset + r` below."""

    def __init__(self, strategy: Strategy) -> None:
        super().__init__(strategy)
        self.offset = 0  # rounds done before this `start`

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
        *,
        first_round: int = 1,
    ) -> Result:
        """Flower's loop over rounds `first_round` .. `num_rounds` (module docstring)."""
        if isinstance(first_round, bool) or not isinstance(first_round, int) or first_round < 1:
            raise ValueError(f"first_round: expected an integer >= 1, got {first_round!r}")
        grid = self.wrap_grid(grid)
        core_hooks.use_grid(self.core, grid)
        offset = first_round - 1
        if offset == 0:
            return super().start(grid, initial_arrays, num_rounds, timeout, train_config, evaluate_config,
                                 evaluate_fn)
        if num_rounds <= offset:
            log(INFO, "rounds 1..%d are done; nothing left to run", num_rounds)
            return Result()
        log(INFO, "continuing at round %d of %d (Flower's log counts these rounds from 1)", first_round, num_rounds)

        def shifted_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            if server_round == 0:  # evaluated before the interruption
                return None
            assert evaluate_fn is not None
            return evaluate_fn(server_round + offset, arrays)

        self.offset = offset
        try:
            result = super().start(grid, initial_arrays, num_rounds - offset, timeout, train_config,
                                   evaluate_config, shifted_evaluate if evaluate_fn is not None else None)
        finally:
            self.offset = 0
        return Result(
            arrays=result.arrays,
            train_metrics_clientapp={r + offset: m for r, m in result.train_metrics_clientapp.items()},
            evaluate_metrics_clientapp={r + offset: m for r, m in result.evaluate_metrics_clientapp.items()},
            evaluate_metrics_serverapp={r + offset: m for r, m in result.evaluate_metrics_serverapp.items()},
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_train(server_round + self.offset, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.strategy.aggregate_train(server_round + self.offset, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round + self.offset, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round + self.offset, replies)
