"""Every use of Flower internals, names outside flwr's public API, in one place.

They were written against flwr 1.42 (`SUPPORTED_FLWR`): the strategy modules those
internals live in, FedOpt's and FedAvgM's optimiser state, adaptive clipping's current
norm, MultiKrum's selection, and FedAvg's reply check. tests/test_flower_compat.py fails on
another flwr version, so an upgrade re-checks each of them here before anything else runs.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp.strategy import FedAvg, FedAvgM, Strategy
from flwr.serverapp.strategy.dp_adaptive_clipping import DifferentialPrivacyAdaptiveBase
from flwr.serverapp.strategy.fedopt import FedOpt
from flwr.serverapp.strategy.multikrum import select_multikrum
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

SUPPORTED_FLWR = "1.42"

# What Flower's strategies keep between rounds, for checkpoints: the server optimisers'
# moments and the adapter they step from, adaptive clipping's current norm.
FLOWER_STATE: tuple[tuple[type[Strategy], tuple[str, ...]], ...] = (
    (FedOpt, ("current_arrays", "m_t", "v_t")),  # FedAdam, FedYogi, FedAdagrad
    (FedAvgM, ("current_arrays", "momentum_vector")),
    (DifferentialPrivacyAdaptiveBase, ("clipping_norm",)),
)


def valid_train_replies(strategy: FedAvg, replies: Iterable[Message]) -> list[Message]:
    """The replies FedAvg's own check accepts (it logs the others)."""
    valid, _ = strategy._check_and_log_replies(list(replies), is_train=True)
    return list(valid)


__all__ = ["FLOWER_STATE", "SUPPORTED_FLWR", "aggregate_arrayrecords", "select_multikrum", "valid_train_replies"]
