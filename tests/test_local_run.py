"""`fedmedlora simulate`'s ports: a run never lands on another run's SuperLink."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest

from fedmedlora import local_run

REPO = Path(__file__).resolve().parents[1]


def _listen(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


def test_simulate_refuses_a_taken_port_and_names_it(tmp_path):
    """A port held by something else (another run's SuperLink) stops the run before `flwr run`
    starts, with the port in the message, instead of joining whoever answers there."""
    holder = _listen()
    port = holder.getsockname()[1]
    try:
        start = time.monotonic()
        with pytest.raises(local_run.PortInUse, match=f"127.0.0.1:{port}"):
            local_run.flwr_run(REPO, tmp_path / "flwr-home", {}, http_port=port)
        assert time.monotonic() - start < 5
        assert not (tmp_path / "flwr-home").exists()  # nothing was started or written
    finally:
        holder.close()


def test_runs_without_named_ports_get_free_ones_not_flowers_defaults(tmp_path, monkeypatch):
    """With Flower's default local ports (39091, 39093) taken, as a first `fedmedlora simulate`
    holds them, a second one still gets two free ports of its own."""
    held = []
    for port in (39091, 39093):
        try:
            held.append(_listen(port))
        except OSError:
            pass  # already taken by someone else on this machine: taken all the same
    seen: list[dict] = []

    def fake_flwr(command, env, **kwargs):  # the port choice is the unit under test, not Flower
        seen.append(env)
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(local_run.subprocess, "run", fake_flwr)
    try:
        assert local_run.flwr_run(REPO, tmp_path / "flwr-home") == 0
    finally:
        for sock in held:
            sock.close()
    ports = {int(seen[0]["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"]), int(seen[0]["FLWR_LOCAL_CONTROL_API_PORT"])}
    assert len(ports) == 2 and not ports & {39091, 39093}


def test_a_port_left_in_time_wait_by_a_finished_run_counts_as_free():
    """A SuperLink that just stopped leaves its connections in TIME_WAIT for a minute; servers
    bind over that (SO_REUSEADDR, which the SuperLink's server sets too), so the next run on the
    same port must not be refused."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    accepted.close()  # the server side closes first: its end of the connection waits in TIME_WAIT
    client.close()
    server.close()
    time.sleep(0.1)
    local_run.check_port_free(port, "SuperLink HTTP")
