"""The privacy budget of the DP modes (strategies/dp_budget.py): the accountant's epsilon
against the Gaussian mechanism's RDP bound worked out by hand, the refusal of a run past
strategy.dp-max-epsilon, and the report in metrics.jsonl and summary.json."""

from __future__ import annotations

import math

import pytest

from settings.config import ConfigError, validate
from strategies.dp_budget import DpBudget


def _by_hand(noise: float, rounds: int, delta: float) -> float:
    """RDP of the Gaussian mechanism, alpha / (2 z^2) per round, composed by adding, converted
    with the classic bound eps = rdp + log(1/delta) / (alpha - 1), best alpha on a grid."""
    return min(rounds * a / (2 * noise**2) + math.log(1 / delta) / (a - 1) for a in [1 + x / 100 for x in range(1, 20000)])


@pytest.mark.parametrize("noise, rounds", [(1.0, 3), (3.0, 3), (1.0, 20), (0.8, 1)])
def test_epsilon_is_the_gaussian_mechanisms(noise, rounds):
    epsilon = DpBudget(noise, 1e-5).epsilon(rounds)
    hand = _by_hand(noise, rounds, 1e-5)
    # the accountant converts RDP with a tighter bound than the classic one, never a looser
    assert 0.8 * hand <= epsilon <= hand * (1 + 1e-6), (epsilon, hand)


def test_epsilon_grows_with_rounds_and_shrinks_with_noise():
    budget = DpBudget(1.0, 1e-5)
    assert budget.epsilon(0) == 0.0
    assert budget.epsilon(1) < budget.epsilon(3) < budget.epsilon(10)
    assert DpBudget(5.0, 1e-5).epsilon(3) < DpBudget(1.0, 1e-5).epsilon(3)
    assert DpBudget(0.0, 1e-5).epsilon(3) == math.inf


def test_a_run_past_the_epsilon_limit_is_refused_at_start():
    config = {"strategy.dp": "server-fixed", "strategy.dp-noise-multiplier": 1.0, "num-server-rounds": 3}
    spent = DpBudget(1.0, 1e-5).epsilon(3)
    assert validate({**config, "strategy.dp-max-epsilon": spent + 0.01})
    with pytest.raises(ConfigError, match=rf"strategy.dp-max-epsilon: 3 rounds .* epsilon = {spent:.2f} .* over the limit 8"):
        validate({**config, "strategy.dp-max-epsilon": 8.0})
    assert validate({"strategy.dp": "none", "strategy.dp-max-epsilon": 0.5})  # no DP, nothing to spend
    with pytest.raises(ConfigError, match="strategy.dp-delta"):
        validate({**config, "strategy.dp-delta": 1.0})


def test_unequal_sites_are_charged_at_the_multiplier_their_weights_give():
    """Flower's noise z C / n assumes weights 1/n; with Fed-MedLoRA's size weights one site
    moves the mean by max(w) C, so the multiplier towards it is z / (n max(w))."""
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    from strategies.dp_budget import effective_multiplier

    counts = [212, 148, 154]
    weights = [c / sum(counts) for c in counts]
    budget = DpBudget(1.105, 1e-5, sampled_sites=3)
    assert budget.epsilon(3) == pytest.approx(8.0, abs=0.01)  # what equal weights would claim
    z = effective_multiplier(1.105, 3, weights)
    assert z == pytest.approx(1.105 * sum(counts) / (3 * 212))
    accountant = RdpAccountant()  # the same accountant, driven by hand
    accountant.compose(dp_accounting.GaussianDpEvent(1.105 * sum(counts) / (3 * 212)), 3)
    true = budget.epsilon_of([z] * 3)
    assert true == pytest.approx(accountant.get_epsilon(1e-5)) and true == pytest.approx(10.3, abs=0.05)
    assert budget.epsilon_of([effective_multiplier(1.105, 3, [0.62, 0.19, 0.19])] * 3) == pytest.approx(17.2, abs=0.1)
    # Noise divided among 30 "sampled" sites when 3 were aggregated: a tenth of the multiplier.
    assert DpBudget(1.105, 1e-5, 30).epsilon_of([effective_multiplier(1.105, 30, [1 / 3] * 3)] * 3) > 150
    assert effective_multiplier(1.105, 3, [1 / 3] * 3) == pytest.approx(1.105)  # equal weights: as configured
