"""Run config -> strategy object: the named strategy, its screening, update bound and DP."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from settings.config import KEYS, ConfigError, RunConfig
from strategies.flower import DPSettings, with_dp
from strategies.registry import STRATEGIES, strategy_class
from strategies.screened import ScreenedStrategy

log = logging.getLogger(__name__)

# Keys that only some registered strategies read; set for another, they are ignored (and said so).
STRATEGY_KEYS: dict[str, tuple[str, ...]] = {
    "strategy.temperature": ("fedmedlora-plus",),
    "strategy.size-weighted": ("fedmedlora-plus",),
    "strategy.validation-instances": ("fedmedlora-plus",),
    "strategy.validation": ("fedmedlora-plus",),
    "strategy.server-learning-rate": ("fedavgm", "fedadam", "fedyogi"),
    "strategy.server-momentum": ("fedavgm",),
    "strategy.trim-beta": ("fedtrimmedavg",),
    "strategy.krum-byzantine": ("krum",),
}
DP_KEYS = ("strategy.dp-noise-multiplier", "strategy.dp-clipping-norm", "strategy.dp-num-sampled-sites")


def build_strategy(
    cfg: RunConfig,
    expected_shapes: Mapping[str, tuple[int, ...]],
    validation_loss: Callable[[dict[str, np.ndarray]], float] | None,
) -> ScreenedStrategy:
    """Instantiate `strategy.name` from a validated run config (settings.config.validate).

    A strategy class may define `from_run_config(cfg, expected_shapes, validation_loss,
    **sampling)` to read its own keys; otherwise it is built with FedAvg's keyword arguments.
    Every strategy is put behind the one screening wrapper (`ScreenedStrategy`; the Flower
    classes registered in strategies/flower.py are one already). `strategy.dp` puts Flower's
    DP wrapper between the two, and the screening gets `strategy.max-update-norm`, `strategy.update-norm-action`,
    `strategy.proximal-mu` and `strategy.min-sites` (the sites that must be connected before
    a round starts are also the usable replies a round needs, else the run stops). A bad
    value raises ConfigError naming the key.
    """
    name = cfg.strategy.name
    try:
        cls = strategy_class(name)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    min_sites = cfg.strategy.min_sites
    sampling = {
        "fraction_train": cfg.strategy.fraction_train,
        "fraction_evaluate": 1.0,
        "min_train_nodes": min_sites,
        "min_evaluate_nodes": min_sites,
        "min_available_nodes": min_sites,
    }
    try:
        if hasattr(cls, "from_run_config"):
            strategy = cls.from_run_config(cfg, expected_shapes, validation_loss, **sampling)
        else:
            strategy = cls(**sampling)
        strategy = with_dp(strategy, DPSettings.from_run_config(cfg), expected_shapes)
        strategy.configure_screening(
            max_update_norm=cfg.strategy.max_update_norm,
            update_norm_action=cfg.strategy.update_norm_action,
            proximal_mu=cfg.strategy.proximal_mu,
            min_sites=min_sites,
            aggregation_error=cfg.strategy.aggregation_error,
        )
    except ConfigError:
        raise
    except ValueError as err:  # our classes name the key; Flower's say what is wrong
        raise ConfigError(f"strategy.name = {name!r}: {err}") from err
    _warn_unused_keys(cfg, name)
    return strategy


def _warn_unused_keys(cfg: RunConfig, name: str) -> None:
    """A strategy-specific key changed from its default but not read by this strategy."""
    if name not in STRATEGIES:
        return  # a plugin may read any key
    unused = [k for k, users in STRATEGY_KEYS.items() if name not in users and cfg.value(k) != KEYS[k].default]
    if cfg.strategy.dp == "none":
        unused += [k for k in DP_KEYS if cfg.value(k) != KEYS[k].default]
    for key in unused:
        log.warning("%s = %r has no effect with strategy.name = %r (strategy.dp = %r)",
                    key, cfg.value(key), name, cfg.strategy.dp)
