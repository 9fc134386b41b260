"""Run config -> strategy object."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from strategies.registry import strategy_class


def build_strategy(
    cfg: dict[str, Any],
    expected_shapes: dict[str, tuple[int, ...]],
    validation_loss: Callable[[dict[str, np.ndarray]], float],
):
    """Instantiate `strategy.name` with the sampling settings of the run config.

    A strategy class may define `from_run_config(cfg, expected_shapes, validation_loss)`
    to read its own keys; otherwise it is built with FedAvg's keyword arguments.
    """
    cls = strategy_class(cfg["strategy.name"])
    min_sites = cfg["strategy.min-sites"]
    sampling = {
        "fraction_train": cfg["strategy.fraction-train"],
        "fraction_evaluate": 1.0,
        "min_train_nodes": min_sites,
        "min_evaluate_nodes": min_sites,
        "min_available_nodes": min_sites,
    }
    if hasattr(cls, "from_run_config"):
        return cls.from_run_config(cfg, expected_shapes, validation_loss, **sampling)
    return cls(**sampling)
