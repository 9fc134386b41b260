"""How far a round's global LoRA update is from the average of the sites' updates.

Averaging A and B separately gives B̄Ā, which is not sum_k p_k B_k A_k. For each LoRA
module the round report carries

    error = ||sum_k p_k s_k B_k A_k - B̄Ā||_F / ||sum_k p_k s_k B_k A_k||_F

(s_k: a site's LoRA scaling relative to the global adapter's, 1 when ranks and alphas agree),
and over all modules sqrt(sum of squared numerators / sum of squared denominators).

Neither product is formed. With U = [p_1 s_1 B_1, ..., p_K s_K B_K, -B̄] (out x R) and
V = [A_1; ...; A_K; Ā] (R x in), the difference is U V and ||U V||_F^2 = sum((U^T U) * (V V^T)):
two R x R Gram matrices, O((out + in) R^2) work and no out x in matrix. The average's own
norm is the same sum over the sites' block. Float64 throughout: the difference is a
cancellation, and an exact strategy's error must read as zero, not as float32 noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from .lora_algebra import LoraModule

Factors = Mapping[str, np.ndarray]


def module_error(
    site_factors: Sequence[tuple[np.ndarray, np.ndarray]],
    weights: Sequence[float],
    global_factors: tuple[np.ndarray, np.ndarray],
) -> tuple[float, float]:
    """(||difference||_F^2, ||average||_F^2) for one module; `site_factors` are (B_k, A_k)
    with any per-site scaling already in `weights`."""
    bs = [np.asarray(b, np.float64) * w for (b, _), w in zip(site_factors, weights, strict=True)]
    as_ = [np.asarray(a, np.float64) for _, a in site_factors]
    n = sum(a.shape[0] for a in as_)
    u = np.concatenate([*bs, -np.asarray(global_factors[0], np.float64)], axis=1)
    v = np.concatenate([*as_, np.asarray(global_factors[1], np.float64)], axis=0)
    gram_u = u.T @ u
    gram_v = v @ v.T
    product = gram_u * gram_v
    difference = max(float(product.sum()), 0.0)
    average = max(float(product[:n, :n].sum()), 0.0)
    return difference, average


def aggregation_error(
    modules: Sequence[LoraModule],
    sites: Sequence[tuple[Factors, float]],
    global_state: Factors,
    scale: Callable[[int, LoraModule], float] = lambda site, module: 1.0,
) -> dict[str, float]:
    """The round's aggregation error: `overall`, and `max` and `mean` over modules.

    `sites` pairs each used site's adapter (all keys, sent or filled in) with its aggregation
    weight; `scale(i, module)` is site i's LoRA scaling relative to the global adapter's.
    A module whose average update is zero (B = 0 everywhere, before any training) has no
    error to report and is skipped; `modules` counts those measured.
    """
    per_module, total_difference, total_average = [], 0.0, 0.0
    for module in modules:
        difference, average = module_error(
            [(state[module.b_key], state[module.a_key]) for state, _ in sites],
            [weight * scale(i, module) for i, (_, weight) in enumerate(sites)],
            (global_state[module.b_key], global_state[module.a_key]),
        )
        if average <= 0:
            continue
        per_module.append(math.sqrt(difference / average))
        total_difference += difference
        total_average += average
    if not per_module:
        return {"overall": 0.0, "max": 0.0, "mean": 0.0, "modules": 0}
    return {
        "overall": math.sqrt(total_difference / total_average),
        "max": max(per_module),
        "mean": math.fsum(per_module) / len(per_module),
        "modules": len(per_module),
    }
