"""Fed-MedLoRA+: adapters weighted by the coordinator's validation loss.

Li et al. 2026, "A Federated and Parameter-Efficient Framework for Large Language Model
Training in Medicine" (arXiv 2601.22124).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from logging import INFO
from typing import Any

import numpy as np
from flwr.common.logger import log

from .base import LoraFedAvg, SiteCandidate
from .registry import register


@register("fedmedlora-plus")
class FedMedLoRAPlus(LoraFedAvg):
    """Fed-MedLoRA+ (Li et al. 2026, arXiv 2601.22124).

    The coordinator scores each site's candidate adapter on a validation set it holds,
    giving L_k (mean cross-entropy per answer token), and averages the adapters with
    w_k proportional to exp((1 - L_k) / temperature), normalised: softmax(-L_k / T). With
    temperature 1 and no size term this is the authors' exp(1 - L_k). A site whose L_k is
    not finite is rejected. The losses and weights are kept in
    `last_train_report.extra["validation-loss"]` and `["validation-weight"]`.

    Parameters
    ----------
    score_fn : Callable[[dict[str, np.ndarray]], float]
        Returns L_k for one candidate adapter (same keys and shapes as the global one).
    temperature : float (default: 1.0)
        T in exp((1 - L_k) / T); larger values flatten the weights. Must be > 0.
    size_weighted : bool (default: False)
        Also multiply each weight by the site's `num-examples` n_k.
    expected_shapes : Mapping[str, Sequence[int]] | None (default: None)
        Keys and shapes of the global adapter (see `LoraFedAvg`).
    **fedavg_kwargs
        Passed to FedAvg (sampling and record keys).
    """

    def __init__(
        self,
        score_fn: Callable[[dict[str, np.ndarray]], float],
        temperature: float = 1.0,
        size_weighted: bool = False,
        expected_shapes: Mapping[str, Sequence[int]] | None = None,
        **fedavg_kwargs: Any,
    ) -> None:
        if not callable(score_fn):
            raise TypeError(f"score_fn must be callable, got {score_fn!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
            raise ValueError(f"strategy.temperature: expected a number > 0, got {temperature!r}")
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"strategy.temperature: expected a number > 0, got {temperature!r}")
        super().__init__(expected_shapes=expected_shapes, **fedavg_kwargs)
        self.score_fn = score_fn
        self.temperature = float(temperature)
        self.size_weighted = bool(size_weighted)

    @classmethod
    def from_run_config(
        cls,
        cfg: Mapping[str, Any],
        expected_shapes: Mapping[str, Sequence[int]],
        validation_loss: Callable[[dict[str, np.ndarray]], float] | None = None,
        **fedavg_kwargs: Any,
    ) -> FedMedLoRAPlus:
        """Build from the run config: `strategy.temperature`, `strategy.size-weighted`."""
        if validation_loss is None:
            raise ValueError("strategy.name: fedmedlora-plus needs the coordinator's validation loss")
        return cls(
            score_fn=validation_loss,
            temperature=cfg.get("strategy.temperature", 1.0),
            size_weighted=cfg.get("strategy.size-weighted", False),
            expected_shapes=expected_shapes,
            **fedavg_kwargs,
        )

    def summary(self) -> None:
        """Log summary configuration of the strategy."""
        super().summary()
        log(INFO, "\t└──> Validation weighting: temperature %g, size-weighted %s",
            self.temperature, self.size_weighted)

    def aggregation_weights(self, server_round: int, accepted: list[SiteCandidate]) -> list[float]:
        """w_k proportional to exp((1 - L_k) / T) [* n_k]; non-finite L_k rejects the site."""
        losses: list[float | None] = []
        for candidate in accepted:
            loss = float(self.score_fn(candidate.state))
            if math.isfinite(loss):
                losses.append(loss)
            else:
                losses.append(None)
                self.reject(candidate, f"validation loss is not finite ({loss})")

        # Log-weights; subtracting the largest keeps exp() in range for any losses.
        exponents = {
            i: (1.0 - loss) / self.temperature
            + (math.log(accepted[i].num_examples) if self.size_weighted else 0.0)
            for i, loss in enumerate(losses)
            if loss is not None
        }
        weights = [0.0] * len(accepted)
        if exponents:
            top = max(exponents.values())
            unnormalised = {i: math.exp(e - top) for i, e in exponents.items()}
            total = math.fsum(unnormalised.values())
            for i, value in unnormalised.items():
                weights[i] = value / total

        report = self.last_train_report
        extra = report.extra if report is not None else {}
        extra["validation-loss"] = {}
        extra["validation-weight"] = {}
        extra["temperature"] = self.temperature
        extra["size-weighted"] = self.size_weighted
        for i, candidate in enumerate(accepted):
            if losses[i] is None:
                continue
            extra["validation-loss"][candidate.site] = losses[i]
            extra["validation-weight"][candidate.site] = weights[i]
            log(INFO, "round %d: site %s validation loss %.4f -> weight %.4f",
                server_round, candidate.site, losses[i], weights[i])
        return weights
