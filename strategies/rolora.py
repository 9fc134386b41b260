"""RoLoRA: rounds alternate between training and averaging only B and only A.

Chen et al., "Robust Federated Finetuning of LLMs via Alternating Optimization of LoRA"
(NeurIPS 2025). In a round that trains only one factor, every site shares the other, so
the average of the products is the product of the averages: exact, and each site uploads
half the adapter.
"""

from __future__ import annotations

from .base import LoraFedAvg
from .registry import register


@register("rolora")
class RoLoRA(LoraFedAvg):
    """Size-weighted FedAvg of one factor per round: B in odd rounds, A in even ones.

    B first: PEFT starts B at zero, so a round that trained A alone would see a zero
    gradient (dL/dA = B^T dL/d(BA)) and change nothing.
    """

    sends_every_factor = False  # settings/config.py refuses what this rules out

    def factor_rule(self, server_round: int) -> tuple[str, str]:
        factor = "B" if server_round % 2 == 1 else "A"
        return (factor, factor)
