"""Finding and stopping the processes a run or a deployment started (Linux /proc).

Flower and Ray re-parent some of their processes (to init) as their parents exit, so a
process tree taken once can miss them: callers pass a `find` function that is asked again
while waiting, and mark their processes through the environment (`pids_with_env`).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterable
from pathlib import Path


def alive(pid: int) -> bool:
    """True while `pid` runs; a zombie is gone for our purposes."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return (Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]) != "Z"
    except OSError:
        return False


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
                and alive(int(entry.name)):
            pids.append(int(entry.name))
    return pids


def stop_processes(
    find: Callable[[], Iterable[int]],
    steps: Iterable[tuple[signal.Signals, float]] = ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)),
    reap: Callable[[], None] = lambda: None,
    on_escalate: Callable[[list[int]], None] = lambda pids: None,
) -> list[int]:
    """Send each step's signal to what `find` returns and wait up to the step's seconds for
    it to go, asking `find` again while waiting; the next step takes what is left.
    `reap` polls the caller's direct children (so they do not linger as zombies);
    `on_escalate` hears the pids left before a further step. Returns the pids still alive."""
    pids = [p for p in find() if alive(p)]
    for number, (sig, wait) in enumerate(steps):
        if number and pids:
            on_escalate(pids)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while True:
            reap()
            pids = [p for p in sorted(set(pids) | set(find())) if alive(p)]
            if not pids or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        if not pids:
            break
    return pids
