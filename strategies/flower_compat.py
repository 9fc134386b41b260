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


# --- secure aggregation: Flower's SecAgg+ workflow and its legacy context ------------------
# strategies/secure_aggregation.py runs SecAggPlusWorkflow's stage methods one by one on a
# LegacyContext, with a legacy FedAvg that keeps the unmasked sum, and counts each message's
# bytes as Flower serialises it.

from flwr.common import FitIns, parameters_to_ndarrays  # noqa: E402
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS  # noqa: E402
from flwr.common.secure_aggregation.secaggplus_constants import Key as SecAggKey  # noqa: E402
from flwr.common.serde import message_to_proto  # noqa: E402
from flwr.server.compat.grid_client_proxy import GridClientProxy  # noqa: E402
from flwr.server.compat.legacy_context import LegacyContext  # noqa: E402
from flwr.server.strategy import FedAvg as LegacyFedAvg  # noqa: E402
from flwr.server.workflow import SecAggPlusWorkflow  # noqa: E402
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD  # noqa: E402
from flwr.server.workflow.constant import Key as WorkflowKey  # noqa: E402
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState  # noqa: E402


def serialised_nbytes(msg: Message) -> int:
    """The message's size as Flower serialises it (arrays and records)."""
    return message_to_proto(msg).ByteSize()


__all__ += [
    "MAIN_CONFIGS_RECORD",
    "MAIN_PARAMS_RECORD",
    "RECORD_KEY_CONFIGS",
    "FitIns",
    "GridClientProxy",
    "LegacyContext",
    "LegacyFedAvg",
    "SecAggKey",
    "SecAggPlusWorkflow",
    "WorkflowKey",
    "WorkflowState",
    "parameters_to_ndarrays",
    "serialised_nbytes",
]
