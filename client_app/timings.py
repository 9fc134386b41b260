"""Seconds a message spends outside the site's work, by cause: the split that
`benchmarks/protocol.py --only overhead` reports (docs/benchmarks.md, "Federation overhead").

Every reply's metrics carry the four keys, so every site's metric keys stay identical:
- process start: from the creation of the process Flower started for the message until the
  app module was imported (interpreter, Flower's own imports, fetching the message), plus
  the wait for a fresh site worker; reported by a process's first message only;
- imports: the app module and the handlers' model stack, on first use in a process;
- model load and data load: building the cached base model with its adapter, and reading
  and encoding the site's data, when the message found them not yet cached.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

KEYS = {"process_start": "site-process-start-seconds", "imports": "site-import-seconds",
        "model_load": "site-model-load-seconds", "data_load": "site-data-load-seconds"}


@dataclass
class MessageTimings:
    process_start: float = 0.0
    imports: float = 0.0
    model_load: float = 0.0
    data_load: float = 0.0

    def to_metrics(self) -> dict[str, float]:
        return {KEYS[f.name]: float(getattr(self, f.name)) for f in fields(self)}


_current = MessageTimings()
_first_message = True


def current() -> MessageTimings:
    """The timings of the message this process is handling."""
    return _current


def process_created() -> float:
    """Unix time at which this process was created (Linux /proc)."""
    ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22: starttime
    boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                if line.startswith("btime"))
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def begin_message(import_started: float, imported: float) -> MessageTimings:
    """Start the timings of a new message; the first in a process adds its start and imports."""
    global _current, _first_message
    _current = MessageTimings()
    if _first_message:
        _first_message = False
        _current.process_start = max(0.0, import_started - process_created())
        _current.imports = imported - import_started
    return _current


def started_as_worker() -> None:
    """In the site worker: its own start is counted by the ClientApp that waited for it."""
    global _first_message
    _first_message = False


def add_to_reply(reply, timings: MessageTimings) -> None:
    """Add the forwarding process's own timings to the worker's reply metrics."""
    from wire import protocol

    if not reply.has_content() or protocol.METRICS not in reply.content:
        return  # an error reply carries no metrics
    metrics = reply.content[protocol.METRICS]
    for key, value in timings.to_metrics().items():
        metrics[key] = float(metrics.get(key, 0.0)) + value
