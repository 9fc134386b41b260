"""ProximalTerm: FedProx's coefficient (`strategy.proximal-mu`) in every train instruction.

Any strategy can have its sites add mu/2 ||w - w_global||^2 over the adapter to their loss:
client_app/handlers.py passes the train config's `proximal-mu` to train_round's FedProx term.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from logging import INFO

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from .wrapper import StrategyWrapper


class ProximalTerm(StrategyWrapper):
    """The strategy it holds, with `proximal-mu` = `mu` in its train config."""

    def __init__(self, strategy: Strategy, mu: float) -> None:
        super().__init__(strategy)
        if isinstance(mu, bool) or not (math.isfinite(mu) and mu > 0):
            raise ValueError(f"strategy.proximal-mu: expected a number > 0, got {mu!r}")
        self.mu = float(mu)

    def summary(self) -> None:
        """Log summary configuration of the strategy."""
        log(INFO, "\t├──> FedProx term sent to the sites: proximal-mu %g", self.mu)
        super().summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        config["proximal-mu"] = self.mu
        return self.strategy.configure_train(server_round, arrays, config, grid)
