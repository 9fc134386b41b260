"""A run's folder: one PEFT adapter folder per round, `final/`, `metrics.jsonl` (one
line per round), `summary.json` and the coordinator's log."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from modeling.adapter_io import save_peft_folder

log = logging.getLogger(__name__)


def safe_name(name: str) -> str:
    """A site's name as one folder name: anything but letters, digits, '.', '_' and '-' becomes '_'."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", name).strip(".")
    return cleaned or "site"


def run_folder(output_dir: str, run_name: str, create: bool = True) -> Path:
    """`output-dir/run-name` as an absolute path (run-name empty: the date and time)."""
    name = run_name or datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = Path(output_dir).expanduser().resolve() / name
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    return folder


class RunRecorder:
    """Writes a run's folder. `elapsed_before`: seconds the run ran before it was continued
    (the `elapsed-seconds` of records and summary go on from there)."""

    def __init__(self, folder: Path, lora_config, metadata: dict[str, Any], elapsed_before: float = 0.0,
                 after_save: Callable[[Path], Any] | None = None) -> None:
        self.folder = folder
        self.lora_config = lora_config
        self.metadata = metadata
        self.after_save = after_save  # what else goes beside every adapter (a tagger's labels)
        self.metrics_path = folder / "metrics.jsonl"
        self.started = time.time() - elapsed_before
        (folder / "run.json").write_text(json.dumps(metadata, indent=2, sort_keys=True))

    def elapsed(self) -> float:
        return time.time() - self.started

    def keep_rounds_up_to(self, last_round: int) -> None:
        """Before continuing after `last_round`: drop what a killed run wrote past it.

        `metrics.jsonl` keeps one record per round up to `last_round` (the first one of a
        round; a line cut short by the kill is dropped), rewritten atomically; adapter
        folders of later rounds go (the continued run writes them again). `final/` and
        `summary.json` of a finished run that is being extended stay until it finishes.
        """
        kept: dict[int, str] = {}
        if self.metrics_path.exists():
            for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                    server_round = int(record["round"])
                except (ValueError, KeyError, TypeError):
                    log.warning("%s: dropping an unreadable line (cut short when the run stopped?)",
                                self.metrics_path)
                    continue
                if server_round <= last_round and server_round not in kept:
                    kept[server_round] = line
            dropped = [r for r in range(last_round + 1) if r not in kept]
            if dropped:
                log.warning("%s has no record of round(s) %s", self.metrics_path, dropped)
            tmp = self.metrics_path.with_name(f".{self.metrics_path.name}.tmp")
            tmp.write_text("".join(kept[r] + "\n" for r in sorted(kept)), encoding="utf-8")
            os.replace(tmp, self.metrics_path)
        for path in self.folder.glob("round-*"):
            suffix = path.name[len("round-"):]
            if path.is_dir() and suffix.isdigit() and int(suffix) > last_round:
                shutil.rmtree(path)

    def save_adapter(self, name: str, state: dict[str, np.ndarray], server_round: int) -> Path:
        folder = save_peft_folder(
            state, self.lora_config, self.folder / name, {**self.metadata, "server-round": server_round}
        )
        if self.after_save is not None:
            self.after_save(folder)
        return folder

    def append_round(self, record: dict[str, Any]) -> None:
        record = {"elapsed-seconds": round(time.time() - self.started, 2), **record}
        with open(self.metrics_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")

    def finish(self, last_round: int, summary: dict[str, Any]) -> Path:
        final = self.folder / "final"
        if final.exists():
            shutil.rmtree(final)
        shutil.copytree(self.folder / f"round-{last_round}", final)
        summary = {"elapsed-seconds": round(time.time() - self.started, 2), **summary}
        (self.folder / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
        return final
