"""What a recorded figure was measured on and by: the machine, the command, and paths
relative to the repository, written the same way by every benchmark.

Standard library only at import (torch when asked about a GPU), so that it runs on a GPU
machine without Flower (benchmarks/gpu_check.sh).
"""

from __future__ import annotations

import importlib
import os
import platform
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def machine(*libraries: str) -> str:
    """The machine in one line, e.g. "2 CPU cores, CPU only (x86_64); Python 3.11.7, torch
    2.5.1". `libraries` (default torch) follow Python with their versions; with torch the
    device is its GPU when it sees one. A benchmark on numpy alone names numpy: its device
    is the CPU whatever else the machine has."""
    libraries = libraries or ("torch",)
    device = f"CPU only ({platform.processor() or platform.machine()})"
    if "torch" in libraries:
        import torch

        if torch.cuda.is_available():
            device = torch.cuda.get_device_name(0)
    versions = "".join(f", {name} {importlib.import_module(name).__version__}" for name in libraries)
    return f"{len(os.sched_getaffinity(0))} CPU cores, {device}; Python {platform.python_version()}{versions}"


def command(module: str, argv: Sequence[str] | None = None) -> str:
    """The command that reruns benchmark `module` ("benchmarks.<name>") with `argv` (default:
    this process's arguments), from the repository root: `python -m benchmarks.<name> ARGS`."""
    args = sys.argv[1:] if argv is None else list(argv)
    return shlex.join(["python", "-m", module, *args])


def repo_relative(path: Path) -> str:
    """`path` relative to the repository, `..` steps included where it lies outside it:
    committed results name no folder of the machine they ran on."""
    return os.path.relpath(Path(path).resolve(), REPO)
