"""RoundReporting: the round report's account of the aggregate, right above the strategy.

A wrapper (strategies/wrapper.py) directly above the bare strategy (or the DP wrapper around
it), so it sees exactly the updates the aggregation got and the adapter it returned. After
each aggregation it puts in the round's report (strategies/round_report.py):

- each used update with the weight the strategy gave it (`aggregate_report`,
  strategies/core_hooks.py; which kind of weight in `extra["weights"]`), the updates the
  strategy rejected and its own report entries;
- the aggregation error ||sum_k p_k B_k A_k - B A|| / ||sum_k p_k B_k A_k||
  (`strategy.aggregation-error`, strategies/aggregation_error.py);

and it hands on the aggregate as float32 with the updates' keys (and shapes, unless the
strategy says it may widen them), refusing a non-finite one.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import ERROR, WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp.strategy import Strategy

from . import core_hooks
from .aggregation_error import aggregation_error
from .lora_algebra import LoraModule, lora_modules
from .round_report import Aggregate, RoundReport, RoundReports
from .screening import clean_messages, read_screened
from .wrapper import StrategyWrapper


class RoundReporting(StrategyWrapper):
    """The strategy it holds, its aggregate accounted for in the round's report.

    Parameters
    ----------
    strategy : Strategy
        The bare strategy, or Flower's DP wrapper around it.
    reports : RoundReports
        The round reports this stack shares.
    aggregation_error : bool (default: True)
        Measure each round's aggregation error (`strategy.aggregation-error`).
    dp_mode : str (default: "none")
        `strategy.dp`: with DP, unequal weights are warned about (they lower the noise).
    """

    def __init__(self, strategy: Strategy, reports: RoundReports, *, aggregation_error: bool = True,
                 dp_mode: str = "none") -> None:
        super().__init__(strategy)
        self.reports = reports
        self.aggregation_error = bool(aggregation_error)
        self.dp_mode = dp_mode

    def round_report(self, server_round: int | None = None) -> RoundReport:
        """The report of `server_round` (default: the latest round); LookupError if there is none."""
        return self.reports.get(server_round)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The strategy's aggregate of the replies, reported (module docstring)."""
        core = self.core
        candidates = [read_screened(msg, core_hooks.weight_key(core)) for msg in replies]
        if not candidates:
            return None, None
        record = next(iter(candidates[0].message.content.array_records.values()))
        shapes = {key: tuple(record[key].shape) for key in record.keys()}
        # New records: Flower's robust strategies pop the arrays of what they get.
        shared_metrics = not core_hooks.reads_site_metrics(core)
        arrays, metrics = self.strategy.aggregate_train(server_round, clean_messages(candidates, shared_metrics))
        aggregate = core_hooks.aggregate_report(core, server_round, candidates)
        # The updates as they came here, by site: under a DP wrapper the strategy's own copies
        # are clipped again, and the report measures the updates the round was given.
        given = {(c.site, c.node_id): c for c in candidates}
        aggregate.weights = [(given.get((c.site, c.node_id), c), w) for c, w in aggregate.weights]
        report = self.reports.current(server_round)
        report.updates = [self.reports.row(c, w) for c, w in aggregate.weights]
        report.extra.update(aggregate.extra)
        self.reports.reject(server_round, aggregate.rejected)
        if arrays is None:
            return None, metrics
        if self.aggregation_error and aggregate.weights:
            report.extra["aggregation-error"] = self._aggregation_error(aggregate, arrays)
        checked = self._checked_output(server_round, arrays, shapes, report)
        if checked is not None and self.dp_mode != "none":
            self._warn_unequal_weights(server_round, [u.weight for u in report.updates])
        return checked, metrics

    def _aggregation_error(self, aggregate: Aggregate, arrays: ArrayRecord) -> dict[str, float]:
        """The error of the returned adapter (for a personalised strategy, the one for a new
        site) against the weighted sum of the used updates' products."""
        returned = {key: arrays[key].numpy() for key in arrays.keys()}
        scale = core_hooks.product_scale(self.core)

        def site_scale(i: int, module: LoraModule) -> float:
            return scale(aggregate.weights[i][0], module)

        # The global adapter's modules (their rank is the one `product_scale` compares with),
        # as the strategy knows them, else as returned.
        shapes = core_hooks.expected_shapes(self.core) or {key: value.shape for key, value in returned.items()}
        modules = lora_modules(shapes)
        return aggregation_error(modules, [(c.state, w) for c, w in aggregate.weights], returned, site_scale)

    def _checked_output(
        self, server_round: int, arrays: ArrayRecord, shapes: dict[str, tuple[int, ...]], report: RoundReport
    ) -> ArrayRecord | None:
        """The aggregate with the updates' keys in float32, None if it is not finite.

        Returned as it is when it is float32 in the updates' key order already: ExactLoRA
        recognises its aggregate by identity in the next round."""
        name = type(self.strategy).__name__
        if set(arrays.keys()) != set(shapes):
            raise RuntimeError(f"{name} returned keys that differ from the global adapter's")
        same_shapes = core_hooks.keeps_adapter_shapes(self.core)
        as_is = list(arrays.keys()) == list(shapes)
        for key, shape in shapes.items():
            values = arrays[key].numpy()
            if same_shapes and values.shape != shape:
                raise RuntimeError(f"{name} returned {key} with shape {values.shape}, expected {shape}")
            if not np.isfinite(values).all():
                log(ERROR, "round %d: %s produced non-finite values in %s; the global adapter is unchanged",
                    server_round, name, key)
                report.extra["output-rejected"] = f"non-finite values in {key}"
                return None
            as_is = as_is and values.dtype == np.float32
        if as_is:
            return arrays
        return ArrayRecord({key: Array(np.asarray(arrays[key].numpy(), dtype=np.float32)) for key in shapes})

    def _warn_unequal_weights(self, server_round: int, weights: list[float]) -> None:
        if weights and max(weights) - min(weights) > 1e-9:
            log(WARNING, "round %d: strategy.dp: Flower's noise is calibrated for equal site weights "
                "(1/%d); this round's weights range %.3g..%.3g, so its noise multiplier towards the largest "
                "site is lower than strategy.dp-noise-multiplier: the epsilon reported is computed at that lower "
                "one (fedmedlora-equal avoids the loss)", server_round, len(weights), min(weights), max(weights))
