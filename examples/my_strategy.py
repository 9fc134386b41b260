"""Example plugin strategy: loss-inverse weighting.

Select it with `strategy.name = "examples.my_strategy:LossInverse"`; no registration needed
(or decorate the class with `@strategies.register("loss-inverse")` and import the module
from the ServerApp). It runs behind the same screening and update-norm bound as every
strategy, reuses LoraFedAvg's averaging and only changes the weights: w_k proportional to
1 / train-loss_k, so sites whose adapters fit their own data better count more. A site that reports no usable `train-loss` is rejected.
"""

from __future__ import annotations

import math
from logging import INFO

from flwr.common.logger import log

from strategies import LoraFedAvg, SiteCandidate

LOSS_KEY = "train-loss"  # the ClientApp's training metric (client_app/handlers.py)


class LossInverse(LoraFedAvg):
    """FedAvg over LoRA adapters with weights proportional to 1 / train-loss."""

    # Weights still sum to one and identical adapters average to themselves.
    invariants = ("weights-sum-to-one",)

    def aggregation_weights(self, server_round: int, accepted: list[SiteCandidate]) -> list[float]:
        """w_k = (1 / L_k) / sum_j (1 / L_j); a missing, non-finite or non-positive L_k rejects site k."""
        inverse = []
        for candidate in accepted:
            loss = candidate.metrics.get(LOSS_KEY)
            if isinstance(loss, (int, float)) and not isinstance(loss, bool) and math.isfinite(loss) and loss > 0:
                inverse.append(1.0 / loss)
            else:
                inverse.append(0.0)
                self.reject(candidate, f"'{LOSS_KEY}' must be a number > 0 for loss-inverse weighting, got {loss!r}")
        total = math.fsum(inverse)
        weights = [v / total if total > 0 else 0.0 for v in inverse]
        for candidate, weight in zip(accepted, weights, strict=True):
            if candidate.rejected is None:
                log(INFO, "round %d: site %s train-loss %.4f -> weight %.4f",
                    server_round, candidate.site, candidate.metrics[LOSS_KEY], weight)
        return weights
