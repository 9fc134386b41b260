"""FFA-LoRA: A frozen at its shared random start; the sites train and send only B.

Sun, Qin, Zhang and Ding, "Improving LoRA in Privacy-preserving Federated Learning"
(ICLR 2024). With A the same at every site, sum_k p_k B_k A = (sum_k p_k B_k) A: averaging
is exact (aggregation error 0), and each site uploads half the adapter.
"""

from __future__ import annotations

from .base import LoraFedAvg
from .registry import register


@register("ffa-lora")
class FFALoRA(LoraFedAvg):
    """Size-weighted FedAvg of B; A stays the global adapter's initial random A.

    Every round's instructions say "train B, send B" (`factor_rule`); the ClientApp freezes
    A (client_app/factors.py) and replies with the B tensors only. The coordinator fills A in
    from the adapter it sent, so the averaged A is the shared start, unchanged.
    """

    sends_every_factor = False  # settings/config.py refuses what this rules out

    def factor_rule(self, server_round: int) -> tuple[str, str]:
        del server_round
        return ("B", "B")
