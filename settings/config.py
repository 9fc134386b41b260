"""The run configuration: every knob, its type, default and valid values, in one table.

`pyproject.toml`'s `[tool.flwr.app.config]` holds the defaults that Flower distributes;
this table validates what arrives (from there, `--run-config`, or a CLI) before any
work starts, so a typo stops a run with the valid choices listed.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from clinical_ie.instances import DEFAULT_RE_MODE, RE_MODES
from modeling.base import DTYPE_CHOICES, EMBEDDED_DEFAULT, QUANTIZATION_CHOICES
from modeling.lora import PAPER_TARGET_MODULES, LoraSettings
from modeling.training import SCHEDULER_CHOICES, TrainSettings
from strategies.clipping import UPDATE_NORM_ACTIONS
from strategies.fedmedlora_plus import VALIDATION_MODES
from strategies.flower import DP_MODES
from wire.transport import ENCODINGS


@dataclass(frozen=True)
class Key:
    type: type
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None


KEYS: dict[str, Key] = {
    "num-server-rounds": Key(int, 3, "federated rounds"),
    "output-dir": Key(str, "outputs", "folder for run outputs (resolved to an absolute path)"),
    "run-name": Key(str, "", "name of this run's folder under output-dir; empty = date and time"),
    "resume": Key(bool, False, "continue the run in output-dir/run-name from its last finished round "
                  "(its checkpoint.npz); needs run-name"),
    "seed": Key(int, 0, "seed of the initial adapter and data order"),
    "model.name": Key(str, EMBEDDED_DEFAULT, "base model: the embedded default, a checkpoint folder or a Hub id"),
    "model.dtype": Key(str, "auto", "compute dtype; auto = bf16/fp16 on CUDA, fp32 on CPU", DTYPE_CHOICES),
    "quantization": Key(str, "auto", "base weights: auto = 4bit on CUDA, none on CPU", QUANTIZATION_CHOICES),
    "lora.r": Key(int, 16, "LoRA rank"),
    "lora.alpha": Key(int, 64, "LoRA alpha"),
    "lora.dropout": Key(float, 0.05, "LoRA dropout"),
    "lora.target-modules": Key(str, ",".join(PAPER_TARGET_MODULES), "comma-separated module names"),
    "train.learning-rate": Key(float, 2e-4, "peak learning rate"),
    "train.batch-size": Key(int, 4, "instances per step"),
    "train.local-epochs": Key(float, 2.0, "local epochs per round"),
    "train.max-steps": Key(int, 12, "cap on local steps per round; 0 = no cap"),
    "train.warmup-ratio": Key(float, 0.05, "share of all steps spent warming up"),
    "train.lr-scheduler": Key(str, "cosine", "learning-rate schedule across all rounds", SCHEDULER_CHOICES),
    "train.max-grad-norm": Key(float, 1.0, "gradient clipping; 0 = none"),
    "train.max-length": Key(int, 512, "longest instance in tokens; longer ones are dropped"),
    "strategy.name": Key(str, "fedmedlora", "aggregation strategy: a registered name or package.module:Class"),
    "strategy.temperature": Key(float, 1.0, "Fed-MedLoRA+: weights exp((1 - L_k) / T)"),
    "strategy.size-weighted": Key(bool, False, "Fed-MedLoRA+: also multiply weights by n_k"),
    "strategy.validation": Key(str, "coordinator", "Fed-MedLoRA+: who computes L_k: the coordinator on "
                               "its validation set, or every site on its own (K adapters down per site)",
                               VALIDATION_MODES),
    "strategy.validation-instances": Key(int, 64, "Fed-MedLoRA+ coordinator mode: validation instances L_k is computed on, chosen by hash; 0 = all "
                                          "(default: docs/architecture.md, \"Coordinator scoring\")"),
    "strategy.exact-rank": Key(str, "", "exact: rank of the global adapter, an integer or 'full'; empty = lora.r"),
    "strategy.min-sites": Key(int, 3, "sites that must be connected and reply for a round"),
    "strategy.fraction-train": Key(float, 1.0, "share of connected sites sampled per round"),
    "strategy.round-timeout": Key(float, 3600.0, "seconds to wait for replies in a round"),
    "strategy.proximal-mu": Key(float, 0.0, "FedProx term mu/2 ||w - w_global||^2 at every site (any strategy); 0 = off"),
    "strategy.server-learning-rate": Key(float, 0.0, "fedavgm/fedadam/fedyogi server step; 0 = default (1.0 / 1e-2 / 1e-2)"),
    "strategy.server-momentum": Key(float, 0.0, "fedavgm server momentum in [0, 1); 0 = plain FedAvg, Hsu et al. use 0.9"),
    "strategy.trim-beta": Key(float, 0.2, "fedtrimmedavg: share cut from each tail, in [0, 0.5)"),
    "strategy.krum-byzantine": Key(int, 0, "krum: malicious sites tolerated (needs more than 2f + 2 sites)"),
    "strategy.max-update-norm": Key(float, 0.0, "bound on a site's ||B_k A_k - B A|| summed over modules; 0 = off"),
    "strategy.update-norm-action": Key(str, "clip", "update over the bound: scale it toward the global, or reject it", UPDATE_NORM_ACTIONS),
    "strategy.dp": Key(str, "none", "Flower's central DP: clipping at the coordinator or the sites, fixed or adaptive", DP_MODES),
    "strategy.dp-noise-multiplier": Key(float, 1.0, "DP: noise std = multiplier x clipping norm / sites sampled"),
    "strategy.dp-clipping-norm": Key(float, 1.0, "DP: clipping norm of the A/B update (adaptive: the initial one)"),
    "strategy.dp-num-sampled-sites": Key(int, 0, "DP: sites sampled per round; 0 = strategy.min-sites"),
    "transport.encoding": Key(str, "float32", "adapter tensors on the wire, both directions: float32, "
                              "float16 (half the bytes) or int8 (a quarter, one scale per tensor)", ENCODINGS),
    "data.root": Key(str, "", "folder holding one sub-folder per site; empty = the generated demo corpus"),
    "data.sites": Key(str, "site-a,site-b,site-c", "simulation: site folder for each partition-id"),
    "data.server-validation": Key(str, "", "coordinator's validation folder; empty = demo coordinator set"),
    "data.tasks": Key(str, "ner,re", "instance kinds trained and scored: ner, re, or both (multi-task)"),
    "data.re-mode": Key(str, DEFAULT_RE_MODE, "relation instances: given-entities = the sentence's entities "
                        "listed, relations answered as pairs of their numbers (evaluation also scores "
                        "entity extraction then relations end to end); end-to-end = the model copies "
                        "both argument texts", RE_MODES),
    "data.max-train-instances": Key(int, 0, "cap on training instances per site; 0 = all"),
    "eval.max-instances": Key(int, 16, "validation instances scored by generation per evaluation; 0 = all"),
    "eval.max-new-tokens": Key(int, 64, "generation budget per answer"),
    "eval.batch-size": Key(int, 16, "prompts generated together"),
}


class ConfigError(ValueError):
    pass


def _coerce(key: str, value: Any, spec: Key) -> Any:
    if spec.type is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if spec.type is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if spec.type is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, spec.type) or isinstance(value, bool):
        raise ConfigError(f"{key}: expected {spec.type.__name__}, got {value!r} ({type(value).__name__})")
    return value


def validate(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """Check keys, types and choices; return the full config with defaults filled in."""
    unknown = sorted(set(run_config) - set(KEYS))
    if unknown:
        close = {k: difflib.get_close_matches(k, list(KEYS), n=1) for k in unknown}
        hints = "; ".join(f"{k!r}: did you mean {c[0]!r}?" for k, c in close.items() if c)
        raise ConfigError(f"unknown config key(s) {unknown}{f' ({hints})' if hints else ''}; "
                          f"valid keys are {sorted(KEYS)}")
    values = {}
    for key, spec in KEYS.items():
        value = _coerce(key, run_config.get(key, spec.default), spec)
        if spec.choices is not None and value not in spec.choices:
            raise ConfigError(f"{key}: {value!r} is not one of {list(spec.choices)}")
        values[key] = value
    if values["num-server-rounds"] < 1:
        raise ConfigError("num-server-rounds: expected an integer >= 1")
    if values["resume"] and not values["run-name"].strip():
        raise ConfigError("resume = true needs run-name: the name of the run folder under output-dir to continue")
    if values["strategy.min-sites"] < 1:
        raise ConfigError("strategy.min-sites: expected an integer >= 1")
    if not 0 < values["strategy.fraction-train"] <= 1:
        raise ConfigError("strategy.fraction-train: expected a number in (0, 1]")
    if values["strategy.temperature"] <= 0:
        raise ConfigError("strategy.temperature: expected a number > 0")
    _check_strategy_numbers(values)
    if values["strategy.dp"].startswith("client-") and values["transport.encoding"] != "float32":
        # Flower's client-side clipping mod reads the arrays a site receives and returns, which
        # would be the encoded ones; clipping and noise already bound what rounding could change.
        raise ConfigError(f"transport.encoding: {values['transport.encoding']!r} cannot be combined with "
                          f"strategy.dp = {values['strategy.dp']!r}; use transport.encoding = 'float32' "
                          "or a server-side DP mode")
    for key in ("eval.max-instances", "data.max-train-instances"):
        if values[key] < 0:
            raise ConfigError(f"{key}: expected an integer >= 0")
    tasks = [t.strip() for t in values["data.tasks"].split(",") if t.strip()]
    if not tasks or any(t not in ("ner", "re") for t in tasks):
        raise ConfigError(f"data.tasks: {values['data.tasks']!r}: expected 'ner', 're' or 'ner,re'")
    _check_strategy_name(values["strategy.name"])
    # Constructing the settings objects runs their own range checks.
    lora_settings(values)
    train_settings(values)
    return values


def _check_strategy_numbers(values: Mapping[str, Any]) -> None:
    """Ranges of the strategy, update-bound and DP keys (math.isfinite also refuses nan)."""
    ranges = {
        "strategy.proximal-mu": (lambda v: v >= 0, "a number >= 0"),
        "strategy.server-learning-rate": (lambda v: v >= 0, "a number >= 0 (0 = the strategy's default)"),
        "strategy.server-momentum": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
        "strategy.trim-beta": (lambda v: 0 <= v < 0.5, "a number in [0, 0.5)"),
        "strategy.krum-byzantine": (lambda v: v >= 0, "an integer >= 0"),
        "strategy.validation-instances": (lambda v: v >= 0, "an integer >= 0 (0 = all)"),
        "strategy.max-update-norm": (lambda v: v >= 0, "a number >= 0 (0 = off)"),
        "strategy.dp-noise-multiplier": (lambda v: v >= 0, "a number >= 0"),
        "strategy.dp-clipping-norm": (lambda v: v > 0, "a number > 0"),
        "strategy.dp-num-sampled-sites": (lambda v: v >= 0, "an integer >= 0 (0 = strategy.min-sites)"),
    }
    for key, (ok, expected) in ranges.items():
        if not (math.isfinite(values[key]) and ok(values[key])):
            raise ConfigError(f"{key}: expected {expected}, got {values[key]!r}")
    noise = values["strategy.dp-noise-multiplier"]
    sampled = values["strategy.dp-num-sampled-sites"] or values["strategy.min-sites"]
    # Flower's adaptive clipping spends part of the noise on the clipped count, whose std
    # defaults to sampled / 20; it cannot reach a noise multiplier of twice that.
    if values["strategy.dp"].endswith("-adaptive") and noise >= 2 * sampled / 20:
        raise ConfigError(
            f"strategy.dp-noise-multiplier: {noise} is too large for strategy.dp = "
            f"{values['strategy.dp']!r} with {sampled} sites sampled per round "
            f"(strategy.dp-num-sampled-sites / strategy.min-sites): adaptive clipping needs a "
            f"multiplier < {2 * sampled / 20:g}; use less noise, more sites or fixed clipping"
        )


def _check_strategy_name(name: str) -> None:
    from strategies.registry import strategy_class

    try:
        strategy_class(name)
    except ValueError as err:
        raise ConfigError(str(err)) from err


def lora_settings(cfg: Mapping[str, Any]) -> LoraSettings:
    modules = tuple(m.strip() for m in cfg["lora.target-modules"].split(",") if m.strip())
    try:
        return LoraSettings(
            r=cfg["lora.r"], alpha=cfg["lora.alpha"], dropout=cfg["lora.dropout"], target_modules=modules
        )
    except ValueError as err:
        raise ConfigError(str(err)) from err


def train_settings(cfg: Mapping[str, Any]) -> TrainSettings:
    try:
        return TrainSettings(
            learning_rate=cfg["train.learning-rate"],
            batch_size=cfg["train.batch-size"],
            local_epochs=cfg["train.local-epochs"],
            max_steps=cfg["train.max-steps"],
            warmup_ratio=cfg["train.warmup-ratio"],
            lr_scheduler=cfg["train.lr-scheduler"],
            max_grad_norm=cfg["train.max-grad-norm"],
            max_length=cfg["train.max-length"],
            seed=cfg["seed"],
        )
    except ValueError as err:
        raise ConfigError(str(err)) from err


def tasks(cfg: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(t.strip() for t in cfg["data.tasks"].split(",") if t.strip())


def re_mode(cfg: Mapping[str, Any]) -> str:
    return cfg["data.re-mode"]


def site_names(cfg: Mapping[str, Any]) -> list[str]:
    names = [s.strip() for s in cfg["data.sites"].split(",") if s.strip()]
    if not names:
        raise ConfigError("data.sites: expected at least one site folder name")
    return names
