"""A run's folder: one PEFT adapter folder per round, `final/`, `metrics.jsonl` (one
line per round), `summary.json` and the coordinator's log."""

from __future__ import annotations

import json
import logging
import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from modeling.adapter_io import save_peft_folder

log = logging.getLogger(__name__)


def run_folder(output_dir: str, run_name: str) -> Path:
    name = run_name or datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = Path(output_dir).expanduser().resolve() / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class RunRecorder:
    def __init__(self, folder: Path, lora_config, metadata: dict[str, Any]) -> None:
        self.folder = folder
        self.lora_config = lora_config
        self.metadata = metadata
        self.metrics_path = folder / "metrics.jsonl"
        self.started = time.time()
        (folder / "run.json").write_text(json.dumps(metadata, indent=2, sort_keys=True))

    def save_adapter(self, name: str, state: dict[str, np.ndarray], server_round: int) -> Path:
        return save_peft_folder(
            state, self.lora_config, self.folder / name, {**self.metadata, "server-round": server_round}
        )

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
