"""LoRA linear algebra on numpy arrays: which keys pair up as one module's A and B, and the
best rank-r factors of a weighted sum of products B_k A_k, formed without the out x in matrix.

Numpy only (no Flower, no records), so the update-norm bound (strategies/clipping.py), the
aggregation error and ExactLoRA (strategies/exact.py) share one notion of a LoRA pair.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

A_SUFFIX = ".lora_A.weight"
B_SUFFIX = ".lora_B.weight"
# Partner names of a LoRA pair in PEFT state dicts (Linear and Embedding layers).
_PAIR_NAMES = (("lora_A", "lora_B"), ("lora_embedding_A", "lora_embedding_B"))


def lora_pairs(shapes: Mapping[str, Sequence[int]]) -> list[tuple[str, str]]:
    """(A key, B key) of every LoRA pair: A is (r, in), B is (out, r), same r."""
    pairs = []
    for key, a_shape in shapes.items():
        for a_name, b_name in _PAIR_NAMES:
            marker = f".{a_name}."
            if marker not in f"{key}.":
                continue
            b_key = f"{key}.".replace(marker, f".{b_name}.")[:-1]
            b_shape = shapes.get(b_key)
            if b_shape is not None and len(a_shape) == 2 and len(b_shape) == 2 and a_shape[0] == b_shape[1]:
                pairs.append((key, b_key))
    return pairs


@dataclass(frozen=True)
class LoraModule:
    """One LoRA pair of the global adapter: A is (rank, in_features), B is (out_features, rank)."""

    prefix: str
    rank: int
    in_features: int
    out_features: int

    @property
    def a_key(self) -> str:
        return self.prefix + A_SUFFIX

    @property
    def b_key(self) -> str:
        return self.prefix + B_SUFFIX


def lora_modules(shapes: Mapping[str, Sequence[int]]) -> list[LoraModule]:
    """The Linear layers' LoRA pairs (`<prefix>.lora_A.weight`, `<prefix>.lora_B.weight`), in
    key order; a key without its partner is not one."""
    return [
        LoraModule(a_key[: -len(A_SUFFIX)], rank=shapes[a_key][0], in_features=shapes[a_key][1],
                   out_features=shapes[b_key][0])
        for a_key, b_key in lora_pairs(shapes)
        if a_key.endswith(A_SUFFIX)
    ]


def pad_rank(b: np.ndarray, a: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pad factors narrower than `rank`; zero rows of A / columns of B add nothing to B A."""
    width = b.shape[1]
    if width >= rank:
        return b, a
    b_full = np.zeros((b.shape[0], rank), dtype=b.dtype)
    a_full = np.zeros((rank, a.shape[1]), dtype=a.dtype)
    b_full[:, :width] = b
    a_full[:width] = a
    return b_full, a_full


@dataclass(frozen=True)
class ExactFactors:
    """Result of `exact_factors`: B (out, k), A (k, in) in float64, and what truncation dropped.

    The columns of B and rows of A are ordered by singular value, so their first j give the
    best rank-j approximation; `singular_values` holds all of M's non-trivial ones.
    """

    b: np.ndarray
    a: np.ndarray
    dropped_energy: float  # share of sum(s^2) in the discarded singular values, in [0, 1]
    singular_values: np.ndarray

    def dropped_at(self, rank: int) -> float:
        """Share of the energy a truncation to `rank` drops."""
        s2 = self.singular_values**2
        total = float(np.sum(s2))
        return min(max(float(np.sum(s2[rank:])) / total, 0.0), 1.0) if total > 0 else 0.0


def exact_factors(
    bs: Sequence[np.ndarray],
    as_: Sequence[np.ndarray],
    scales: Sequence[float],
    rank: int | str,
    out_scale: float = 1.0,
) -> ExactFactors:
    """Best rank-`rank` factors of M = sum_k scales[k] * bs[k] @ as_[k], without forming M.

    With U = [sqrt(c_k) B_k ...] (out x R) and V = [sqrt(c_k) A_k ...] (R x in), M = U V.
    QR gives U = Q_U R_U and V^T = Q_V R_V, so M = Q_U (R_U R_V^T) Q_V^T and the SVD of the
    small core R_U R_V^T = u diag(s) v^T is M's SVD up to the orthonormal Q's. The result
    is B = Q_U u_k diag(sqrt(s_k)) * out_scale, A = diag(sqrt(s_k)) v_k^T Q_V^T, so
    B A / out_scale is the best rank-k approximation. `rank` = "full" keeps every
    singular value (exact). Cost O((out + in) R^2), memory O((out + in) R).
    """
    if not (len(bs) == len(as_) == len(scales)) or not bs:
        raise ValueError(
            f"exact_factors: need one B, A and scale per site, got {len(bs)}, {len(as_)}, {len(scales)}"
        )
    if any(not math.isfinite(c) or c < 0 for c in scales):
        raise ValueError(f"exact_factors: scales must be finite and >= 0, got {list(scales)}")
    # sqrt on both sides keeps U and V equally conditioned.
    roots = [math.sqrt(c) for c in scales]
    # One (out or in) x R stack at a time: memory stays O((out + in) R), never out x in.
    u_stack = np.concatenate([np.asarray(b, np.float64) * c for b, c in zip(bs, roots, strict=True)], axis=1)
    q_u, r_u = np.linalg.qr(u_stack)
    del u_stack
    vt_stack = np.concatenate([np.asarray(a, np.float64).T * c for a, c in zip(as_, roots, strict=True)], axis=1)
    q_v, r_v = np.linalg.qr(vt_stack)
    del vt_stack
    u, s, vt = np.linalg.svd(r_u @ r_v.T)  # small: at most R x R

    keep = len(s) if rank == "full" else min(int(rank), len(s))
    energy = float(np.sum(s * s))
    dropped = float(np.sum(s[keep:] ** 2)) / energy if energy > 0 else 0.0
    root_s = np.sqrt(s[:keep])
    b = (q_u @ (u[:, :keep] * root_s)) * out_scale
    a = (root_s[:, None] * vt[:keep]) @ q_v.T
    return ExactFactors(b=b, a=a, dropped_energy=min(max(dropped, 0.0), 1.0), singular_values=s)


# Singular values below this share of the largest are taken as zero (float32 inputs).
_RANK_TOLERANCE = 1e-6


def orthonormal_columns(y: np.ndarray) -> np.ndarray:
    """An orthonormal basis (float32) of `y`'s column space, from its small Gram matrix's
    eigenvectors, twice (the second pass restores the orthogonality the first loses to
    rounding). It does a tall-skinny QR's job with a k x k eigenproblem instead of LAPACK's
    QR of the whole block, which dominated the solver's time at 8B shapes
    (benchmarks/aggregation.py). Directions whose eigenvalue is below 1e-12 of the largest
    (a rank-deficient y) are dropped."""
    q = np.asarray(y, np.float64)
    for _ in range(2):
        if q.shape[1] == 0:  # an empty basis already (M = 0 in a power iteration)
            break
        eigenvalues, vectors = np.linalg.eigh(q.T @ q)
        kept = eigenvalues > max(float(eigenvalues[-1]), 0.0) * 1e-12
        if not kept.any():
            return np.zeros((q.shape[0], 0), np.float32)
        q = q @ (vectors[:, kept] / np.sqrt(eigenvalues[kept]))
    return q.astype(np.float32)


def randomized_factors(
    bs: Sequence[np.ndarray],
    as_: Sequence[np.ndarray],
    scales: Sequence[float],
    rank: int,
    out_scale: float = 1.0,
    power_iterations: int = 1,
    seed: int = 0,
) -> ExactFactors:
    """Rank-`rank` factors of M = sum_k scales[k] * bs[k] @ as_[k] from a randomized range
    finder (Halko, Martinsson and Tropp 2011, algorithms 4.4 and 5.1), never forming M.

    With U = [c_k B_k ...] (out x R) and V = [A_k; ...] (R x in), M = U V. A Gaussian sketch
    of s = min(2 rank, R) columns, Y = U (V Omega), gives M's range; `power_iterations`
    rounds of Y <- M (M^T Y), re-orthonormalised, sharpen it. With Q = orth(Y), M ~ Q (Q^T M)
    and the SVD of the small s x in matrix Q^T M = (Q^T U) V, taken from its s x s Gram
    matrix, gives the factors. Every product
    has s columns: O((out + in) R s) per power iteration instead of the O((out + in) R^2) of
    two QRs. The sketch is seeded (`seed`), so a round aggregates the same way every time.
    Float32, as the replies travel: the truncation error dwarfs the rounding.

    `dropped_energy` is the share of the sketch's energy outside the kept rank, a lower bound
    on the true share (the sketch does not see all of M); `singular_values` are the sketch's.
    """
    if not (len(bs) == len(as_) == len(scales)) or not bs:
        raise ValueError(
            f"randomized_factors: need one B, A and scale per site, got {len(bs)}, {len(as_)}, {len(scales)}"
        )
    if any(not math.isfinite(c) or c < 0 for c in scales):
        raise ValueError(f"randomized_factors: scales must be finite and >= 0, got {list(scales)}")
    # One copy of each stack, scaled in place: at LLaMA-3-8B sizes, memory traffic is the cost.
    u = np.concatenate([np.asarray(b, np.float32) for b in bs], axis=1)
    u *= np.repeat(np.asarray(scales, np.float32), [np.shape(b)[1] for b in bs])
    v = np.concatenate([np.asarray(a, np.float32) for a in as_], axis=0)
    width = min(2 * int(rank), v.shape[0])
    omega = np.random.default_rng(seed).standard_normal((v.shape[1], width), dtype=np.float32)
    y = u @ (v @ omega)
    for _ in range(power_iterations):
        q = orthonormal_columns(y)
        z = orthonormal_columns(v.T @ (u.T @ q))
        y = u @ (v @ z)
    q = orthonormal_columns(y)
    if q.shape[1] == 0:  # M = 0: every site sent a zero product
        return ExactFactors(b=np.zeros((u.shape[0], 0)), a=np.zeros((0, v.shape[1])), dropped_energy=0.0,
                            singular_values=np.zeros(0))
    small = ((q.T @ u) @ v).astype(np.float64)  # s x in
    # Its SVD from the s x s Gram: small = uu diag(s) vt, vt = diag(1/s) uu^T small.
    eigenvalues, uu = np.linalg.eigh(small @ small.T)
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, uu = np.clip(eigenvalues[order], 0.0, None), uu[:, order]
    s = np.sqrt(eigenvalues)
    keep = min(int(rank), int(np.count_nonzero(s > s[0] * _RANK_TOLERANCE)))
    energy = float(np.sum(eigenvalues))
    dropped = float(np.sum(eigenvalues[keep:])) / energy if energy > 0 else 0.0
    vt = (uu[:, :keep].T @ small) / s[:keep, None]
    root_s = np.sqrt(s[:keep])
    b = (q.astype(np.float64) @ (uu[:, :keep] * root_s)) * out_scale
    a = root_s[:, None] * vt
    return ExactFactors(b=b, a=a, dropped_energy=min(max(dropped, 0.0), 1.0), singular_values=s)
