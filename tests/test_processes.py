"""The one process-stopping helper that local runs and deployments use."""

from __future__ import annotations

import signal
import subprocess
import time

from fedmedlora.processes import alive, pids_with_env, process_tree, stop_processes


def _tree(script: str, env_marker: str | None = None) -> subprocess.Popen:
    env = {"PATH": "/usr/bin:/bin", **({"FEDMEDLORA_TEST_MARK": env_marker} if env_marker else {})}
    process = subprocess.Popen(["bash", "-c", script], env=env)
    deadline = time.monotonic() + 10
    while len(process_tree(process.pid)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    return process


def test_a_tree_that_obeys_sigterm_stops_without_escalation() -> None:
    process = _tree("sleep 60 & sleep 60 & wait")
    pids = process_tree(process.pid)
    assert len(pids) == 3 and all(alive(p) for p in pids)
    escalated = []
    left = stop_processes(lambda: process_tree(process.pid), reap=process.poll, on_escalate=escalated.append)
    assert left == [] and escalated == [] and not any(alive(p) for p in pids)
    assert process.wait(timeout=5) == -signal.SIGTERM


def test_a_process_ignoring_sigterm_is_killed_and_named() -> None:
    process = _tree("trap '' TERM; sleep 60 & sleep 60 & wait", env_marker="ignore-term")
    marked = pids_with_env("FEDMEDLORA_TEST_MARK", "ignore-term")
    assert process.pid in marked
    escalated: list[list[int]] = []
    left = stop_processes(lambda: marked, ((signal.SIGTERM, 0.5), (signal.SIGKILL, 5.0)),
                          reap=process.poll, on_escalate=escalated.append)
    assert left == [] and escalated and process.pid in escalated[0]
    assert process.wait(timeout=5) == -signal.SIGKILL
    assert pids_with_env("FEDMEDLORA_TEST_MARK", "ignore-term") == []
