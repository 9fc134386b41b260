"""Failing sites and a failing coordinator.

Unit level (hand-built replies, tests/support/messages.py): a site that raises, sends
nothing within the round timeout, or is reported lost by the SuperLink is named in the
round's report and log; the round goes on when at least `strategy.min-sites` sites replied
usably, and otherwise the run stops with a message naming the round, the counts and every
failed site's reason, for every strategy.

Loopback deployment (tests/test_deploy.py's tiny model and corpus): one SuperNode killed
mid-round (its whole process tree, by pid) while the other two finish the round; the
SuperLink with its ServerApp killed after a checkpoint, then the run continued with
`resume = true` in a fresh deployment. No process is left afterwards.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Error, Message, MessageType, Metadata, MetricRecord, RecordDict

from fedmedlora.deploy import DeploymentError, LoopbackDeployment
from fedmedlora.processes import process_tree
from server_app.checkpoint import existing_round
from strategies import FedMedLoRA, TooFewSites, WrapperSettings, compose
from strategies.resume import Resume
from support.deployment import _overrides, _processes_of, _sites
from support.messages import error_reply, reply
from support.paths import REPO
from support.strategy_harness import (
    as_sent,
    build,
    good_replies,
    pytest_generate_tests,  # noqa: F401 - parametrises `name`
    server_identity,  # noqa: F401 - autouse fixture
)
from support.toy_adapter import SHAPES, const_state

pytestmark = pytest.mark.e2e  # real Flower runs: the slow tier

SUPERLINK_NODE = 1  # flwr's SUPERLINK_NODE_ID: the sender of the SuperLink's own error replies
NODES = (11, 12, 13)  # sites h11, h12, h13
TIMEOUT = 7.0
NODE_UNAVAILABLE = ("Error: Node Unavailable — The destination node failed to report a heartbeat "
                    "within 2 × its expected interval.")
CLIENT_ERROR = ("<class 'client_app.app.SiteFailure'>:<'MemoryError at training.py:88 "
                "(site error 5e1f0c2a; details in the site's log)'>")


# --- unit level: the screening on a fake grid --------------------------------------------


def _instruction(message_id: str, dst_node_id: int, kind: str) -> Message:
    metadata = Metadata(run_id=1, message_id=message_id, src_node_id=0, dst_node_id=dst_node_id,
                        reply_to_message_id="", group_id="1", created_at=time.time(), ttl=3600.0,
                        message_type=kind)
    return Message(content=RecordDict(), metadata=metadata)


class FaultyGrid:
    """Three sites. `faults[round][node]`: "error" (its ClientApp raised while training),
    "silent" (no reply within the timeout), "lost" (the SuperLink answers, from itself, that
    the node missed its heartbeats). Train replies: the global adapter + node / 100."""

    def __init__(self, faults: dict[int, dict[int, str]]) -> None:
        self.faults = faults
        self.pushed = 0
        self.timeouts: list[float | None] = []

    def get_node_ids(self) -> list[int]:
        return list(NODES)

    def send_and_receive(self, messages, timeout=None) -> list[Message]:
        self.timeouts.append(timeout)
        out = []
        for msg in messages:
            self.pushed += 1
            message_id = f"m{self.pushed}"
            msg.metadata.__dict__["_message_id"] = message_id  # what a Grid's push does
            node, kind = msg.metadata.dst_node_id, msg.metadata.message_type
            fault = self.faults.get(int(msg.content["config"]["server-round"]), {}).get(node)
            if fault == "silent":
                continue
            if fault == "lost":
                out.append(Message(Error(code=5, reason=NODE_UNAVAILABLE),
                                   reply_to=_instruction(message_id, SUPERLINK_NODE, kind)))
                continue
            ins = _instruction(message_id, node, kind)
            if kind == MessageType.TRAIN and fault == "error":
                out.append(Message(Error(code=2, reason=CLIENT_ERROR), reply_to=ins))
            elif kind == MessageType.TRAIN:
                state = {k: v.numpy() + node / 100 for k, v in msg.content["arrays"].items()}
                out.append(Message(content=reply(node, state, 10, f"h{node}").content, reply_to=ins))
            else:
                metrics = MetricRecord({"num-examples": 1, "val-loss": float(node)})
                out.append(Message(content=RecordDict({"metrics": metrics}), reply_to=ins))
        return out


def _start(strategy: Resume, grid: FaultyGrid, rounds: int) -> tuple[Any, dict[int, list]]:
    """`strategy.start` on `grid`; also each round's rejections, as the ServerApp's
    after-round hook (which writes the checkpoint) sees them."""
    rejected: dict[int, list] = {}

    def after_round(server_round: int, arrays: ArrayRecord) -> None:
        rejected[server_round] = list(strategy.round_report(server_round).rejected) if server_round else []

    initial = ArrayRecord({k: Array(v) for k, v in const_state(0.0).items()})
    result = strategy.start(grid, initial, num_rounds=rounds, timeout=TIMEOUT, evaluate_fn=after_round)
    return result, rejected


def _strategy(min_sites: int) -> Resume:
    core = FedMedLoRA(expected_shapes=SHAPES, min_available_nodes=2, min_train_nodes=2, min_evaluate_nodes=2)
    return compose(core, WrapperSettings(min_sites=min_sites))


def test_sites_that_fail_or_do_not_answer_are_named_and_the_round_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    grid = FaultyGrid({2: {13: "silent"}, 3: {12: "lost"}, 4: {11: "error"}})
    with caplog.at_level(logging.WARNING, logger="flwr"):
        result, rejected = _start(_strategy(min_sites=2), grid, rounds=4)
    no_reply = f"no reply within strategy.round-timeout = {TIMEOUT:g} s (the site stopped, lost its connection or is too slow)"
    assert rejected == {
        0: [], 1: [],
        2: [("h13", no_reply)],
        # the SuperLink's error reply comes from node 1: it is matched to the node it answers for
        3: [("h12", f"error reply (code 5): {NODE_UNAVAILABLE}")],
        4: [("h11", f"error reply (code 2): {CLIENT_ERROR}")],
    }
    assert set(grid.timeouts) == {TIMEOUT}
    assert f"round 2: update from site h13 rejected: {no_reply}" in caplog.text
    assert f"round 2: evaluation by site h13 failed: {no_reply}" in caplog.text
    assert "round 3: update from site h12 rejected: error reply (code 5)" in caplog.text
    assert "round 3: evaluation by site h12 failed (code 5)" in caplog.text
    assert "round 4: update from site h11 rejected: error reply (code 2)" in caplog.text
    # round 1: + (11 + 12 + 13) / 300; 2: + (11 + 12) / 200; 3: + (11 + 13) / 200; 4: + (12 + 13) / 200
    expected = 0.12 + 0.115 + 0.12 + 0.125
    np.testing.assert_allclose(result.arrays["a"].numpy(), expected, rtol=1e-6)


def test_too_few_usable_sites_stop_the_run_after_the_last_finished_round(caplog: pytest.LogCaptureFixture) -> None:
    strategy = _strategy(min_sites=2)
    grid = FaultyGrid({2: {12: "error", 13: "silent"}})
    with caplog.at_level(logging.WARNING, logger="flwr"), pytest.raises(TooFewSites) as stopped:
        _start(strategy, grid, rounds=3)
    message = str(stopped.value)
    assert message.startswith(
        "round 2: 1 site(s) replied usably (h11), fewer than strategy.min-sites = 2; the run stops without "
        "aggregating round 2, so the global adapter stays that of round 1. Failed site(s): "
    )
    assert f"h12: error reply (code 2): {CLIENT_ERROR}" in message
    assert f"h13: no reply within strategy.round-timeout = {TIMEOUT:g} s" in message
    assert (stopped.value.server_round, stopped.value.usable, stopped.value.min_sites) == (2, ["h11"], 2)
    assert [site for site, _ in stopped.value.failed] == ["h12", "h13"]
    assert "round 2: 1 site(s) replied usably (h11)" in caplog.text  # logged as an ERROR too
    assert any(r.levelno == logging.ERROR and "strategy.min-sites = 2" in r.getMessage() for r in caplog.records)
    # Round 1 finished (the ServerApp's hook, which writes the checkpoint, ran for it); round 2 did not.
    assert grid.pushed == 3 + 3 + 3  # round 1 train and evaluate, round 2 train: no evaluation of round 2


def test_a_site_that_never_replied_is_named_by_its_registered_supernode_name() -> None:
    """Before a site's first reply, the name its SuperNode key was registered with (`flwr
    supernode register --name`, NodeInfo.name at the SuperLink) names it; else its node id."""
    from types import SimpleNamespace

    class RegisteredGrid(FaultyGrid):
        def get_nodes(self):
            return [SimpleNamespace(node_id=12, name="hospital-b"), SimpleNamespace(node_id=13, name="")]

    strategy = _strategy(min_sites=1)
    _, rejected = _start(strategy, RegisteredGrid({1: {12: "error", 13: "silent"}}), rounds=1)
    assert [site for site, _ in rejected[1]] == ["hospital-b", "node 13"]


def test_exactly_min_sites_usable_is_enough() -> None:
    strategy = _strategy(min_sites=2)
    arrays, _ = strategy.aggregate_train(1, [reply(1, const_state(1.0), 1, "h1"), error_reply(2),
                                             reply(3, const_state(3.0), 1, "h3")])
    assert arrays is not None and [u.site for u in strategy.round_report().updates] == ["h1", "h3"]
    with pytest.raises(TooFewSites, match=r"round 1: 0 site\(s\) replied usably \(none\)"):
        strategy.aggregate_train(1, [error_reply(2)])


def test_min_sites_zero_keeps_the_old_behaviour() -> None:
    """Built directly (not from a run config), a strategy has no minimum: all rejected keeps the adapter."""
    assert compose(FedMedLoRA(expected_shapes=SHAPES)).aggregate_train(1, [error_reply(2)]) == (None, None)


def test_every_strategy_stops_below_min_sites(name: str) -> None:
    """`strategy.min-sites` from the run config, for every registered strategy, the plugin
    and the DP-wrapped variants (test_conformance.py's `name` parametrisation, from
    tests/support/strategy_harness.py)."""
    strategy = build(name, **{"strategy.min-sites": 4})
    replies = as_sent(strategy, [*good_replies()[:3], error_reply(99)])  # FFA-LoRA's sites send B only
    with pytest.raises(TooFewSites, match=r"round 1: 3 site\(s\) replied usably \(h1, h2, h3\), fewer than "
                                          r"strategy.min-sites = 4.*Failed site\(s\): node 99: error reply"):
        strategy.aggregate_train(1, replies)
    arrays, _ = build(name, **{"strategy.min-sites": 3}).aggregate_train(1, replies)
    assert arrays is not None


# --- loopback deployment ---------------------------------------------------------------


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(0.2)


def _run_in_thread(deployment: LoopbackDeployment, overrides: dict, outcome: dict) -> threading.Thread:
    def target() -> None:
        try:
            outcome["code"] = deployment.run(overrides, timeout=900)
        except BaseException as err:  # noqa: BLE001 - inspected by the test
            outcome["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_site_killed_mid_round_is_named_and_the_others_finish_the_run(tmp_path, tiny_llama, tiny_corpus):
    workdir, run_dir = tmp_path / "deploy", tmp_path / "outputs" / "deploy"
    overrides = {**_overrides(tiny_llama, tiny_corpus, tmp_path / "outputs", 2),
                 "strategy.min-sites": 2, "strategy.round-timeout": 90.0}
    outcome: dict = {}
    t0 = time.monotonic()
    with LoopbackDeployment(REPO, _sites(tiny_corpus), workdir) as deployment:
        deployment.start()
        thread = _run_in_thread(deployment, overrides, outcome)
        # Round 1's checkpoint is written just before round 2's instructions go out.
        _wait_for(lambda: (existing_round(run_dir) or 0) >= 1 or not thread.is_alive(), 600, "round 1")
        assert thread.is_alive(), outcome
        victim = deployment.supernodes["hospital-c"]
        deadline = time.monotonic() + 60  # mid-round: its SuperNode is running a ClientApp
        while len(process_tree(victim.process.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        killed_at = time.monotonic()
        killed = deployment.kill_supernode("hospital-c")
        assert killed, "hospital-c's SuperNode had exited before it was killed"
        assert victim.process.returncode is not None, f"hospital-c's SuperNode (pid {victim.process.pid}) still runs"
        thread.join(900)
        assert not thread.is_alive()
        log = (deployment.processes.log_dir / "flwr-run.log").read_text()
        print(f"site killed {killed_at - t0:.1f} s after start ({len(killed)} processes); run ended "
              f"{time.monotonic() - killed_at:.1f} s later")
    assert deployment.processes.pids() == [] and _processes_of(workdir) == []
    assert outcome.get("code") == 0, (outcome, log[-3000:])

    records = _records(run_dir)
    assert [r["round"] for r in records] == [0, 1, 2]
    assert sorted(s["site"] for s in records[1]["sites"]) == ["hospital-a", "hospital-b", "hospital-c"]
    assert sorted(s["site"] for s in records[2]["sites"]) == ["hospital-a", "hospital-b"]
    (rejected,) = records[2]["rejected"]
    assert rejected["site"] == "hospital-c", rejected
    # The round timeout passed, or the SuperLink gave up on its heartbeats first.
    assert ("no reply within strategy.round-timeout = 90 s" in rejected["reason"]
            or "Node Unavailable" in rejected["reason"]), rejected
    coordinator_log = (run_dir / "coordinator.log").read_text()
    assert "round 2: update from site hospital-c rejected" in coordinator_log
    assert (run_dir / "final" / "adapter_model.safetensors").is_file()


def test_a_site_worker_killed_mid_round_is_named_and_a_fresh_worker_serves_the_next_round(
        tmp_path, tiny_llama, tiny_corpus):
    from client_app.worker import worker_pid

    workdir, run_dir = tmp_path / "deploy", tmp_path / "outputs" / "deploy"
    overrides = {**_overrides(tiny_llama, tiny_corpus, tmp_path / "outputs", 2), "strategy.min-sites": 2}
    outcome: dict = {}
    with LoopbackDeployment(REPO, _sites(tiny_corpus), workdir) as deployment:
        deployment.start()
        thread = _run_in_thread(deployment, overrides, outcome)
        folder = deployment.worker_folder("hospital-c")
        # The worker appears with round 1's train message, and first loads the model: kill it then.
        _wait_for(lambda: worker_pid(folder) is not None or not thread.is_alive(), 600, "hospital-c's worker")
        killed = deployment.kill_site_worker("hospital-c")
        assert killed is not None, outcome
        thread.join(900)
        assert not thread.is_alive()
        log = (deployment.processes.log_dir / "flwr-run.log").read_text()
        assert worker_pid(folder) not in (None, killed)  # a fresh worker served the later messages
    assert deployment.processes.pids() == [] and _processes_of(workdir) == []
    assert outcome.get("code") == 0, (outcome, log[-3000:])

    records = _records(run_dir)
    assert [r["round"] for r in records] == [0, 1, 2]
    (rejected,) = records[1]["rejected"]
    # Before its first reply the coordinator knows the site by node id; the reason names it.
    assert "site hospital-c: site worker" in rejected["reason"], rejected
    assert "stopped before replying" in rejected["reason"], rejected
    assert sorted(s["site"] for s in records[1]["sites"]) == ["hospital-a", "hospital-b"]
    assert sorted(s["site"] for s in records[2]["sites"]) == ["hospital-a", "hospital-b", "hospital-c"]
    assert records[2]["rejected"] == []


def test_a_coordinator_killed_mid_run_resumes_in_a_fresh_deployment(tmp_path, tiny_llama, tiny_corpus):
    run_dir = tmp_path / "outputs" / "deploy"
    overrides = _overrides(tiny_llama, tiny_corpus, tmp_path / "outputs", 2)
    outcome: dict = {}
    t0 = time.monotonic()
    with LoopbackDeployment(REPO, _sites(tiny_corpus), tmp_path / "first") as first:
        first.start()
        thread = _run_in_thread(first, overrides, outcome)
        _wait_for(lambda: (existing_round(run_dir) or 0) >= 1 or not thread.is_alive(), 600, "round 1")
        assert thread.is_alive(), outcome
        first.kill_superlink()  # the coordinator's machine dies, ServerApp and all
        thread.join(120)
        assert not thread.is_alive()
    killed_at = time.monotonic()
    assert isinstance(outcome.get("error"), DeploymentError) and "superlink exited" in str(outcome["error"])
    assert first.processes.pids() == [] and _processes_of(tmp_path / "first") == []
    done = existing_round(run_dir)
    assert done == 1 and not (run_dir / "summary.json").exists()

    with LoopbackDeployment(REPO, _sites(tiny_corpus), tmp_path / "second") as second:
        second.start()
        code = second.run({**overrides, "resume": True}, timeout=900)
        log = (second.processes.log_dir / "flwr-run.log").read_text()
    print(f"coordinator killed {killed_at - t0:.1f} s after start; resumed run {time.monotonic() - killed_at:.1f} s")
    assert second.processes.pids() == [] and _processes_of(tmp_path / "second") == []
    assert code == 0, log[-3000:]

    records = _records(run_dir)
    assert [r["round"] for r in records] == [0, 1, 2]  # no finished round lost, each round once
    assert sorted(s["site"] for s in records[2]["sites"]) == ["hospital-a", "hospital-b", "hospital-c"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == 2 and [r["after-round"] for r in summary["resumed"]] == [1]
    assert summary["final-metrics"] == records[2]["coordinator"]
    assert existing_round(run_dir) == 2
    assert "resuming" in (run_dir / "coordinator.log").read_text()
