"""Fed-MedLoRA with equal site weights: the reference point that shows what weighting by
size (Fed-MedLoRA) and by validation loss (Fed-MedLoRA+) each change."""

from __future__ import annotations

from .base import LoraFedAvg
from .registry import register
from .screening import SiteCandidate


@register("fedmedlora-equal")
class FedMedLoRAEqual(LoraFedAvg):
    """FedAvg over the LoRA A and B tensors with every accepted site weighted 1/K, however
    many training instances it has. Where one site holds most of the data, size weighting
    lets it dominate the global adapter; this keeps the small sites' share (see
    docs/strategies.md)."""

    def aggregation_weights(self, server_round: int, accepted: list[SiteCandidate]) -> list[float]:
        return [1.0 / len(accepted)] * len(accepted)
