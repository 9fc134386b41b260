"""A loopback deployment's inputs and leftovers: the tiny synthetic corpus, its three sites
(hospital-a, -b, -c), the run-config overrides of a short run, a copy of the app, and the
processes a deployment left behind."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from fedmedlora.deploy import Site
from support.paths import REPO


def _processes_of(workdir: Path) -> list[int]:
    """Live processes whose command line or environment names `workdir` (every process a
    deployment starts has FLWR_HOME inside it), found without the module's own bookkeeping."""
    needle = str(workdir).encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            if needle in (entry / "environ").read_bytes() or needle in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except (OSError, IndexError):
            continue
    return pids


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory) -> Path:
    from data_loaders.synthetic import generate_corpus

    root = tmp_path_factory.mktemp("corpus")
    generate_corpus(root, seed=3, docs_per_site=24, coordinator_docs=4)
    return root


def copy_app(dest: Path) -> Path:
    """A copy of the project at `dest`: what `flwr run` packs (and more), none of what it ignores."""
    shutil.copytree(REPO, dest, ignore=shutil.ignore_patterns(
        ".git", ".venv", "outputs", "data", ".flwr", ".deploy", "deploy", "__pycache__", ".pytest_cache",
        "*.log", ".cache", ".ci"))
    return dest


def _overrides(tiny_llama: Path, corpus: Path, out: Path, rounds: int) -> dict:
    # as in tests/test_simulation.py (data.root/data.sites only matter in simulation)
    return {
        "model.name": str(tiny_llama), "num-server-rounds": rounds, "train.max-steps": 2,
        "train.batch-size": 2, "lora.r": 4, "lora.alpha": 8, "eval.max-instances": 3,
        "eval.max-new-tokens": 8, "data.server-validation": str(corpus / "coordinator"),
        "output-dir": str(out), "run-name": "deploy", "strategy.min-sites": 3,
    }


def _sites(corpus: Path) -> list[Site]:
    return [Site(f"hospital-{x}", corpus / f"site-{x}") for x in "abc"]
