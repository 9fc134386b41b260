"""Flower's own strategies, registered by name as bare subclasses built from `strategy.*` keys.

The names registered here are Flower's FedProx, FedAvgM, FedAdam, FedYogi, FedTrimmedAvg,
FedMedian and Krum. Each class is Flower's with `from_run_config` (its parameters from the
run config) and, for Krum, the report's weights (`aggregate_report`); strategies/compose.py
puts it behind the same screening, norm bound and report as every strategy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from logging import WARNING
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp.strategy import FedAdam, FedAvgM, FedMedian, FedProx, FedTrimmedAvg, FedYogi, Krum

from .flower_compat import aggregate_arrayrecords, select_multikrum, valid_train_replies
from .registry import read_settings, register
from .round_report import Aggregate
from .screening import SiteCandidate

# Server learning rates when `strategy.server-learning-rate` = 0, chosen by the sweep in
# docs/strategies.md ("Server-optimizer defaults"). A round's averaged LoRA update is below
# Flower's tau = 1e-3 in every element (median 2e-4 after 8 local steps at lr 2e-4), so a
# FedAdam or FedYogi step is about 100 * eta * the momentum average of the updates: at eta
# 1e-2 each update is re-applied about 1.8 times over three rounds and both overshoot.
# Flower's FedYogi has no bias correction (FedAdam's scales eta by 0.74, 0.64, 0.58 in rounds
# 1-3), so its eta is lower for about the same steps.
DEFAULT_SERVER_LR = {"fedavgm": 1.0, "fedadam": 5e-3, "fedyogi": 3e-3}


class FromRunConfig:
    """Mixin for a Flower class: built from the factory's sampling settings plus its own
    parameters from the run config (`flower_kwargs`)."""

    @classmethod
    def flower_kwargs(cls, cfg: Any) -> dict[str, Any]:
        """The Flower class's own parameters from the run config; none by default."""
        del cfg
        return {}

    @classmethod
    def from_run_config(
        cls,
        cfg: Any,
        expected_shapes: Mapping[str, Sequence[int]],
        validation_loss: Callable[[dict[str, np.ndarray]], float] | None = None,
        **fedavg_kwargs: Any,
    ) -> Any:
        """Build from the run config and the factory's sampling settings (the screening keeps
        the expected shapes; none of Flower's strategies scores adapters)."""
        del expected_shapes, validation_loss
        return cls(**fedavg_kwargs, **cls.flower_kwargs(cfg))


def _server_lr(server_learning_rate: float, name: str) -> float:
    return float(server_learning_rate) or DEFAULT_SERVER_LR[name]


@dataclass(frozen=True)
class ServerStepSettings:
    server_learning_rate: float


@register("fedprox")
class LoraFedProx(FromRunConfig, FedProx):
    """Flower's FedProx: FedAvg at the coordinator; `proximal-mu` sent to every site.

    Sites add mu/2 ||w - w_global||^2 over the adapter to their loss (client_app passes the
    train config's `proximal-mu` to modeling/training.py). Key: `strategy.proximal-mu`.
    """

    invariants = ("weights-sum-to-one",)

    @classmethod
    def flower_kwargs(cls, cfg: Any) -> dict[str, Any]:
        return {"proximal_mu": float(cfg.strategy.proximal_mu)}  # a key every strategy shares


@register("fedavgm")
class LoraFedAvgM(FromRunConfig, FedAvgM):
    """Flower's FedAvgM: server-side SGD with momentum on the averaged update (Hsu et al. 2019).

    Keys: `strategy.server-learning-rate` (0 = Flower's 1.0), `strategy.server-momentum`
    (default 0.5, from the sweep in docs/strategies.md; 0 makes it FedAvg, Hsu et al. use 0.9,
    which overshoots within three rounds here).
    """

    @dataclass(frozen=True)
    class Settings:
        server_learning_rate: float
        server_momentum: float

    @classmethod
    def flower_kwargs(cls, cfg: Any) -> dict[str, Any]:
        settings = read_settings(cls, cfg.strategy)
        return {
            "server_learning_rate": _server_lr(settings.server_learning_rate, "fedavgm"),
            "server_momentum": float(settings.server_momentum),
        }


@register("fedadam")
class LoraFedAdam(FromRunConfig, FedAdam):
    """Flower's FedAdam: a server-side Adam step on the averaged update (Reddi et al. 2020).

    Key: `strategy.server-learning-rate` (eta; 0 = 5e-3, see DEFAULT_SERVER_LR). beta_1 0.9,
    beta_2 0.99, tau 1e-3 are Flower's.
    """

    Settings = ServerStepSettings

    @classmethod
    def flower_kwargs(cls, cfg: Any) -> dict[str, Any]:
        return {"eta": _server_lr(read_settings(cls, cfg.strategy).server_learning_rate, "fedadam")}


@register("fedyogi")
class LoraFedYogi(FromRunConfig, FedYogi):
    """Flower's FedYogi: a server-side Yogi step on the averaged update (Reddi et al. 2020).

    Key: `strategy.server-learning-rate` (eta; 0 = 3e-3, see DEFAULT_SERVER_LR). beta_1, beta_2, tau
    are Flower's.
    """

    Settings = ServerStepSettings

    @classmethod
    def flower_kwargs(cls, cfg: Any) -> dict[str, Any]:
        return {"eta": _server_lr(read_settings(cls, cfg.strategy).server_learning_rate, "fedyogi")}


@register("fedtrimmedavg")
class LoraFedTrimmedAvg(FromRunConfig, FedTrimmedAvg):
    """Flower's FedTrimmedAvg: per-coordinate mean after cutting `strategy.trim-beta` of each tail."""


    @dataclass(frozen=True)
    class Settings:
        trim_beta: float

    @classmethod
    def flower_kwargs(cls, cfg: Any) -> dict[str, Any]:
        return {"beta": float(read_settings(cls, cfg.strategy).trim_beta)}


@register("fedmedian")
class LoraFedMedian(FromRunConfig, FedMedian):
    """Flower's FedMedian: the per-coordinate median of the site adapters."""


@register("krum")
class LoraKrum(FromRunConfig, Krum):
    """Flower's Krum: the one update closest to its n - f - 2 nearest neighbours.

    Key: `strategy.krum-byzantine` (f, the number of malicious sites tolerated; Krum's
    guarantee needs more than 2f + 2 sites). Report weights: 1 for the selected site, 0 otherwise.
    """

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

    @dataclass(frozen=True)
    class Settings:
        krum_byzantine: int

    @classmethod
    def flower_kwargs(cls, cfg: Any) -> dict[str, Any]:
        return {"num_malicious_nodes": int(read_settings(cls, cfg.strategy).krum_byzantine)}

    def aggregate_report(self, server_round: int, candidates: list[SiteCandidate]) -> Aggregate:
        """1 for the update Krum selected, 0 for the others (strategies/core_hooks.py)."""
        selected = set(self.selected)
        return Aggregate(server_round, weights=[(c, 1.0 if i in selected else 0.0) for i, c in enumerate(candidates)],
                         extra={"weights": "krum selection"})
