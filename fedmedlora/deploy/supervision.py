"""Processes a deployment starts: each in its own session, marked through its environment, logged to a file."""

from __future__ import annotations

import logging
import signal
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from fedmedlora.processes import alive, pids_with_env, process_tree, stop_processes

log = logging.getLogger(__name__)


MARKER_VARIABLE = "FEDMEDLORA_DEPLOYMENT"  # inherited by every process we start

def _marked_pids(marker: str) -> list[int]:
    """Live processes of ours whose environment carries `MARKER_VARIABLE=marker`."""
    return pids_with_env(MARKER_VARIABLE, marker)


@dataclass
class Started:
    name: str
    process: subprocess.Popen
    log_file: Path


@dataclass
class ProcessSet:
    """The processes of one deployment: started in their own sessions, logged to files,
    tagged through their environment, and all stopped by `stop()`."""

    log_dir: Path
    env: dict[str, str]
    marker: str = field(default_factory=lambda: uuid.uuid4().hex)
    started: list[Started] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = {**self.env, MARKER_VARIABLE: self.marker}

    def start(self, name: str, command: list[str], cwd: Path, env: dict[str, str] | None = None,
              stdout: int | None = None) -> Started:
        log_file = self.log_dir / f"{name}.log"
        with open(log_file, "ab") as handle:
            handle.write(f"$ {' '.join(command)}\n".encode())
            handle.flush()
            process = subprocess.Popen(
                command, cwd=cwd, env={**self.env, **(env or {})}, stdin=subprocess.DEVNULL,
                stdout=handle if stdout is None else stdout,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        started = Started(name, process, log_file)
        self.started.append(started)
        log.info("started %s (pid %d), log: %s", name, process.pid, log_file)
        return started

    def pids(self) -> list[int]:
        """Every live process of this deployment: what we started, its descendants, and
        anything carrying our marker (descendants re-parented after their parent exited)."""
        found: set[int] = set()
        for item in self.started:
            if item.process.poll() is None:
                found.update(process_tree(item.process.pid))
        found.update(_marked_pids(self.marker))
        return sorted(p for p in found if alive(p))

    def stop(self, grace: float = 10.0) -> list[int]:
        """SIGTERM everything, then SIGKILL what is still alive after `grace` seconds.
        Returns the pids still alive afterwards (should be none)."""
        left = stop_processes(
            self.pids, ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)), reap=self._reap,
            on_escalate=lambda pids: log.warning("still running after SIGTERM: %s; sending SIGKILL", pids))
        for item in self.started:
            try:
                item.process.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
        return [p for p in left + self.pids() if alive(p)]

    def _reap(self) -> None:
        for item in self.started:
            item.process.poll()  # reap our direct children


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
