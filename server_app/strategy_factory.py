"""Run config -> strategy object: the named bare strategy inside the wrappers of
strategies/compose.py (screening, update bound, DP, report, resume, secure aggregation)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import numpy as np

from settings.config import ConfigError, RunConfig, StrategySection
from strategies.compose import WrapperSettings, compose
from strategies.registry import STRATEGIES, settings_keys, strategy_class
from strategies.resume import Resume

log = logging.getLogger(__name__)

# Read only with a DP mode; set without one, they are ignored (and said so).
DP_FIELDS = ("dp_noise_multiplier", "dp_clipping_norm", "dp_num_sampled_sites")


def build_strategy(
    cfg: RunConfig,
    expected_shapes: Mapping[str, tuple[int, ...]],
    validation_loss: Callable[[dict[str, np.ndarray]], float] | None,
) -> Resume:
    """Instantiate `strategy.name` from a validated run config (settings.config.validate).

    A strategy class may define `from_run_config(cfg, expected_shapes, validation_loss,
    **sampling)` to read its own keys; otherwise it is built with FedAvg's keyword arguments.
    `compose` then puts it inside the wrappers the run config asks for (`strategy.min-sites`,
    the sites that must be connected before a round starts, is also the usable replies a
    round needs, else the run stops). A bad value raises ConfigError naming the key.
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
        composed = compose(strategy, WrapperSettings.from_run_config(cfg, expected_shapes))
    except ConfigError:
        raise
    except ValueError as err:  # our classes name the key; Flower's say what is wrong
        raise ConfigError(f"strategy.name = {name!r}: {err}") from err
    _warn_unused_keys(cfg, name)
    return composed


def _warn_unused_keys(cfg: RunConfig, name: str) -> None:
    """A key that only other strategies read (their `Settings`), or a DP key without DP,
    changed from its default: it has no effect, which the log says."""
    if name not in STRATEGIES:
        return  # a plugin may read any key
    others = {f for cls in STRATEGIES.values() for f in settings_keys(cls)} - set(settings_keys(STRATEGIES[name]))
    unused = sorted(others) + (list(DP_FIELDS) if cfg.strategy.dp == "none" else [])
    defaults = StrategySection()
    for field in unused:
        value = getattr(cfg.strategy, field)
        if value != getattr(defaults, field):
            log.warning("strategy.%s = %r has no effect with strategy.name = %r (strategy.dp = %r)",
                        field.replace("_", "-"), value, name, cfg.strategy.dp)
