"""Run `flwr run` on Flower's simulation engine and leave nothing running afterwards.

`flwr run .` on the local connection starts a detached SuperLink that outlives the
command and does not report its process id. We give every run its own FLWR_HOME, so
the SuperLink's command line names it, and stop exactly that process group when the
run ends. Its two ports are free ones the OS picks, unless the caller names them: two runs
on one machine never share a SuperLink (`flwr run` would otherwise hand the second run to
the first run's SuperLink, which answers on the same port). Runtime dependency installation
is disabled: the SuperLink runs the app in the environment that is already installed
instead of building a fresh one per run.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from fedmedlora.processes import pids_with_env, process_tree, stop_processes


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def run_config_arg(overrides: dict) -> str:
    return " ".join(f"{k}={_toml_value(v)}" for k, v in overrides.items())


def superlink_pids(flwr_home: Path) -> list[int]:
    """Processes whose command line names this FLWR_HOME (the SuperLink we started)."""
    marker = str(flwr_home.resolve())
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline and "superlink" in cmdline:
            pids.append(int(entry.name))
    return pids


def stop_superlink(flwr_home: Path, grace: float = 10.0) -> list[int]:
    """Stop the SuperLink started under `flwr_home` and every process below it.
    Returns the pids it found."""
    found: set[int] = set()

    def find() -> list[int]:
        # Ray and Flower re-parent some of their processes (to init) as their parents exit, so
        # the tree misses them under load; they keep our private FLWR_HOME in their environment.
        pids = [p for root in superlink_pids(flwr_home) for p in process_tree(root)]
        pids += flower_processes_under(flwr_home)
        found.update(pids)
        return pids

    stop_processes(find, ((signal.SIGTERM, grace), (signal.SIGKILL, grace)))
    return sorted(found)


def flower_processes_under(flwr_home: Path) -> list[int]:
    """Live Flower or Ray processes whose environment has FLWR_HOME = `flwr_home`."""
    return pids_with_env("FLWR_HOME", str(flwr_home.resolve()), (b"flwr", b"flower", b"ray"))


class PortInUse(RuntimeError):
    """A port the local SuperLink needs is taken (by another run's SuperLink, most often)."""


def check_port_free(port: int, name: str, host: str = "127.0.0.1") -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As servers bind: a port left in TIME_WAIT by a run that just ended is free; one a
        # process listens on is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise PortInUse(
                f"{name} port {host}:{port} is in use ({exc.strerror}); another SuperLink may be "
                f"running there (`ss -ltnp | grep {port}` names it). Stop it, or leave the port "
                "unset so that a free one is chosen."
            ) from None


def flwr_run(
    app_dir: Path,
    flwr_home: Path,
    overrides: dict | None = None,
    num_supernodes: int = 3,
    http_port: int | None = None,
    control_port: int | None = None,
    timeout: float | None = None,
    stdout=None,
) -> int:
    """`flwr run <app_dir> --stream` on a private local SuperLink; returns flwr's exit code.
    Ports left None are free ones; a named port that is taken raises PortInUse."""
    for name, port in (("SuperLink HTTP", http_port), ("control API", control_port)):
        if port is not None:
            check_port_free(port, name)
    if http_port is None or control_port is None:
        from fedmedlora.deploy.flwr_config import free_ports  # deploy.loopback imports this module

        picked = iter(free_ports(2))
        http_port = next(picked) if http_port is None else http_port
        control_port = next(picked) if control_port is None else control_port
    flwr_home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update({
        "FLWR_HOME": str(flwr_home.resolve()),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(http_port),
        "FLWR_LOCAL_CONTROL_API_PORT": str(control_port),
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        # Flower starts flower-superlink, flwr-simulation... by name: find ours first,
        # also when the virtualenv is not activated.
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
    })
    command = [str(Path(sys.executable).with_name("flwr")), "run", str(app_dir), "--stream",
               "--federation-config", f"num-supernodes={num_supernodes}"]
    if overrides:
        command += ["--run-config", run_config_arg(overrides)]
    try:
        return subprocess.run(command, env=env, cwd=app_dir, timeout=timeout, stdout=stdout,
                              stderr=subprocess.STDOUT if stdout else None).returncode
    finally:
        stop_superlink(flwr_home)
