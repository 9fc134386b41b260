"""Every use of Flower internals, names outside flwr's public API, in one place.

They were written against flwr 1.42 (`SUPPORTED_FLWR`): the strategy modules those
internals live in, FedOpt's and FedAvgM's optimiser state, adaptive clipping's current
norm, MultiKrum's selection, and FedAvg's reply check. tests/test_flower_compat.py fails on
another flwr version, so an upgrade re-checks each of them here before anything else runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context, Message, RecordDict
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


# --- Flower internals outside the strategies -----------------------------------------------
# The sites (client_app/worker.py, client_app/secure_aggregation.py), the site executor
# (fedmedlora/site_exec.py), the benchmarks and scripts/faults_table.py use these names, not
# Flower's modules (the import-linter contract "Flower internals only in
# strategies.flower_compat" holds them to it). Each imports its Flower module when called:
# a ClientApp process loads only what its message needs.

def message_to_bytes(message: Message) -> bytes:
    """The message as Flower serialises it on the wire (its protobuf)."""
    from flwr.common.serde import message_to_proto

    return message_to_proto(message).SerializeToString()


def message_from_bytes(data: bytes) -> Message:
    from flwr.common.serde import message_from_proto

    return message_from_proto(_parse_proto("Message", data))


def context_to_bytes(context: Context) -> bytes:
    from flwr.common.serde import context_to_proto

    return context_to_proto(context).SerializeToString()


def context_from_bytes(data: bytes) -> Context:
    from flwr.common.serde import context_from_proto

    return context_from_proto(_parse_proto("Context", data))


def _parse_proto(kind: str, data: bytes):
    """Flower's protobuf `Message` or `Context` from bytes."""
    from flwr.proto import message_pb2  # pylint: disable=no-name-in-module

    proto = getattr(message_pb2, kind)()
    proto.ParseFromString(data)
    return proto


def message_nbytes(message: Message) -> int:
    """The bytes the message takes on the wire."""
    from flwr.common.serde import message_to_proto

    return message_to_proto(message).ByteSize()


def over_the_wire(message: Message) -> Message:
    """The message as the other side gets it: serialised and read back (no shared records)."""
    from flwr.common.serde import message_from_proto, message_to_proto

    return message_from_proto(message_to_proto(message))


def act_as_server_app(run_id: int = 1, node_id: int = 0, task_id: int = 0) -> None:
    """Take a ServerApp's identity in a process that is none (benchmarks, scripts): Flower
    stamps the instruction messages a strategy builds with it."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, node_id, task_id


def is_secaggplus(message: Message) -> bool:
    """A SecAgg+ stage message (or reply): it carries Flower's `secaggplus` config record."""
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    return message.has_content() and RECORD_KEY_CONFIGS in message.content.config_records


def secaggplus_stage(message: Message) -> str | None:
    """The SecAgg+ stage a message belongs to, None for a message outside the protocol."""
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

    if not is_secaggplus(message):
        return None
    return str(message.content.config_records[RECORD_KEY_CONFIGS].get(Key.STAGE, ""))


def secaggplus_client_mod(message: Message, context: Context, call_next) -> Message:
    """Flower's SecAgg+ client mod (`flwr.client.mod.secaggplus_mod`) around `call_next`."""
    from flwr.client.mod import secaggplus_mod

    return secaggplus_mod(message, context, call_next)


def fitres_record(tensors: list[np.ndarray], num_examples: int) -> RecordDict:
    """A train reply as the older `fitres.*` records that Flower's SecAgg+ mod reads."""
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
    from flwr.compat.common import recorddict_compat

    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(tensors), num_examples, {})
    return recorddict_compat.fitres_to_recorddict(fitres, keep_input=False)


def secaggplus_quantize(tensors: list[np.ndarray], clipping_range: float, target_range: int) -> list[np.ndarray]:
    """SecAgg+'s quantization of a site's tensors (flwr.common.secure_aggregation.quantization)."""
    from flwr.common.secure_aggregation.quantization import quantize

    return quantize(tensors, clipping_range, target_range)


def secaggplus_mask(seed: bytes, modulus: int, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    """The mask SecAgg+ draws from a mask key (`pseudo_rand_gen`, which folds the key to 32 bits)."""
    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen

    return pseudo_rand_gen(seed, modulus, shapes)


def build_fab(app_dir: Path) -> bytes:
    """The FAB `flwr run` and `flwr build` make of `app_dir` (the same function: fixed
    timestamps and sorted paths, so the same files give the same bytes)."""
    from flwr.cli.build import build_fab_from_disk

    return build_fab_from_disk(app_dir)


def run_superexec_for_client_apps(command: str) -> None:
    """Flower's `flower-superexec` (its options from sys.argv), taking ClientApp tasks only
    (`AutoExecPlugin.supported_task_types`) and starting each with `command` instead of
    `flwr-clientapp` (`TASK_TYPE_TO_COMMAND`)."""
    from flwr.supercore.cli.flower_superexec import flower_superexec
    from flwr.supercore.constant import TASK_TYPE_TO_COMMAND, TaskType
    from flwr.supercore.superexec.plugin.base_exec_plugin import AutoExecPlugin

    TASK_TYPE_TO_COMMAND[TaskType.CLIENT_APP] = command
    AutoExecPlugin.supported_task_types = frozenset({TaskType.CLIENT_APP})
    flower_superexec()


def run_clientapp_checking_fab(check: Callable[[Any, dict], None]) -> None:
    """Flower's `flwr-clientapp` (its options from sys.argv) calling `check(fab_file,
    node_config)` before it installs the FAB: `run_clientapp` pulls the message, its Context
    and the FAB (`pull_task_input`), installs the FAB (`install_from_fab`) and only then
    loads the app, so a check that raises stops the app before any of its code runs."""
    from flwr.supernode.cli.flwr_clientapp import flwr_clientapp
    from flwr.supernode.runtime import run_clientapp as runtime

    pull, install = runtime.pull_task_input, runtime.install_from_fab
    node_config: dict = {}

    def pull_task_input(client):
        message, context, run, fab = pull(client)
        node_config.update(context.node_config)
        return message, context, run, fab

    def install_from_fab(fab_file, *args, **kwargs):
        check(fab_file, node_config)
        return install(fab_file, *args, **kwargs)

    runtime.pull_task_input, runtime.install_from_fab = pull_task_input, install_from_fab
    flwr_clientapp()


# --- secure aggregation: Flower's SecAgg+ workflow and its legacy context ------------------
# strategies/secure_aggregation.py runs SecAggPlusWorkflow's stage methods one by one on a
# LegacyContext, with a legacy FedAvg that keeps the unmasked sum, and counts each message's
# bytes as Flower serialises it (`message_nbytes`).

from flwr.common import FitIns, parameters_to_ndarrays  # noqa: E402
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS  # noqa: E402
from flwr.common.secure_aggregation.secaggplus_constants import Key as SecAggKey  # noqa: E402
from flwr.server.compat.grid_client_proxy import GridClientProxy  # noqa: E402
from flwr.server.compat.legacy_context import LegacyContext  # noqa: E402
from flwr.server.strategy import FedAvg as LegacyFedAvg  # noqa: E402
from flwr.server.workflow import SecAggPlusWorkflow  # noqa: E402
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD  # noqa: E402
from flwr.server.workflow.constant import Key as WorkflowKey  # noqa: E402
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState  # noqa: E402

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
]
