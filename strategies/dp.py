"""Flower's central-DP wrappers (`strategy.dp`), and which strategies they may wrap.

strategies/compose.py puts the DP wrapper directly around the bare strategy, below the
screening: Flower's wrappers skip the whole round when any reply is an error, so they see
only screened replies, and each reply is screened once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    Strategy,
)

from .base import LoraFedAvg
from .fedmedlora_equal import FedMedLoRAEqual

# `strategy.dp`: Flower's central-DP wrappers, clipping at the coordinator or at the sites.
DP_MODES = ("none", "server-fixed", "server-adaptive", "client-fixed", "client-adaptive")


@dataclass(frozen=True)
class DPSettings:
    """`strategy.dp*` keys: the mode, the Gaussian noise multiplier, the clipping norm (the
    initial one for adaptive clipping) and the number of sites sampled per round."""

    mode: str
    noise_multiplier: float
    clipping_norm: float
    num_sampled_sites: int

    @classmethod
    def from_run_config(cls, cfg: Any) -> DPSettings:
        """0 sampled sites means `strategy.min-sites` (the factory samples at least that many)."""
        return cls(
            mode=cfg.strategy.dp,
            noise_multiplier=float(cfg.strategy.dp_noise_multiplier),
            clipping_norm=float(cfg.strategy.dp_clipping_norm),
            num_sampled_sites=int(cfg.strategy.dp_num_sampled_sites) or int(cfg.strategy.min_sites),
        )


def dp_wrapper(strategy: Strategy, dp: DPSettings) -> Strategy:
    """Flower's DP wrapper for `dp.mode` around `strategy`; ValueError if `strategy` does not
    aggregate by a weighted mean of the updates (`averages_updates`)."""
    if dp.mode == "server-fixed":
        wrapped: Strategy = DifferentialPrivacyServerSideFixedClipping(
            strategy, dp.noise_multiplier, dp.clipping_norm, dp.num_sampled_sites
        )
    elif dp.mode == "client-fixed":
        wrapped = DifferentialPrivacyClientSideFixedClipping(
            strategy, dp.noise_multiplier, dp.clipping_norm, dp.num_sampled_sites
        )
    elif dp.mode == "server-adaptive":
        wrapped = DifferentialPrivacyServerSideAdaptiveClipping(
            strategy, dp.noise_multiplier, dp.num_sampled_sites, initial_clipping_norm=dp.clipping_norm
        )
    elif dp.mode == "client-adaptive":
        wrapped = DifferentialPrivacyClientSideAdaptiveClipping(
            strategy, dp.noise_multiplier, dp.num_sampled_sites, initial_clipping_norm=dp.clipping_norm
        )
    else:
        raise ValueError(f"strategy.dp: {dp.mode!r} is not one of {list(DP_MODES)}")
    if not averages_updates(type(strategy)):
        raise ValueError(f"strategy.dp = {dp.mode!r} cannot wrap {type(strategy).__name__}: Flower's DP noise "
                         "bounds one site's effect on a weighted mean of clipped updates, which it does not compute")
    return wrapped


def averages_updates(cls: type) -> bool:
    """Whether a strategy class returns a weighted mean of the updates with weights that do
    not depend on the updates: Fed-MedLoRA's size shares, equal weights, or Flower's FedAvg
    (FedProx). What Flower's DP noise is calibrated for."""
    if not isinstance(cls, type):
        return False
    weights = getattr(cls, "aggregation_weights", None)
    if weights is not None:  # a LoraFedAvg: its weighting and averaging hooks decide
        return (weights in (LoraFedAvg.aggregation_weights, FedMedLoRAEqual.aggregation_weights)
                and getattr(cls, "weighted_average", None) is LoraFedAvg.weighted_average)
    return issubclass(cls, FedAvg) and cls.aggregate_train is FedAvg.aggregate_train
