"""Update-norm bound for LoRA site updates, computed through the factors.

A site's update to one LoRA module is D = B_k A_k - B A (site factors minus global ones).
Its Frobenius norm is taken without forming the out x in matrix: D is the product of the
stacked factors [B_k, -B] [A_k; A], and ||U V||_F^2 = sum((U^T U) * (V V^T)) needs only
two (2r x 2r) Gram matrices. A site's update norm is sqrt(sum over modules of ||D||^2),
plus ||S - G||^2 for any tensor that is not part of a LoRA pair.

Clipping cannot scale D itself: c B_k A_k + (1 - c) B A has rank up to 2r and no rank-r
factors in general. Instead the parameter deltas are scaled, A' = A + t (A_k - A) and
B' = B + t (B_k - B), which moves the site's adapter toward the global one (t = 0 gives the
global adapter, t = 1 the site's). Then B' A' - B A = t X + t^2 Y with X = B dA + dB A and
Y = dB dA, so ||B' A' - B A||^2 = a t^2 + b t^3 + c t^4 with a = ||X||^2, b = 2 <X, Y>,
c = ||Y||^2, all from the same Gram matrices. t comes from a bisection on that quartic,
keeping the side where the norm is <= the bound (up to float32 rounding of the result).

The bound is on the unscaled product B A, before LoRA's alpha / r factor (which every site
shares). Sites with another LoRA rank than the global adapter (ExactLoRA accepts them) are
compared after zero-padding both to the larger rank, which leaves every product unchanged.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import Context, Message
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable

from .lora_algebra import lora_pairs, pad_rank

# `strategy.update-norm-action`: what to do with an update whose norm exceeds the bound.
UPDATE_NORM_ACTIONS = ("clip", "reject")

_BISECTION_STEPS = 60  # 2^-60: t exact to float64 precision


@dataclass(frozen=True)
class UpdateTerms:
    """||update||^2 along the path t in [0, 1]: quadratic t^2 + cubic t^3 + quartic t^4."""

    quadratic: float
    cubic: float
    quartic: float

    def squared_norm(self, t: float = 1.0) -> float:
        # Gram-based sums can round a little below zero for an update of norm ~0.
        return max(t * t * (self.quadratic + t * (self.cubic + t * self.quartic)), 0.0)

    def norm(self, t: float = 1.0) -> float:
        """Norm of the update whose deltas are scaled by t (t = 1: the site's own update)."""
        return float(np.sqrt(self.squared_norm(t)))

    def clip_factor(self, bound: float) -> float:
        """Largest t found by bisection with norm(t) <= bound; 1.0 if the update is within it."""
        if bound <= 0:
            raise ValueError(f"strategy.max-update-norm: expected a bound > 0, got {bound}")
        target = bound * bound
        if self.squared_norm(1.0) <= target:
            return 1.0
        lo, hi = 0.0, 1.0  # invariant: squared_norm(lo) <= target < squared_norm(hi)
        for _ in range(_BISECTION_STEPS):
            mid = 0.5 * (lo + hi)
            if self.squared_norm(mid) <= target:
                lo = mid
            else:
                hi = mid
        return lo


def update_terms(site: Mapping[str, np.ndarray], global_: Mapping[str, np.ndarray]) -> UpdateTerms:
    """The quartic of `UpdateTerms` for a site's adapter against the global one (same keys)."""
    pairs = lora_pairs({k: v.shape for k, v in global_.items()})
    paired = {k for pair in pairs for k in pair}
    quadratic = cubic = quartic = 0.0
    for a_key, b_key in pairs:
        a, b, a_k, b_k = _padded(global_[a_key], global_[b_key], site[a_key], site[b_key])
        r = a.shape[0]
        d_a, d_b = a_k - a, b_k - b
        # X = [B, dB] [dA; A] and Y = dB dA share the Gram matrices of the stacked factors.
        gram_u = _gram(np.concatenate([b, d_b], axis=1).T)
        gram_v = _gram(np.concatenate([d_a, a], axis=0))
        quadratic += float(np.sum(gram_u * gram_v))
        cubic += 2.0 * float(np.sum(gram_u[:, r:] * gram_v[:, :r]))
        quartic += float(np.sum(gram_u[r:, r:] * gram_v[:r, :r]))
    for key, value in global_.items():
        if key not in paired:
            delta = np.asarray(site[key], np.float64) - np.asarray(value, np.float64)
            quadratic += float(np.vdot(delta, delta))
    return UpdateTerms(quadratic, cubic, quartic)


def update_norm(site: Mapping[str, np.ndarray], global_: Mapping[str, np.ndarray]) -> float:
    """sqrt(sum over LoRA modules of ||B_k A_k - B A||_F^2 + other tensors' ||S - G||^2)."""
    return update_terms(site, global_).norm()


def scale_toward(
    site: Mapping[str, np.ndarray], global_: Mapping[str, np.ndarray], t: float
) -> OrderedDict[str, np.ndarray]:
    """The adapter G + t (S - G), tensor by tensor, in float32 (LoRA pairs at the larger rank)."""
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    pairs = dict(lora_pairs({k: v.shape for k, v in global_.items()}))
    for key in site:
        if key in pairs:
            b_key = pairs[key]
            a, b, a_k, b_k = _padded(global_[key], global_[b_key], site[key], site[b_key])
            out[key] = (a + t * (a_k - a)).astype(np.float32)
            out[b_key] = (b + t * (b_k - b)).astype(np.float32)
        elif key not in out:
            g = np.asarray(global_[key], np.float64)
            out[key] = (g + t * (np.asarray(site[key], np.float64) - g)).astype(np.float32)
    return OrderedDict((k, out[k]) for k in site)


def _padded(
    a: np.ndarray, b: np.ndarray, a_k: np.ndarray, b_k: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Float64 factors zero-padded to one rank (`pad_rank`: B A unchanged)."""
    rank = max(a.shape[0], a_k.shape[0])
    b, a = pad_rank(np.asarray(b, np.float64), np.asarray(a, np.float64), rank)
    b_k, a_k = pad_rank(np.asarray(b_k, np.float64), np.asarray(a_k, np.float64), rank)
    return a, b, a_k, b_k


def _gram(rows: np.ndarray) -> np.ndarray:
    """rows @ rows.T for a short, wide matrix (2r x n)."""
    return rows @ rows.T


# --- client side: Flower's DP clipping mods, chosen by the run config ------------------


def dp_clipping_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """ClientApp mod for `strategy.dp = "client-fixed" | "client-adaptive"`; a no-op otherwise.

    The coordinator's client-side DP wrapper sends the clipping norm in the train config;
    Flower's `fixedclipping_mod` / `adaptiveclipping_mod` clip the site's update to it
    before it leaves the site (the adaptive one also reports whether it clipped). The run
    config is the same at every site and at the coordinator, so it picks the mod.
    """
    mode = context.run_config.get("strategy.dp", "none")
    if mode == "client-fixed":
        return fixedclipping_mod(msg, context, call_next)
    if mode == "client-adaptive":
        return adaptiveclipping_mod(msg, context, call_next)
    return call_next(msg, context)
