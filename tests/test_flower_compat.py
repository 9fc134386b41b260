"""Flower internals the strategies rely on (strategies/flower_compat.py), checked against the
flwr version they were written for: an upgrade fails here first, with what to re-check."""

from __future__ import annotations

import flwr
import numpy as np
from flwr.app import Array, ArrayRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import DifferentialPrivacyServerSideAdaptiveClipping, FedAdam, FedAvg, FedAvgM

from strategies import flower_compat
from support.messages import instruction


def test_flwr_is_the_supported_version() -> None:
    assert flwr.__version__.startswith(flower_compat.SUPPORTED_FLWR + "."), (
        f"flwr {flwr.__version__}: strategies/flower_compat.py was written for {flower_compat.SUPPORTED_FLWR}; "
        "re-check every name it uses, then update SUPPORTED_FLWR")


def test_the_state_attributes_exist_on_a_configured_strategy() -> None:
    adaptive = DifferentialPrivacyServerSideAdaptiveClipping(FedAvg(), noise_multiplier=0.1, num_sampled_clients=3)
    for strategy in (FedAdam(), FedAvgM(server_momentum=0.9), adaptive):
        names = [n for cls, attrs in flower_compat.FLOWER_STATE if isinstance(strategy, cls) for n in attrs]
        assert names and all(hasattr(strategy, n) for n in names), (type(strategy).__name__, names)


def test_fedavg_reply_check_keeps_content_replies_and_drops_errors() -> None:
    content = RecordDict({"arrays": ArrayRecord({"a": Array(np.ones(2, np.float32))}),
                          "metrics": MetricRecord({"num-examples": 3})})
    good = Message(content=content, reply_to=instruction(1))
    bad = Message(Error(code=7, reason="x"), reply_to=instruction(2))
    assert flower_compat.valid_train_replies(FedAvg(), [good, bad]) == [good]
    selected = flower_compat.select_multikrum([content, content], num_malicious_nodes=0, num_nodes_to_select=1)
    assert len(selected) == 1
    averaged = flower_compat.aggregate_arrayrecords([content, content], "num-examples")
    assert np.allclose(averaged["a"].numpy(), 1.0)


def test_the_site_executor_wraps_what_it_expects() -> None:
    """The site executor (fedmedlora/site_exec.py, through `run_superexec_for_client_apps` and
    `run_clientapp_checking_fab`): Flower's ClientApp process pulls the FAB, installs it, then
    loads the app, so a check wrapped around the install runs before any of the app's code."""
    import inspect

    from flwr.supercore.constant import TASK_TYPE_TO_COMMAND, TaskType
    from flwr.supercore.superexec.plugin.base_exec_plugin import AutoExecPlugin
    from flwr.supernode.runtime import run_clientapp

    assert TASK_TYPE_TO_COMMAND[TaskType.CLIENT_APP] == "flwr-clientapp"
    assert TaskType.CLIENT_APP in AutoExecPlugin.supported_task_types
    source = inspect.getsource(run_clientapp.run_clientapp)
    order = [source.index(step) for step in ("= pull_task_input(client)", "install_from_fab(fab.content",
                                             "= load_client_app_fn(")]
    assert order == sorted(order), order
