"""The privacy budget of Flower's central DP modes (`strategy.dp`), from Google's
`dp-accounting` RDP accountant (docs/threat-model.md, "Differential privacy").

Every mode releases, each round, the mean of the sampled sites' clipped updates plus
Gaussian noise of standard deviation noise-multiplier x clipping-norm / sites sampled: a
Gaussian mechanism with that noise multiplier towards one site's whole update (site-level
DP: it bounds what the global adapter reveals about whether a hospital took part, not about
one note). Adaptive clipping splits the same multiplier between the update and the clipped
count (Andrew et al. 2021), so the total is the same. Sampling is not counted as
amplification (every round is charged as if every site took part): an upper bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class DpBudget:
    noise_multiplier: float
    delta: float

    def epsilon(self, rounds: int) -> float:
        """(epsilon, delta)-DP epsilon after `rounds` rounds (inf without noise, 0 before any)."""
        if rounds <= 0:
            return 0.0
        if self.noise_multiplier <= 0:
            return math.inf
        import dp_accounting
        from dp_accounting.rdp import RdpAccountant

        accountant = RdpAccountant()
        accountant.compose(dp_accounting.GaussianDpEvent(self.noise_multiplier), rounds)
        return float(accountant.get_epsilon(self.delta))
