"""Checkpoints: all a coordinator needs to continue a run after its last finished round.

After every round (round 0, the zero-shot evaluation, included) the coordinator replaces
`<run folder>/checkpoint.npz` with one holding:

- the global adapter after that round;
- the strategy's state between rounds (`state_dict()` of the strategy object: FedAdam's and
  FedYogi's moments, FedAvgM's momentum, adaptive DP clipping's norm, `exact`'s per-site
  ranks; see `LoraFedAvg.state_dict` and `strategies.checkpoint_state.strategy_state`);
- the round number, the coordinator's metrics of every round so far (round 0 included),
  the communication totals, the run time so far, and the run config it was written with.

It is one `.npz` file (numpy arrays, plus the rest as JSON in the `__meta__` entry; nothing
pickled), written to a temporary file, synced and renamed over the old one (`os.replace`):
a run killed at any moment leaves the previous checkpoint or the new one, never half of one.

`resume = true` (with the `run-name` to continue) loads it through `resume_checkpoint`, which
refuses, naming the key, a missing folder or checkpoint, or a run config whose model, LoRA,
strategy or data keys differ from the checkpoint's.
"""

from __future__ import annotations

import json
import os
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord

from settings.config import KEYS, ConfigError, RunConfig

CHECKPOINT_NAME = "checkpoint.npz"
FORMAT = 1
_META = "__meta__"
_GLOBAL = "global-"
_STATE = "state-"

# Run-config keys a continued run may change: rounds (a larger num-server-rounds extends
# the run), training and evaluation settings, and these two operational strategy keys
# (a site lost for good may need strategy.min-sites lowered). All other model, LoRA,
# strategy and data keys must equal the checkpoint's.
MAY_CHANGE = frozenset({"strategy.round-timeout", "strategy.min-sites"})


def must_match(key: str) -> bool:
    """Whether a continued run must keep `key` as the checkpoint has it."""
    matters = key == "quantization" or key.startswith(("model.", "lora.", "strategy.", "data."))
    return matters and key not in MAY_CHANGE


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or is not one of ours."""


@dataclass
class Checkpoint:
    """What `checkpoint.npz` holds."""

    round: int  # the last finished round (0: only the zero-shot evaluation)
    global_state: OrderedDict[str, np.ndarray]  # the global adapter after `round`
    strategy_state: dict[str, Any]
    run_config: dict[str, Any]
    coordinator_metrics: dict[int, dict[str, float]]  # round -> the coordinator's metrics
    communication: dict[str, Any]  # RoundReporter.state_dict()
    elapsed_seconds: float
    resumes: list[dict[str, Any]] = field(default_factory=list)  # earlier continuations
    strategy_class: str = ""


def checkpoint_path(folder: Path) -> Path:
    return Path(folder) / CHECKPOINT_NAME


def save_checkpoint(folder: Path, checkpoint: Checkpoint) -> Path:
    """Write `folder/checkpoint.npz` atomically (temporary file, fsync, os.replace)."""
    arrays: dict[str, np.ndarray] = {}
    keys = list(checkpoint.global_state)
    for i, key in enumerate(keys):
        arrays[f"{_GLOBAL}{i}"] = np.asarray(checkpoint.global_state[key])
    state_arrays: dict[str, np.ndarray] = {}
    meta = {
        "format": FORMAT,
        "round": int(checkpoint.round),
        "global-keys": keys,
        "strategy-class": checkpoint.strategy_class,
        "strategy-state": encode(checkpoint.strategy_state, state_arrays, "strategy state"),
        "run-config": checkpoint.run_config,
        "coordinator-metrics": {str(r): m for r, m in sorted(checkpoint.coordinator_metrics.items())},
        "communication": checkpoint.communication,
        "elapsed-seconds": float(checkpoint.elapsed_seconds),
        "resumes": checkpoint.resumes,
        "saved-at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    arrays.update({f"{_STATE}{name}": values for name, values in state_arrays.items()})
    arrays[_META] = np.frombuffer(json.dumps(meta, sort_keys=True).encode("utf-8"), dtype=np.uint8)

    path = checkpoint_path(folder)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return path


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint; raises CheckpointError naming the file if it is not a valid one."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(bytes(npz[_META]).decode("utf-8"))
            if meta.get("format") != FORMAT:
                raise CheckpointError(f"{path}: checkpoint format {meta.get('format')!r}, expected {FORMAT}")
            global_state = OrderedDict(
                (key, npz[f"{_GLOBAL}{i}"]) for i, key in enumerate(meta["global-keys"])
            )
            state_arrays = {name[len(_STATE):]: npz[name] for name in npz.files if name.startswith(_STATE)}
        return Checkpoint(
            round=int(meta["round"]),
            global_state=global_state,
            strategy_state=decode(meta["strategy-state"], state_arrays),
            run_config=dict(meta["run-config"]),
            coordinator_metrics={int(r): dict(m) for r, m in meta["coordinator-metrics"].items()},
            communication=dict(meta["communication"]),
            elapsed_seconds=float(meta["elapsed-seconds"]),
            resumes=list(meta.get("resumes", [])),
            strategy_class=str(meta.get("strategy-class", "")),
        )
    except CheckpointError:
        raise
    except Exception as err:  # noqa: BLE001 - a truncated zip, missing entries, bad JSON...
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from err


def resume_checkpoint(folder: Path, cfg: RunConfig) -> Checkpoint:
    """The checkpoint a `resume = true` run continues from, checked against its run config.

    Raises ConfigError (naming `resume` and `run-name`) if the run folder or its checkpoint
    is missing or unreadable, if a key that must match (`must_match`) differs, or if the
    run has already finished more rounds than `num-server-rounds`.
    """
    folder = Path(folder)
    where = f"output-dir = {cfg.output_dir!r}, run-name = {cfg.run_name!r}"
    if not folder.is_dir():
        raise ConfigError(f"resume = true: there is no run folder {folder} ({where}); "
                          "check output-dir and run-name, or start a new run with resume = false")
    path = checkpoint_path(folder)
    if not path.is_file():
        raise ConfigError(f"resume = true: {folder} has no {CHECKPOINT_NAME} ({where}): the run stopped "
                          "before its round-0 evaluation finished, or it is not a run folder; start it "
                          "again with resume = false")
    try:
        checkpoint = load_checkpoint(path)
    except CheckpointError as err:
        raise ConfigError(f"resume = true: {err}") from err
    differences = config_differences(checkpoint.run_config, cfg.as_dict())
    if differences:
        raise ConfigError(
            f"resume = true: the run config differs from the one the run in {folder} was started "
            f"with, in {'; '.join(differences)}. A continued run must keep the model, lora, "
            "strategy and data keys (only num-server-rounds, train.*, eval.*, "
            f"{', '.join(sorted(MAY_CHANGE))} may change)"
        )
    if checkpoint.round > cfg.num_server_rounds:
        raise ConfigError(f"num-server-rounds = {cfg.num_server_rounds}: the run in {folder} has already "
                          f"finished {checkpoint.round} rounds (resume = true); give at least {checkpoint.round}")
    return checkpoint


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """`key: checkpoint has X, this run has Y` for every key that must match and does not
    (both as dotted keys: `RunConfig.as_dict()`)."""
    out = []
    for key in sorted(k for k in current if must_match(k)):
        default = KEYS[key].default if key in KEYS else None
        before = saved.get(key, default)
        if before != current[key]:
            out.append(f"{key}: the checkpoint has {before!r}, this run has {current[key]!r}")
    return out


def existing_round(folder: Path) -> int | None:
    """The last finished round of the checkpoint in `folder`, or None if there is none."""
    path = checkpoint_path(folder)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            return int(json.loads(bytes(npz[_META]).decode("utf-8"))["round"])
    except Exception:  # noqa: BLE001 - unreadable: still a checkpoint someone may want
        return -1


# --- strategy state <-> JSON + arrays -----------------------------------------------------


def encode(value: Any, arrays: dict[str, np.ndarray], path: str = "state") -> Any:
    """JSON-ready form of `value`; numpy arrays (and ArrayRecords) go into `arrays`.

    Accepts None, bools, numbers, strings, numpy arrays of numbers, ArrayRecords, lists and
    tuples (come back as lists), and dicts with string keys not starting with "__". Raises
    TypeError naming the part (`path`) it cannot store.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, np.bool_):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise TypeError(f"{path}: cannot checkpoint an array of Python objects")
        name = str(len(arrays))
        arrays[name] = value
        return {"__array__": name}
    if isinstance(value, ArrayRecord):
        return {"__arrayrecord__": [[key, encode(value[key].numpy(), arrays, f"{path}.{key}")]
                                    for key in value.keys()]}
    if isinstance(value, Mapping):
        bad = [k for k in value if not isinstance(k, str) or k.startswith("__")]
        if bad:
            raise TypeError(f"{path}: dict keys must be strings not starting with '__', got {bad[:3]}")
        return {key: encode(item, arrays, f"{path}.{key}") for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode(item, arrays, f"{path}[{i}]") for i, item in enumerate(value)]
    raise TypeError(f"{path}: cannot checkpoint a {type(value).__name__}")


def decode(value: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    """Inverse of `encode`."""
    if isinstance(value, dict):
        if set(value) == {"__array__"}:
            return np.asarray(arrays[value["__array__"]])
        if set(value) == {"__arrayrecord__"}:
            return ArrayRecord({key: Array(np.asarray(decode(item, arrays))) for key, item in value["__arrayrecord__"]})
        return {key: decode(item, arrays) for key, item in value.items()}
    if isinstance(value, list):
        return [decode(item, arrays) for item in value]
    return value


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
