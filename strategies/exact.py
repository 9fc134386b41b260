"""ExactLoRA: aggregate the LoRA updates B_k A_k themselves, not A and B separately.

Averaging A and B separately gives (sum p_k B_k)(sum p_k A_k), which is not the average
update sum p_k B_k A_k. This strategy forms the exact weighted sum of the products in
factored form and returns its best rank-r approximation (Eckart-Young), without ever
building a dense out x in matrix.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from logging import INFO, WARNING
from typing import Any, Literal

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message
from flwr.common.logger import log
from flwr.serverapp import Grid
from threadpoolctl import threadpool_limits

from wire.arrays import arrays_digest

from .base import LoraFedAvg, with_arrays
from .lora_algebra import LoraModule, exact_factors, lora_modules, pad_rank, randomized_factors
from .registry import read_settings, register
from .screening import SiteCandidate, UpdateRejected

# Metric key a site may send with its own LoRA alpha (else the strategy's `alpha`).
ALPHA_METRIC = "lora-alpha"

Rank = int | Literal["full"] | None

# "randomized": a range finder on the stacked factors (`randomized_factors`), O((out + in) R r)
# per module; "svd": two QRs and the full core SVD (`exact_factors`), O((out + in) R^2).
EXACT_SOLVERS = ("randomized", "svd")


@dataclass
class SiteShape:
    """A site's LoRA rank per module (only where it differs from the global) and its alpha."""

    ranks: dict[str, int]  # module prefix -> rank
    alpha: float | None  # from the site's `lora-alpha` metric, else None


@register("exact")
class ExactLoRA(LoraFedAvg):
    """Exact aggregation of the LoRA products, truncated to a fixed rank.

    For every LoRA module (keys `<prefix>.lora_A.weight`, shape (r_k, in), and
    `<prefix>.lora_B.weight`, shape (out, r_k)) the coordinator forms
    M = sum_k p_k (alpha_k / r_k) B_k A_k, with p_k the weights of `aggregation_weights`
    (default: `num-examples` shares), and returns global factors B, A with
    (alpha / r) B A equal to the best rank-`rank` approximation of M, where alpha / r is the
    global adapter's scaling. The singular values are split evenly (square roots) between
    B and A, and the factors are ordered by singular value, so the first j columns of B and
    rows of A are the best rank-j approximation. Keys that are not LoRA pairs are averaged
    plainly. Sites may train with different ranks r_k: a reply whose A and B differ from the
    global shapes only in the rank dimension is accepted, and from then on that site is
    sent (train and evaluate) its own rank: the best rank-r_k factors of the same aggregate,
    scaled by its own r_k / alpha_k. The first round, before a site has replied, every site
    gets the global adapter. The share of energy (sum of
    squared singular values) that truncation dropped is logged each round and kept in
    the round report's `extra["truncated-energy"]` (`max` and `mean` over modules).

    Parameters
    ----------
    rank : int | "full" | None (default: None)
        Rank of the aggregate. None: each module's rank in the global adapter (the
        returned adapter then has exactly the expected shapes). An int below that rank
        is zero-padded to the expected shapes. "full": the stacked rank sum_k r_k, which
        is exact (no truncation); like an int above the global rank it returns a wider
        adapter, which sites of the global rank cannot load, so use it for analysis or
        for the final export (exported with lora_alpha = alpha * width / r to keep the
        scaling).
    alpha : float | None (default: None)
        LoRA alpha of the global adapter and of any site whose reply has no
        `lora-alpha` metric. None: alpha = the module's global rank (scaling 1). When all
        sites share alpha and rank the scalings cancel and alpha does not matter.
    expected_shapes : Mapping[str, Sequence[int]] | None (default: None)
        Keys and shapes of the global adapter (see `LoraFedAvg`).
    **fedavg_kwargs
        Passed to FedAvg (sampling and record keys).
    """

    # Weights still sum to one, but the tensors are not a weighted average of the replies.
    invariants: tuple[str, ...] = ("exact-product",)
    # Rank "full" (or above the global rank) returns a wider adapter than the global one.
    keeps_adapter_shapes = False

    def __init__(
        self,
        rank: int | str | None = None,
        alpha: float | None = None,
        expected_shapes: Mapping[str, Sequence[int]] | None = None,
        solver: str = "svd",
        **fedavg_kwargs: Any,
    ) -> None:
        self.rank: Rank = _check_rank(rank, "strategy.exact-rank")
        if solver not in EXACT_SOLVERS:
            raise ValueError(f"strategy.exact-solver: expected one of {list(EXACT_SOLVERS)}, got {solver!r}")
        self.solver = solver
        if alpha is not None:
            alpha = _check_alpha(alpha, "lora.alpha")
        self.alpha: float | None = alpha
        self.modules: list[LoraModule] = []
        # Sites of another rank, by node id, and the aggregate's factors wide enough for them.
        self.site_shapes: dict[int, SiteShape] = {}
        self._wide: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._returned: ArrayRecord | None = None  # the global adapter `_wide` belongs to
        # After `load_state_dict`: the digest of the global adapter `_wide` belonged to.
        self._restored_digest: str | None = None
        super().__init__(expected_shapes=expected_shapes, **fedavg_kwargs)

    @dataclass(frozen=True)
    class Settings:
        """Its `strategy.*` keys; it also reads `lora.r` and `lora.alpha`."""

        exact_rank: str
        exact_solver: str

    @classmethod
    def from_run_config(
        cls,
        cfg: Any,
        expected_shapes: Mapping[str, Sequence[int]],
        validation_loss: Callable[[dict[str, np.ndarray]], float] | None = None,
        **fedavg_kwargs: Any,
    ) -> ExactLoRA:
        """Build from the run config: `lora.alpha`, `lora.r`, optional `strategy.exact-rank`."""
        del validation_loss  # weights are FedAvg's
        settings = read_settings(cls, cfg.strategy)
        strategy = cls(
            rank=settings.exact_rank,
            alpha=cfg.lora.alpha,
            expected_shapes=expected_shapes,
            solver=settings.exact_solver,
            **fedavg_kwargs,
        )
        r = cfg.lora.r
        # The adapter is built from lora.r, so a disagreement means the shapes are not this run's.
        mismatched = [m.prefix for m in strategy.modules if r is not None and m.rank != int(r)]
        if mismatched:
            raise ValueError(
                f"lora.r = {r}, but the global adapter has another rank in {mismatched[:3]}"
            )
        return strategy

    def set_expected(self, shapes: Mapping[str, Sequence[int]]) -> None:
        """Set the global adapter's keys and shapes, and find its LoRA pairs."""
        super().set_expected(shapes)
        assert self.expected_shapes is not None
        self.modules = lora_modules(self.expected_shapes)

    def summary(self) -> None:
        """Log summary configuration of the strategy."""
        super().summary()
        rank = self.rank or "global"
        log(INFO, "\t└──> Exact LoRA aggregation: %d modules, rank %s", len(self.modules), rank)

    # --- state between rounds (checkpoints) -------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Each site's other rank (by node id) and the wide factors of the last aggregate.

        With the digest of the global adapter those factors belong to: after a restore, a
        site is sent its own rank only if the adapter the run continues from is that one.
        """
        return {
            "site-shapes": [
                {"node-id": node, "ranks": dict(shape.ranks), "alpha": shape.alpha}
                for node, shape in sorted(self.site_shapes.items())
            ],
            "wide": {prefix: [b, a] for prefix, (b, a) in self._wide.items()},
            "returned-digest": arrays_digest(self._returned) if self._returned is not None else None,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what `state_dict` returned.

        Site ranks are kept by node id: where the continued run's nodes have other ids (a
        restarted simulation), those sites get the global rank until they reply again, as in
        a run's first round.
        """
        self.site_shapes = {
            int(entry["node-id"]): SiteShape(
                {str(k): int(v) for k, v in entry["ranks"].items()},
                None if entry["alpha"] is None else float(entry["alpha"]),
            )
            for entry in state.get("site-shapes", [])
        }
        self._wide = {str(prefix): (np.asarray(b), np.asarray(a)) for prefix, (b, a) in state.get("wide", {}).items()}
        self._returned = None
        self._restored_digest = state.get("returned-digest")

    # --- each site its own rank ------------------------------------------------------

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        """FedAvg's instructions; a site of another rank gets the aggregate at its rank."""
        return self._per_site_rank(list(super().configure_train(server_round, arrays, config, grid)), arrays)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        """FedAvg's instructions; a site of another rank gets the aggregate at its rank."""
        return self._per_site_rank(list(super().configure_evaluate(server_round, arrays, config, grid)), arrays)

    def _per_site_rank(self, messages: list[Message], arrays: ArrayRecord) -> list[Message]:
        if not self.site_shapes:
            return messages
        if self._restored_digest is not None and arrays is not self._returned:
            # The first round after a restore: the wide factors belong to this adapter if
            # it is the aggregate they were saved with.
            if arrays_digest(arrays) == self._restored_digest:
                self._returned = arrays
            self._restored_digest = None
        if arrays is not self._returned:
            # Another layer (a DP wrapper's noise) changed the aggregate: its wide factors no
            # longer match, so every site gets the global adapter as it is.
            log(WARNING, "exact: the global adapter is not the one aggregated last; sites of "
                "another rank get the global rank")
            return messages
        out = []
        for message in messages:
            shape = self.site_shapes.get(message.metadata.dst_node_id)
            if shape is None:
                out.append(message)
                continue
            site_arrays = self.site_adapter(arrays, shape)
            out.append(with_arrays(message, site_arrays))
        return out

    def site_adapter(self, arrays: ArrayRecord, shape: SiteShape) -> ArrayRecord:
        """The global adapter with each module of another rank cut to the site's best rank-r_k
        factors, B scaled by the site's r_k / alpha_k (its own LoRA scaling)."""
        out = {key: arrays[key] for key in arrays.keys()}
        for module in self.modules:
            rank = shape.ranks.get(module.prefix)
            if rank is None:
                continue
            b_wide, a_wide = self._wide[module.prefix]
            b, a = pad_rank(b_wide[:, :rank], a_wide[:rank], rank)
            site_alpha = shape.alpha if shape.alpha is not None else self._default_alpha(module)
            out[module.b_key] = Array((b * (rank / site_alpha)).astype(np.float32))
            out[module.a_key] = Array(a.astype(np.float32))
        return ArrayRecord(out)

    def _remember_site_shapes(self, accepted: list[SiteCandidate]) -> None:
        for candidate in accepted:
            ranks = {
                m.prefix: candidate.state[m.a_key].shape[0]
                for m in self.modules
                if candidate.state[m.a_key].shape[0] != m.rank
            }
            if ranks:
                alpha = float(candidate.metrics[ALPHA_METRIC]) if ALPHA_METRIC in candidate.metrics else None
                self.site_shapes[candidate.node_id] = SiteShape(ranks, alpha)
            else:
                self.site_shapes.pop(candidate.node_id, None)

    # --- screening: accept other ranks -----------------------------------------------

    def check_reply(self, msg: Message, site: str) -> SiteCandidate:
        """LoraFedAvg's checks against this site's shapes (`reply_shapes`), and its `lora-alpha`."""
        candidate = super().check_reply(msg, site)
        if ALPHA_METRIC in candidate.metrics:
            value = candidate.metrics[ALPHA_METRIC]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                math.isfinite(value) and value > 0
            ):
                raise UpdateRejected(f"'{ALPHA_METRIC}' must be a number > 0, got {value!r}")
        return candidate

    def reply_shapes(self, msg: Message) -> OrderedDict[str, tuple[int, ...]]:
        """Expected shapes with each LoRA pair's rank taken from the reply, where only it differs.

        Anything else (wrong in/out features, missing keys, not 2-D) keeps the global shape,
        so the base check rejects it with its usual message.
        """
        assert self.expected_shapes is not None
        shapes = OrderedDict(self.expected_shapes)
        if len(msg.content.array_records) != 1:
            return shapes
        record = next(iter(msg.content.array_records.values()))
        for module in self.modules:
            if module.a_key not in record or module.b_key not in record:
                continue
            a_shape = tuple(record[module.a_key].shape)
            b_shape = tuple(record[module.b_key].shape)
            if len(a_shape) != 2 or len(b_shape) != 2:
                continue
            if a_shape[1] != module.in_features or b_shape[0] != module.out_features:
                continue
            if a_shape[0] != b_shape[1]:
                raise UpdateRejected(
                    f"{module.prefix}: lora_A has rank {a_shape[0]} but lora_B has rank {b_shape[1]}"
                )
            if a_shape[0] < 1:
                raise UpdateRejected(f"{module.prefix}: LoRA rank must be >= 1, got {a_shape[0]}")
            shapes[module.a_key] = a_shape
            shapes[module.b_key] = b_shape
        return shapes

    # --- aggregation -----------------------------------------------------------------

    def weighted_average(self, accepted: list[SiteCandidate], weights: list[float]) -> ArrayRecord:
        """Exact rank-truncated aggregate of each LoRA product; other tensors averaged."""
        assert self.expected_shapes is not None
        out: dict[str, np.ndarray] = {}
        paired = {k for m in self.modules for k in (m.a_key, m.b_key)}
        for key, shape in self.expected_shapes.items():
            if key not in paired:
                total = np.zeros(shape, dtype=np.float64)
                for candidate, weight in zip(accepted, weights, strict=True):
                    total += np.multiply(candidate.state[key], weight, dtype=np.float64)
                out[key] = total

        self._remember_site_shapes(accepted)
        self._wide = {}
        dropped: list[float] = []
        for module in self.modules:
            global_alpha = self._default_alpha(module)
            scales = [
                weight * self._site_alpha(c, module) / c.state[module.a_key].shape[0]
                for c, weight in zip(accepted, weights, strict=True)
            ]
            target = module.rank if self.rank is None else self.rank
            site_ranks = [s.ranks[module.prefix] for s in self.site_shapes.values() if module.prefix in s.ranks]
            width: int | str = target if target == "full" else max([target, *site_ranks])
            bs = [c.state[module.b_key] for c in accepted]
            as_ = [c.state[module.a_key] for c in accepted]
            if self.solver == "randomized" and width != "full":
                result = randomized_factors(bs, as_, scales, int(width), out_scale=module.rank / global_alpha,
                                            seed=self._aggregate.server_round if self._aggregate else 0)
            else:
                # Small QRs and an R x R SVD: threaded BLAS only adds contention here (on a
                # 2-core machine it made a round 5-10x slower), so one thread.
                with threadpool_limits(limits=1, user_api="blas"):
                    result = exact_factors(bs, as_, scales, width, out_scale=module.rank / global_alpha)
            if site_ranks:
                self._wide[module.prefix] = (result.b / (module.rank / global_alpha), result.a)
            b, a = (result.b, result.a) if target == "full" else (result.b[:, :target], result.a[:target])
            out[module.b_key], out[module.a_key] = pad_rank(b, a, module.rank)
            dropped.append(result.dropped_energy if target == "full" else result.dropped_at(target))

        aggregate = self._aggregate  # None when called outside `aggregate_candidates`
        summary = {"max": max(dropped, default=0.0), "mean": math.fsum(dropped) / len(dropped) if dropped else 0.0,
                   "modules": len(dropped)}
        if aggregate is not None:
            aggregate.extra["truncated-energy"] = summary
        log(INFO, "round %d: exact LoRA aggregation to rank %s dropped max %.3g, mean %.3g of the energy over %d "
            "module(s)", aggregate.server_round if aggregate is not None else 0, self.rank or "global",
            summary["max"], summary["mean"], summary["modules"])
        # Keep the global key order (pairs were written after the plain keys).
        self._returned = ArrayRecord({key: Array(out[key].astype(np.float32)) for key in self.expected_shapes})
        return self._returned

    def product_scale(self, candidate: SiteCandidate, module: LoraModule) -> float:
        """(alpha_k / r_k) / (alpha / r): a site of another rank or alpha, against the global."""
        rank = candidate.state[module.a_key].shape[0]
        return (self._site_alpha(candidate, module) / rank) / (self._default_alpha(module) / module.rank)

    def _default_alpha(self, module: LoraModule) -> float:
        return self.alpha if self.alpha is not None else float(module.rank)

    def _site_alpha(self, candidate: SiteCandidate, module: LoraModule) -> float:
        if ALPHA_METRIC in candidate.metrics:
            return float(candidate.metrics[ALPHA_METRIC])
        return self._default_alpha(module)


def _check_rank(rank: Any, key: str) -> Rank:
    """None, "full", or an int >= 1 (also given as a string, as the run config holds it)."""
    if rank is None or rank == "":
        return None
    if isinstance(rank, str):
        text = rank.strip().lower()
        if text == "full":
            return "full"
        try:
            rank = int(text)
        except ValueError:
            raise ValueError(f"{key}: expected 'full' or an integer >= 1, got {rank!r}") from None
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"{key}: expected 'full' or an integer >= 1, got {rank!r}")
    return rank


def _check_alpha(alpha: Any, key: str) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"{key}: expected a number > 0, got {alpha!r}")
    return float(alpha)
