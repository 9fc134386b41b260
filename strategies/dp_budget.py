"""The privacy budget of Flower's central DP modes (`strategy.dp`), from Google's
`dp-accounting` RDP accountant (docs/threat-model.md, "Differential privacy").

Every mode releases, each round, the mean of the sampled sites' clipped updates plus
Gaussian noise of standard deviation noise-multiplier x clipping-norm / sites sampled: a
Gaussian mechanism with that noise multiplier towards one site's whole update (site-level
DP: it bounds what the global adapter reveals about whether a hospital took part, not about
one note). Adaptive clipping splits the same multiplier between the update and the clipped
count (Andrew et al. 2021), so the total is the same. Sampling is not counted as
amplification (every round is charged as if every site took part): an upper bound. The
multiplier each round is charged at is the one its weights give (`effective_multiplier`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def effective_multiplier(noise_multiplier: float, sampled_sites: int, weights: Sequence[float]) -> float:
    """The noise multiplier a round's release really has towards one site.

    Flower adds noise of std z x C / sampled to the aggregate; the aggregate is a weighted
    mean of updates clipped to C, so one site moves it by at most max(w) x C. The ratio is
    z / (sampled x max(w)): z itself only when every weight is 1 / sampled. Size weighting
    (Fed-MedLoRA) gives the largest site more than that share, and a round that aggregates
    fewer sites than `sampled` gives each more, so both lower the multiplier.
    """
    if not weights or sampled_sites <= 0:
        return noise_multiplier
    return noise_multiplier / (sampled_sites * max(weights))


@dataclass(frozen=True)
class DpBudget:
    noise_multiplier: float
    delta: float
    sampled_sites: int = 0  # Flower divides the noise by it (strategy.dp-num-sampled-sites)

    def epsilon(self, rounds: int) -> float:
        """(epsilon, delta)-DP epsilon after `rounds` rounds at the configured multiplier, as if
        every round weighed its sites equally (inf without noise, 0 before any round). A
        lower bound when weights are unequal: `epsilon_of` takes each round's own."""
        return self.epsilon_of([self.noise_multiplier] * max(rounds, 0))

    def epsilon_of(self, multipliers: Sequence[float]) -> float:
        """epsilon after one Gaussian release per multiplier, composed by the RDP accountant."""
        if not multipliers:
            return 0.0
        if min(multipliers) <= 0:
            return math.inf
        import dp_accounting
        from dp_accounting.rdp import RdpAccountant

        accountant = RdpAccountant()
        for z in multipliers:
            accountant.compose(dp_accounting.GaussianDpEvent(z))
        return float(accountant.get_epsilon(self.delta))
