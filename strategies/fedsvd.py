"""FedSVD: the sites train B only; each round the coordinator refactorises B̄A by SVD.

Lee et al., "FedSVD: Adaptive Orthogonalization for Private Federated Learning with LoRA"
(NeurIPS 2025). As in FFA-LoRA every site shares A, so B̄A is the exact average of the
updates; the refactorisation B̄A = U S V^T then hands the sites a new A = V^T with
orthonormal rows (and B = U S), so A adapts from round to round instead of staying at its
random start, while B, the only factor a site sends, stays well conditioned under DP noise.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord

from .base import LoraFedAvg
from .lora_algebra import lora_modules
from .registry import register
from .screening import SiteCandidate


@register("fedsvd")
class FedSVD(LoraFedAvg):
    """Size-weighted FedAvg of B, then B̄A refactorised as (U S)(V^T) per LoRA module.

    The product, and so the model, is exactly B̄A; only its factorisation changes. Computed
    from the factors (a QR of A^T and the SVD of the out x r matrix B̄ R^T), never the
    out x in product.
    """

    sends_every_factor = False  # settings/config.py refuses what this rules out

    # The returned tensors are not a weighted average of the replies (A is new each round).
    invariants: tuple[str, ...] = ()

    def factor_rule(self, server_round: int) -> tuple[str, str]:
        del server_round
        return ("B", "B")

    def weighted_average(self, accepted: list[SiteCandidate], weights: list[float]) -> ArrayRecord:
        averaged = super().weighted_average(accepted, weights)
        out = {key: averaged[key].numpy() for key in averaged.keys()}
        for module in lora_modules(self._require_expected()):
            out[module.b_key], out[module.a_key] = refactorise(out[module.b_key], out[module.a_key])
        return ArrayRecord({key: Array(np.asarray(value, np.float32)) for key, value in out.items()})


def refactorise(b: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(U S, V^T) with U S V^T = B A, V^T's rows orthonormal, singular values descending.

    A^T = Q R (in x r, r x r), so B A = (B R^T) Q^T; the SVD B R^T = U S W^T gives
    B A = U S (Q W)^T. Float64, returned as float64.
    """
    q, r = np.linalg.qr(np.asarray(a, np.float64).T)
    u, s, wt = np.linalg.svd(np.asarray(b, np.float64) @ r.T, full_matrices=False)
    return u * s, wt @ q.T
