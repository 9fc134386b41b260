"""Run `flwr run` on Flower's simulation engine and leave nothing running afterwards.

`flwr run .` on the local connection starts a detached SuperLink that outlives the
command and does not report its process id. We give every run its own FLWR_HOME, so
the SuperLink's command line names it, and stop exactly that process group when the
run ends. Runtime dependency installation is disabled: the SuperLink runs the app in
the environment that is already installed instead of building a fresh one per run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


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


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    return children


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants (Flower's SuperExec, simulation, Ray workers)."""
    children, tree, stack = _children(), [], [root]
    while stack:
        pid = stack.pop()
        tree.append(pid)
        stack += children.get(pid, [])
    return tree


def stop_superlink(flwr_home: Path, grace: float = 10.0) -> list[int]:
    """Stop the SuperLink started under `flwr_home` and every process below it.
    Returns the pids it signalled."""
    pids = [p for root in superlink_pids(flwr_home) for p in process_tree(root)]
    # Ray and Flower re-parent some of their processes (to init) as their parents exit, so
    # the tree misses them under load; they keep our private FLWR_HOME in their environment.
    pids += [p for p in flower_processes_under(flwr_home) if p not in pids]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.2)
    return pids


def pids_with_env(variable: str, value: str, commands: tuple[bytes, ...] = ()) -> list[int]:
    """Live processes (never this one) whose environment has `variable=value` and, if
    `commands` is given, whose command line contains one of them."""
    needle = f"{variable}={value}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            cmdline = (entry / "cmdline").read_bytes() if commands else b""
        except OSError:  # gone, or not ours
            continue
        if needle in environ.split(b"\0") and (not commands or any(c in cmdline for c in commands)) \
                and _alive(int(entry.name)):
            pids.append(int(entry.name))
    return pids


def flower_processes_under(flwr_home: Path) -> list[int]:
    """Live Flower or Ray processes whose environment has FLWR_HOME = `flwr_home`."""
    return pids_with_env("FLWR_HOME", str(flwr_home.resolve()), (b"flwr", b"flower", b"ray"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purposes
    try:
        return (Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]) != "Z"
    except OSError:
        return False


def flwr_run(
    app_dir: Path,
    flwr_home: Path,
    overrides: dict | None = None,
    num_supernodes: int = 3,
    http_port: int = 39091,
    control_port: int = 39093,
    timeout: float | None = None,
    stdout=None,
) -> int:
    """`flwr run <app_dir> --stream` on a private local SuperLink; returns flwr's exit code."""
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
