"""`flwr run --stream`, then the run's final status, as one exit code.

flwr 1.42's `flwr run --stream` exits 0 when the run has started and its log stream has
ended, whatever became of the ServerApp: a ServerApp that raised is "finished:failed" on the
SuperLink, yet the command succeeded. `run_and_check` reads the run id from flwr's output
and asks the SuperLink (`flwr ls --run-id --format json`) how the run finished, so a failed
or stopped run makes the command fail (docs/howto/docker-compose.md).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

COMPLETED = "finished:completed"
_STARTED = re.compile(r"Successfully started run (\d+)")


class RunNotCompleted(RuntimeError):
    """The run started but did not finish as completed (failed, stopped, or unknown)."""


def run_id_in(line: str) -> int | None:
    """The run id of flwr's "Successfully started run <id>" line, else None."""
    match = _STARTED.search(line)
    return int(match.group(1)) if match else None


def run_status(flwr: str, run_id: int, connection: str, cwd: Path | None = None,
               env: dict | None = None, timeout: float = 60.0) -> tuple[str, str]:
    """(status, details) of `run_id` on the SuperLink of `connection`, e.g.
    ("finished:failed", "ServerApp raised ...")."""
    command = [flwr, "ls", connection, "--run-id", str(run_id), "--format", "json"]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    try:
        payload = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise RunNotCompleted(f"`{' '.join(command)}` did not answer JSON (exit {result.returncode}): "
                              f"{(result.stdout + result.stderr).strip()[-500:]}") from None
    runs = payload.get("runs") or []
    if not payload.get("success") or not runs:
        raise RunNotCompleted(f"the SuperLink does not know run {run_id}: {payload}")
    return str(runs[0].get("status", "")), str(runs[0].get("status-details", ""))


def check_completed(flwr: str, run_id: int | None, connection: str, cwd: Path | None = None,
                    env: dict | None = None) -> None:
    """Raise RunNotCompleted unless run `run_id` finished as completed."""
    if run_id is None:
        raise RunNotCompleted("flwr did not report a run id (no 'Successfully started run' line)")
    status, details = run_status(flwr, run_id, connection, cwd=cwd, env=env)
    if status != COMPLETED:
        raise RunNotCompleted(f"run {run_id} ended as {status or 'unknown'}"
                              + (f": {details}" if details else "")
                              + f" (see `flwr log {run_id} {connection} --show`)")


def flwr_executable() -> str:
    """The `flwr` beside this interpreter (a virtualenv need not be activated)."""
    candidate = Path(sys.executable).with_name("flwr")
    return str(candidate) if candidate.exists() else "flwr"


def run_and_check(app_dir: Path, connection: str, run_config: Sequence[str] = (), stdout: IO[str] | None = None,
                  env: dict | None = None, on_line: Callable[[str], None] | None = None) -> int:
    """`flwr run <app_dir> <connection> --stream`, its output copied to `stdout`; then 0 if the
    run finished as completed, 1 otherwise (the reason on stderr), flwr's own code if it failed."""
    flwr = flwr_executable()
    command = [flwr, "run", str(app_dir), connection, "--stream"]
    for item in run_config:
        command += ["--run-config", item]
    env = dict(os.environ if env is None else env)
    process = subprocess.Popen(command, cwd=app_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    run_id = None
    assert process.stdout is not None
    for raw in iter(process.stdout.readline, b""):
        line = raw.decode(errors="replace")
        run_id = run_id if run_id is not None else run_id_in(line)
        if stdout is not None:
            stdout.write(line)
            stdout.flush()
        if on_line is not None:
            on_line(line)
    code = process.wait()
    if code != 0:
        return code
    try:
        check_completed(flwr, run_id, connection, cwd=app_dir, env=env)
    except RunNotCompleted as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
