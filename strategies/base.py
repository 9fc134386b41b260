"""LoraFedAvg: Flower's FedAvg for LoRA adapters, with its weighting as one hook.

A plain `FedAvg` subclass: sampling, `configure_train`, `configure_evaluate` and
`aggregate_evaluate` are Flower's. Of Flower's hooks it overrides `aggregate_train` (and extends `summary`): the replies become
`SiteCandidate`s, `aggregation_weights` weighs them (default: `num-examples` shares,
Fed-MedLoRA) and `weighted_average` averages each tensor in float64. A strategy that only
changes how sites are weighted (Fed-MedLoRA+) overrides `aggregation_weights` and nothing
else.

It screens nothing: the ServerApp runs it behind the wrappers of strategies/compose.py,
which check each reply on its own (strategies/screening.py), bound the update norms and
hand this class the accepted replies. What they ask of it (its reply check, the weights of
its last aggregate for the round's report) are the hooks of strategies/core_hooks.py.
Called without them, a malformed reply fails the round, as it does in Flower's FedAvg.
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from logging import INFO
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from wire import protocol

from .lora_algebra import LoraModule
from .round_report import Aggregate
from .screening import (
    FilledState,
    SiteCandidate,
    UpdateRejected,
    canonical_order,
    check_reply,
    check_weights,
    common_metric_keys,
    expected_shapes_of,
    read_reply,
    site_label,
)


class LoraFedAvg(FedAvg):
    """FedAvg over LoRA adapters, weighted through `aggregation_weights`.

    Parameters
    ----------
    expected_shapes : Mapping[str, Sequence[int]] | None (default: None)
        Keys and shapes of the global adapter, in the order the aggregate is returned.
        May be set later with `set_expected` (the screening sets it from the initial adapter).
    **fedavg_kwargs
        Passed to FedAvg (`fraction_train`, `min_train_nodes`, `min_available_nodes`,
        `weighted_by_key`, ...); see `flwr.serverapp.strategy.FedAvg`.
    """

    # Checked by tests/test_conformance.py: "weights-sum-to-one", "exact-product".
    invariants: tuple[str, ...] = ("weights-sum-to-one",)
    # False when `factor_rule` may have sites send only some factors (settings/config.py
    # then refuses client-side DP clipping, which pairs tensors by position).
    sends_every_factor: bool = True
    # True when each site trains from its own copy of some tensors (FedSA-LoRA's B).
    personalised: bool = False
    # Each site's own metrics reach `aggregation_weights` (the shared ones are averaged here).
    reads_site_metrics: bool = True

    def __init__(self, expected_shapes: Mapping[str, Sequence[int]] | None = None, **fedavg_kwargs: Any) -> None:
        super().__init__(**fedavg_kwargs)
        self.expected_shapes: OrderedDict[str, tuple[int, ...]] | None = None
        if expected_shapes is not None:
            self.set_expected(expected_shapes)
        self._aggregate: Aggregate | None = None  # the round being aggregated (`reject`, `current_aggregate`)
        self._last: Aggregate | None = None  # the last round aggregated (`aggregate_report`)
        # The round's factor rule and the adapter its train instructions carried: a factor a
        # site does not send is filled in from that adapter (`check_reply`).
        self._round_rule: tuple[str, str] = ("AB", "AB")
        self._round_arrays: ArrayRecord | None = None

    @classmethod
    def from_run_config(
        cls,
        cfg: Any,
        expected_shapes: Mapping[str, Sequence[int]],
        validation_loss: Callable[[dict[str, np.ndarray]], float] | None = None,
        **fedavg_kwargs: Any,
    ) -> LoraFedAvg:
        """Build from the validated run config (`settings.config.validate`: every key present,
        typed and checked); this class reads none of its `strategy.*` keys."""
        del cfg, validation_loss  # plain averaging needs neither
        return cls(expected_shapes=expected_shapes, **fedavg_kwargs)

    def set_expected(self, shapes: Mapping[str, Sequence[int]]) -> None:
        """Set the keys and shapes of the global adapter (and of every update)."""
        self.expected_shapes = expected_shapes_of(shapes)

    def summary(self) -> None:
        """Log summary configuration of the strategy."""
        super().summary()
        if self.expected_shapes is not None:
            numel = sum(math.prod(s) for s in self.expected_shapes.values())
            log(INFO, "\t└──> Adapter: %d tensors, %d parameters", len(self.expected_shapes), numel)

    # --- what carries over between rounds (checkpoints) --------------------------------

    def state_dict(self) -> dict[str, Any]:
        """What this strategy carries from one round to the next, for a checkpoint.

        Values may be None, bools, numbers, strings, numpy arrays, ArrayRecords, and lists
        and dicts (string keys) of those. The default keeps nothing: plain weighted
        averaging starts every round afresh. A strategy with state between rounds
        (server optimiser moments, per-site ranks) overrides this and `load_state_dict`.
        """
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what `state_dict` returned (the run continues after that round)."""
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state between rounds, got {sorted(state)}")

    # --- which LoRA factors the sites train and send ------------------------------------

    def factor_rule(self, server_round: int) -> tuple[str, str]:
        """(train, send) for this round: which LoRA factors the sites train and which they send
        back, each "AB", "A" or "B" (wire/protocol.py). Default: both, both.

        A strategy that freezes a factor (FFA-LoRA trains only B) or shares only one
        (RoLoRA alternates) overrides this; the train instructions carry it and the
        ClientApp honours it. A factor not trained comes back bit-identical; a factor not
        sent is filled in from the adapter this round's instructions carried, so the norm
        bound, DP wrappers and `weighted_average` always see whole adapters.
        """
        del server_round
        return ("AB", "AB")

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedAvg's instructions, with the round's factor rule when it is not "both, both"."""
        rule = self.factor_rule(server_round)
        for key, value in zip((protocol.TRAIN_FACTORS, protocol.SEND_FACTORS), rule, strict=True):
            if value not in protocol.FACTORS:
                raise ValueError(f"{type(self).__name__}.factor_rule: {key} must be one of "
                                 f"{protocol.FACTORS}, got {value!r}")
        self._round_rule = (str(rule[0]), str(rule[1]))
        self._round_arrays = arrays
        if self._round_rule != ("AB", "AB"):
            config[protocol.TRAIN_FACTORS], config[protocol.SEND_FACTORS] = self._round_rule
        return super().configure_train(server_round, arrays, config, grid)

    # --- what a reply must look like ---------------------------------------------------

    def reply_shapes(self, msg: Message) -> OrderedDict[str, tuple[int, ...]]:
        """The keys and shapes a reply must have: the global adapter's, restricted to the
        factors this round sends (ExactLoRA: the site's rank)."""
        del msg
        shapes = self._require_expected()
        send = self._round_rule[1]
        if send == "AB":
            return shapes
        return OrderedDict((k, v) for k, v in shapes.items() if protocol.factor_of(k) in (None, *send))

    def check_reply(self, msg: Message, site: str) -> SiteCandidate:
        """The screening's check of one content reply (strategies/screening.py `check_reply`),
        with the factors the round does not send filled in."""
        return self._whole(check_reply(msg, self.reply_shapes(msg), self.weighted_by_key, site))

    def _whole(self, candidate: SiteCandidate) -> SiteCandidate:
        """The candidate with every key of the global adapter: what it did not send is the
        adapter this round's instructions carried (it was frozen at the site)."""
        if self._round_rule[1] == "AB":
            return candidate
        if self._round_arrays is None:
            raise RuntimeError(f"{type(self).__name__}: a reply without every factor needs the round's "
                               "adapter; call configure_train() first")
        keys = list(self._require_expected())
        return dataclasses.replace(candidate, state=FilledState(candidate.state, self._round_arrays, keys))

    def _read_whole(self, msg: Message, site: str) -> SiteCandidate:
        """A screened reply as a whole-adapter candidate: cut to the round's factors and filled
        in, or already whole (the screening hands on whole adapters)."""
        records = msg.content.array_records
        expected = self._require_expected()
        if self._round_rule[1] != "AB" and len(records) == 1 and set(next(iter(records.values())).keys()) == set(expected):
            return read_reply(msg, expected, self.weighted_by_key, site)
        return self._whole(read_reply(msg, self.reply_shapes(msg), self.weighted_by_key, site))

    # --- aggregation -------------------------------------------------------------------

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Flower's hook: the replies as candidates, then `aggregate_candidates`.

        Replies here are screened already (strategies/screened.py, perhaps through a DP
        wrapper), so each is read without decoding; a malformed one raises ValueError.
        """
        candidates = []
        for msg in replies:
            site = site_label(msg)
            if msg.has_error():
                raise ValueError(f"{type(self).__name__}: error reply from site {site}: {msg.error.reason}")
            try:
                candidates.append(self._read_whole(msg, site))
            except UpdateRejected as err:
                raise ValueError(f"{type(self).__name__}: reply from site {site}: {err}") from err
        aggregate = self.aggregate_candidates(server_round, canonical_order(candidates))
        return aggregate.arrays, aggregate.metrics

    def aggregate_candidates(self, server_round: int, candidates: list[SiteCandidate]) -> Aggregate:
        """Weigh the candidates (`aggregation_weights`), drop the ones it rejected, average the rest."""
        aggregate = self._aggregate = Aggregate(server_round)
        try:
            weights = self.aggregation_weights(server_round, candidates) if candidates else []
            weights = check_weights(f"{type(self).__name__}.aggregation_weights", candidates, weights)
            aggregate.weights = [(c, w) for c, w in zip(candidates, weights, strict=True) if c.rejected is None]
            if aggregate.weights:
                used = [c for c, _ in aggregate.weights]
                aggregate.arrays = self.weighted_average(used, [w for _, w in aggregate.weights])
                aggregate.metrics = self._aggregate_train_metrics(used)
        finally:
            self._aggregate = None
        self._last = aggregate
        return aggregate

    def aggregate_report(self, server_round: int, candidates: list[SiteCandidate]) -> Aggregate:
        """What round `server_round`'s aggregate did, for its report (strategies/core_hooks.py):
        the weight of each update used, the rejections of `reject` and `current_aggregate.extra`.
        `candidates` are the updates that were aggregated; LookupError if that round was not."""
        del candidates  # the aggregate names its own
        last = self._last
        if last is None or last.server_round != server_round:
            raise LookupError(f"{type(self).__name__}: round {server_round} has not been aggregated")
        return dataclasses.replace(last, extra={**last.extra, "weights": type(self).__name__})

    def aggregation_weights(self, server_round: int, accepted: list[SiteCandidate]) -> list[float]:
        """One weight per candidate: non-negative, summing to one. Default: n_k / sum(n).

        A strategy may reject a candidate here with `self.reject(candidate, reason)` and
        give it weight 0; the weights of the others must still sum to one. What it wants
        in the round's report goes in `self.current_aggregate.extra`.
        """
        del server_round
        total = math.fsum(c.num_examples for c in accepted)
        return [c.num_examples / total for c in accepted]

    def product_scale(self, candidate: SiteCandidate, module: LoraModule) -> float:
        """A site's LoRA scaling of `module` relative to the global adapter's: 1 when rank and
        alpha agree (ExactLoRA accepts other ranks and alphas). The aggregation error weighs
        each site's B_k A_k by it."""
        del candidate, module
        return 1.0

    def reject(self, candidate: SiteCandidate, reason: str) -> None:
        """Reject a candidate from inside `aggregation_weights` (it then needs weight 0)."""
        candidate.rejected = reason
        self.current_aggregate.rejected.append((candidate.site, reason))

    @property
    def current_aggregate(self) -> Aggregate:
        """The round being aggregated: its number, and `extra`, the report's strategy-specific
        entries (JSON-ready). Only inside `aggregation_weights` and `weighted_average`."""
        if self._aggregate is None:
            raise RuntimeError(f"{type(self).__name__}: current_aggregate is only set while aggregating")
        return self._aggregate

    def weighted_average(self, accepted: list[SiteCandidate], weights: list[float]) -> ArrayRecord:
        """sum_k w_k * state_k per tensor, in float64, returned as float32.

        Streams: one tensor of one site is decoded at a time, so the round's extra memory
        is one float64 accumulator plus the float32 result, not a copy per site.
        """
        shapes = self._require_expected()
        averaged: dict[str, Array] = {}
        for key, shape in shapes.items():
            total = np.zeros(shape, dtype=np.float64)
            for candidate, weight in zip(accepted, weights, strict=True):
                total += np.multiply(candidate.state[key], weight, dtype=np.float64)
            averaged[key] = Array(total.astype(np.float32))
            del total
        return ArrayRecord(averaged)

    def _aggregate_train_metrics(self, accepted: list[SiteCandidate]) -> MetricRecord:
        """Weighted average of the metrics every accepted site reported."""
        common = common_metric_keys([c.metrics for c in accepted])
        dropped = sorted({k for c in accepted for k in c.metrics.keys()} - set(common))
        if dropped:
            log(INFO, "aggregate_train: metric(s) %s not reported alike by every site; left out", dropped)
        records = [RecordDict({"metrics": MetricRecord({k: c.metrics[k] for k in common})}) for c in accepted]
        return self.train_metrics_aggr_fn(records, self.weighted_by_key)

    def _require_expected(self) -> OrderedDict[str, tuple[int, ...]]:
        if self.expected_shapes is None:
            raise RuntimeError(
                f"{type(self).__name__}: the expected adapter shapes are not set; pass "
                "expected_shapes or call set_expected() before aggregating"
            )
        return self.expected_shapes


def with_arrays(message: Message, arrays: ArrayRecord) -> Message:
    """The instruction `message` with `arrays` in place of its adapter: a site served its own
    (ExactLoRA: its rank; FedSA-LoRA: its own B)."""
    content = RecordDict({name: arrays if isinstance(record, ArrayRecord) else record
                          for name, record in message.content.items()})
    return Message(content=content, message_type=message.metadata.message_type,
                   dst_node_id=message.metadata.dst_node_id)
