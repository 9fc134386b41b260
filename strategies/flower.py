"""Flower's own strategies and DP wrappers behind the screening.

The names registered here are Flower's FedProx, FedAvgM, FedAdam, FedYogi, FedTrimmedAvg,
FedMedian and Krum, each a `ScreenedStrategy` (strategies/screened.py) around the Flower
class, built from `strategy.*` keys. `with_dp` puts one of Flower's DP wrappers between the
screening and the strategy, so DP sees only clean replies (Flower's wrappers skip the whole
round when any reply is an error), and each reply is screened once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from logging import WARNING
from typing import Any, ClassVar

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    Strategy,
)

from .base import LoraFedAvg
from .flower_compat import aggregate_arrayrecords, select_multikrum, valid_train_replies
from .registry import register
from .screened import ScreenedStrategy
from .screening import SiteCandidate

# `strategy.dp`: Flower's central-DP wrappers, clipping at the coordinator or at the sites.
DP_MODES = ("none", "server-fixed", "server-adaptive", "client-fixed", "client-adaptive")

# Server learning rates when `strategy.server-learning-rate` = 0, chosen by the sweep in
# docs/strategies.md ("Server-optimizer defaults"). A round's averaged LoRA update is below
# Flower's tau = 1e-3 in every element (median 2e-4 after 8 local steps at lr 2e-4), so a
# FedAdam or FedYogi step is about 100 * eta * the momentum average of the updates: at eta
# 1e-2 each update is re-applied about 1.8 times over three rounds and both overshoot.
# Flower's FedYogi has no bias correction (FedAdam's scales eta by 0.74, 0.64, 0.58 in rounds
# 1-3), so its eta is lower for about the same steps.
DEFAULT_SERVER_LR = {"fedavgm": 1.0, "fedadam": 5e-3, "fedyogi": 3e-3}

class FlowerLoRA(ScreenedStrategy):
    """A Flower strategy class behind the screening; subclasses set `flower_class`.

    Parameters
    ----------
    expected_shapes : Mapping[str, Sequence[int]] | None (default: None)
        Keys and shapes of the global adapter.
    **flower_kwargs
        Passed to `flower_class` (sampling, record keys and its own parameters).
    """

    flower_class: ClassVar[type[FedAvg]] = FedAvg

    def __init__(self, expected_shapes: Mapping[str, Sequence[int]] | None = None, **flower_kwargs: Any) -> None:
        super().__init__(self.flower_class(**flower_kwargs), expected_shapes)

    @classmethod
    def flower_kwargs(cls, cfg: Mapping[str, Any]) -> dict[str, Any]:
        """The Flower class's own parameters from the run config; none by default."""
        del cfg
        return {}

    @classmethod
    def from_run_config(
        cls,
        cfg: Mapping[str, Any],
        expected_shapes: Mapping[str, Sequence[int]],
        validation_loss: Callable[[dict[str, np.ndarray]], float] | None = None,
        **fedavg_kwargs: Any,
    ) -> FlowerLoRA:
        """Build from the run config (`flower_kwargs`) and the factory's sampling settings."""
        del validation_loss  # none of Flower's strategies scores adapters
        return cls(expected_shapes, **fedavg_kwargs, **cls.flower_kwargs(cfg))


def _server_lr(cfg: Mapping[str, Any], name: str) -> float:
    return float(cfg.strategy.server_learning_rate) or DEFAULT_SERVER_LR[name]


@register("fedprox")
class LoraFedProx(FlowerLoRA):
    """Flower's FedProx: FedAvg at the coordinator; `proximal-mu` sent to every site.

    Sites add mu/2 ||w - w_global||^2 over the adapter to their loss (client_app passes the
    train config's `proximal-mu` to modeling/training.py). Key: `strategy.proximal-mu`.
    """

    flower_class = FedProx
    invariants = ("weights-sum-to-one",)

    @classmethod
    def flower_kwargs(cls, cfg: Mapping[str, Any]) -> dict[str, Any]:
        return {"proximal_mu": float(cfg.strategy.proximal_mu)}


@register("fedavgm")
class LoraFedAvgM(FlowerLoRA):
    """Flower's FedAvgM: server-side SGD with momentum on the averaged update (Hsu et al. 2019).

    Keys: `strategy.server-learning-rate` (0 = Flower's 1.0), `strategy.server-momentum`
    (default 0.5, from the sweep in docs/strategies.md; 0 makes it FedAvg, Hsu et al. use 0.9,
    which overshoots within three rounds here).
    """

    flower_class = FedAvgM

    @classmethod
    def flower_kwargs(cls, cfg: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "server_learning_rate": _server_lr(cfg, "fedavgm"),
            "server_momentum": float(cfg.strategy.server_momentum),
        }


@register("fedadam")
class LoraFedAdam(FlowerLoRA):
    """Flower's FedAdam: a server-side Adam step on the averaged update (Reddi et al. 2020).

    Key: `strategy.server-learning-rate` (eta; 0 = 5e-3, see DEFAULT_SERVER_LR). beta_1 0.9,
    beta_2 0.99, tau 1e-3 are Flower's.
    """

    flower_class = FedAdam

    @classmethod
    def flower_kwargs(cls, cfg: Mapping[str, Any]) -> dict[str, Any]:
        return {"eta": _server_lr(cfg, "fedadam")}


@register("fedyogi")
class LoraFedYogi(FlowerLoRA):
    """Flower's FedYogi: a server-side Yogi step on the averaged update (Reddi et al. 2020).

    Key: `strategy.server-learning-rate` (eta; 0 = 3e-3, see DEFAULT_SERVER_LR). beta_1, beta_2, tau
    are Flower's.
    """

    flower_class = FedYogi

    @classmethod
    def flower_kwargs(cls, cfg: Mapping[str, Any]) -> dict[str, Any]:
        return {"eta": _server_lr(cfg, "fedyogi")}


@register("fedtrimmedavg")
class LoraFedTrimmedAvg(FlowerLoRA):
    """Flower's FedTrimmedAvg: per-coordinate mean after cutting `strategy.trim-beta` of each tail."""

    flower_class = FedTrimmedAvg

    @classmethod
    def flower_kwargs(cls, cfg: Mapping[str, Any]) -> dict[str, Any]:
        return {"beta": float(cfg.strategy.trim_beta)}


@register("fedmedian")
class LoraFedMedian(FlowerLoRA):
    """Flower's FedMedian: the per-coordinate median of the site adapters."""

    flower_class = FedMedian


class _SelectingKrum(Krum):
    """Flower's Krum, remembering which reply it selected (for the report's weights)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.selected: list[int] = []  # indices into the replies of the last round

    def state_dict(self) -> dict[str, Any]:
        """Nothing carries over: `selected` is the last round's choice."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Nothing to restore (see `state_dict`)."""
        del state

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """MultiKrum.aggregate_train with num_nodes_to_select = 1, keeping the choice."""
        valid = valid_train_replies(self, replies)
        self.selected = []
        if not valid:
            return None, None
        contents = [msg.content for msg in valid]
        n, f = len(contents), self.num_malicious_nodes
        if n <= 2 * f + 2:
            log(WARNING, "round %d: Krum with strategy.krum-byzantine = %d needs more than %d sites, "
                "got %d; its Byzantine guarantee does not hold", server_round, f, 2 * f + 2, n)
        chosen = select_multikrum(contents, num_malicious_nodes=f, num_nodes_to_select=self.num_nodes_to_select)
        self.selected = [next(i for i, c in enumerate(contents) if c is pick) for pick in chosen]
        return (
            aggregate_arrayrecords(chosen, self.weighted_by_key),
            self.train_metrics_aggr_fn(chosen, self.weighted_by_key),
        )


@register("krum")
class LoraKrum(FlowerLoRA):
    """Flower's Krum: the one update closest to its n - f - 2 nearest neighbours.

    Key: `strategy.krum-byzantine` (f, the number of malicious sites tolerated; Krum's
    guarantee needs more than 2f + 2 sites). Report weights: 1 for the selected site, 0 otherwise.
    """

    flower_class = _SelectingKrum

    @classmethod
    def flower_kwargs(cls, cfg: Mapping[str, Any]) -> dict[str, Any]:
        return {"num_malicious_nodes": int(cfg.strategy.krum_byzantine)}

    def site_weights(self, candidates: list[SiteCandidate]) -> tuple[str, list[float]]:
        """1 for the update Krum selected, 0 for the others."""
        assert isinstance(self.core, _SelectingKrum)
        selected = set(self.core.selected)
        return "krum selection", [1.0 if i in selected else 0.0 for i in range(len(candidates))]


# --- differential privacy ---------------------------------------------------------------


@dataclass(frozen=True)
class DPSettings:
    """`strategy.dp*` keys: the mode, the Gaussian noise multiplier, the clipping norm (the
    initial one for adaptive clipping) and the number of sites sampled per round."""

    mode: str
    noise_multiplier: float
    clipping_norm: float
    num_sampled_sites: int

    @classmethod
    def from_run_config(cls, cfg: Mapping[str, Any]) -> DPSettings:
        """0 sampled sites means `strategy.min-sites` (the factory samples at least that many)."""
        return cls(
            mode=cfg.strategy.dp,
            noise_multiplier=float(cfg.strategy.dp_noise_multiplier),
            clipping_norm=float(cfg.strategy.dp_clipping_norm),
            num_sampled_sites=int(cfg.strategy.dp_num_sampled_sites) or int(cfg.strategy.min_sites),
        )


def dp_wrapper(strategy: Strategy, dp: DPSettings) -> Strategy:
    """Flower's DP wrapper for `dp.mode` around `strategy`."""
    if dp.mode == "server-fixed":
        return DifferentialPrivacyServerSideFixedClipping(
            strategy, dp.noise_multiplier, dp.clipping_norm, dp.num_sampled_sites
        )
    if dp.mode == "client-fixed":
        return DifferentialPrivacyClientSideFixedClipping(
            strategy, dp.noise_multiplier, dp.clipping_norm, dp.num_sampled_sites
        )
    if dp.mode == "server-adaptive":
        return DifferentialPrivacyServerSideAdaptiveClipping(
            strategy, dp.noise_multiplier, dp.num_sampled_sites, initial_clipping_norm=dp.clipping_norm
        )
    if dp.mode == "client-adaptive":
        return DifferentialPrivacyClientSideAdaptiveClipping(
            strategy, dp.noise_multiplier, dp.num_sampled_sites, initial_clipping_norm=dp.clipping_norm
        )
    raise ValueError(f"strategy.dp: {dp.mode!r} is not one of {list(DP_MODES)}")


def with_dp(
    strategy: Strategy, dp: DPSettings, expected_shapes: Mapping[str, Sequence[int]] | None = None
) -> ScreenedStrategy:
    """`strategy` behind the screening, with Flower's DP wrapper for `dp.mode` between the
    screening and the aggregation (`strategy.dp = "none"`: none).

    A `ScreenedStrategy` gets the DP wrapper around its inner strategy; any other strategy
    is put behind a new `ScreenedStrategy` first. DP strategies keep none of the
    weighted-average invariants.
    """
    screened = strategy if isinstance(strategy, ScreenedStrategy) else ScreenedStrategy(strategy, expected_shapes)
    if dp.mode == "none":
        return screened
    screened.inner = dp_wrapper(screened.inner, dp)
    screened.dp_mode = dp.mode
    screened.invariants = ()
    if not plain_fedavg(screened.core):
        raise ValueError(f"strategy.dp = {dp.mode!r} cannot wrap {type(screened.core).__name__}: Flower's DP noise "
                         "bounds one site's effect on a weighted mean of clipped updates, which it does not compute")
    return screened


def plain_fedavg(strategy: Strategy) -> bool:
    """Whether `strategy` aggregates by FedAvg's weighted average (what Flower's DP assumes)."""
    return averages_updates(type(strategy))


def averages_updates(cls: type) -> bool:
    """Whether a strategy class returns a weighted mean of the updates with weights that do
    not depend on the updates: Fed-MedLoRA's size shares, equal weights, or Flower's FedAvg
    (FedProx). What Flower's DP noise is calibrated for."""
    from .fedmedlora_equal import FedMedLoRAEqual

    if not isinstance(cls, type):
        return False
    if issubclass(cls, LoraFedAvg):
        return (cls.aggregation_weights in (LoraFedAvg.aggregation_weights, FedMedLoRAEqual.aggregation_weights)
                and cls.weighted_average is LoraFedAvg.weighted_average)
    if issubclass(cls, FlowerLoRA):  # a registered Flower class behind the screening
        cls = cls.flower_class
    return issubclass(cls, FedAvg) and cls.aggregate_train is FedAvg.aggregate_train
