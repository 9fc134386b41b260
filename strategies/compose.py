"""compose: a bare strategy inside the wrappers every run puts around it, in one fixed order.

```
Resume               start(first_round=...): Flower's loop, continued at a later round
  ScreenedStrategy   per-reply checks, sites that did not answer, strategy.min-sites
    SecureAggregation   strategy.secure-aggregation: train exchanges as SecAgg+
      NormBound         strategy.max-update-norm
        ProximalTerm    strategy.proximal-mu in the train instructions
          RoundReporting   the report's weights, aggregation error, float32 output check
            [Flower DP wrapper]  strategy.dp
              strategy         the bare strategy (registered, a plugin or one of Flower's)
```

Why this order: the screening is above everything that reads an update, so each reply is
checked once and Flower's DP wrappers (which skip a round with an error reply) see only
clean ones; its Grid (watching where instructions went) sits above the SecAgg+ Grid; the
norm bound measures what the sites sent; the report sits right above the aggregation (and
its DP noise) to see exactly what it was given and returned; `Resume` is outermost because
its `start` runs the loop over the whole stack. The wrappers share one `RoundReports`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flwr.serverapp.strategy import Strategy

from . import core_hooks
from .clipping import UPDATE_NORM_ACTIONS
from .dp import DPSettings, dp_wrapper
from .norm_bound import NormBound
from .proximal import ProximalTerm
from .reporting import RoundReporting
from .resume import Resume
from .round_report import RoundReports
from .screened import ScreenedStrategy
from .secure_aggregation import SecureAggregation


@dataclass(frozen=True)
class WrapperSettings:
    """What the wrappers are set to; the defaults add nothing but the screening and the report."""

    min_sites: int = 0  # strategy.min-sites; 0 = no minimum
    max_update_norm: float = 0.0  # strategy.max-update-norm; 0 = no bound
    update_norm_action: str = "clip"  # strategy.update-norm-action
    proximal_mu: float = 0.0  # strategy.proximal-mu; 0 = not sent
    aggregation_error: bool = True  # strategy.aggregation-error
    dp: DPSettings | None = None  # strategy.dp*; None or mode "none" = no DP
    secagg: tuple[float, int] | None = None  # (secagg-clipping-range, secagg-max-weight) with secure aggregation
    expected_shapes: Mapping[str, Sequence[int]] | None = None  # else the strategy's, else round 1's adapter

    def __post_init__(self) -> None:
        if isinstance(self.max_update_norm, bool) or not (math.isfinite(self.max_update_norm)
                                                          and self.max_update_norm >= 0):
            raise ValueError(f"strategy.max-update-norm: expected a number >= 0, got {self.max_update_norm!r}")
        if self.update_norm_action not in UPDATE_NORM_ACTIONS:
            raise ValueError(f"strategy.update-norm-action: {self.update_norm_action!r} is not one of "
                             f"{list(UPDATE_NORM_ACTIONS)}")
        if isinstance(self.proximal_mu, bool) or not (math.isfinite(self.proximal_mu) and self.proximal_mu >= 0):
            raise ValueError(f"strategy.proximal-mu: expected a number >= 0, got {self.proximal_mu!r}")

    @classmethod
    def from_run_config(cls, cfg: Any, expected_shapes: Mapping[str, Sequence[int]] | None = None
                        ) -> WrapperSettings:
        """From the validated run config (settings.config.validate)."""
        return cls(
            min_sites=cfg.strategy.min_sites,
            max_update_norm=cfg.strategy.max_update_norm,
            update_norm_action=cfg.strategy.update_norm_action,
            proximal_mu=cfg.strategy.proximal_mu,
            aggregation_error=cfg.strategy.aggregation_error,
            dp=DPSettings.from_run_config(cfg),
            secagg=((cfg.strategy.secagg_clipping_range, cfg.strategy.secagg_max_weight)
                    if cfg.strategy.secure_aggregation else None),
            expected_shapes=expected_shapes,
        )


def compose(strategy: Strategy, settings: WrapperSettings | None = None) -> Resume:
    """`strategy` inside the wrappers `settings` asks for, in the order of the module
    docstring; ValueError if a setting does not fit the strategy (DP around a strategy that
    is not a weighted mean of the updates)."""
    settings = settings if settings is not None else WrapperSettings()
    core = strategy
    reports = RoundReports()
    dp_mode = settings.dp.mode if settings.dp is not None else "none"
    if dp_mode != "none":
        assert settings.dp is not None
        strategy = dp_wrapper(strategy, settings.dp)
    strategy = RoundReporting(strategy, reports, aggregation_error=settings.aggregation_error, dp_mode=dp_mode)
    if settings.proximal_mu > 0:
        strategy = ProximalTerm(strategy, settings.proximal_mu)
    if settings.max_update_norm > 0:
        strategy = NormBound(strategy, reports, settings.max_update_norm, settings.update_norm_action)
    if settings.secagg is not None:
        strategy = SecureAggregation(strategy, *settings.secagg)
    shapes = settings.expected_shapes if settings.expected_shapes is not None else core_hooks.expected_shapes(core)
    strategy = ScreenedStrategy(strategy, reports, shapes, settings.min_sites)
    return Resume(strategy)
