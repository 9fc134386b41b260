"""NormBound: `strategy.max-update-norm` on the screened updates, before they are aggregated.

A wrapper (strategies/wrapper.py): each update's norm through its LoRA factors
(strategies/clipping.py) against the adapter its round started from; an update over the
bound is moved toward that adapter until it meets it ("clip") or left out ("reject"). The
norms, the clipped sites and the rejections go in the round's report.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable
from logging import INFO, WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from wire.arrays import from_arrayrecord

from . import core_hooks
from .clipping import UPDATE_NORM_ACTIONS
from .round_report import RoundReports
from .screening import bound_update_norms, clean_messages, read_screened
from .wrapper import StrategyWrapper


class NormBound(StrategyWrapper):
    """The strategy it holds, given updates whose norm is at most `bound`.

    Parameters
    ----------
    strategy : Strategy
        What aggregates the bounded updates.
    reports : RoundReports
        The round reports this stack shares.
    bound : float
        `strategy.max-update-norm` (> 0).
    action : str (default: "clip")
        `strategy.update-norm-action`: "clip" or "reject".
    """

    def __init__(self, strategy: Strategy, reports: RoundReports, bound: float, action: str = "clip") -> None:
        super().__init__(strategy)
        if isinstance(bound, bool) or not (math.isfinite(bound) and bound > 0):
            raise ValueError(f"strategy.max-update-norm: expected a number > 0, got {bound!r}")
        if action not in UPDATE_NORM_ACTIONS:
            raise ValueError(f"strategy.update-norm-action: {action!r} is not one of {list(UPDATE_NORM_ACTIONS)}")
        self.reports = reports
        self.bound = float(bound)
        self.action = action
        self._global_arrays: ArrayRecord | None = None
        self._global_state: OrderedDict[str, np.ndarray] | None = None

    def summary(self) -> None:
        """Log summary configuration of the strategy."""
        log(INFO, "\t├──> Update norm bound: %g (%s)", self.bound, self.action)
        super().summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The layers' instructions; the adapter they carry is what the norms are measured from."""
        self._global_arrays, self._global_state = arrays, None  # decoded only if a round needs it
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def global_state(self) -> OrderedDict[str, np.ndarray]:
        """The decoded adapter this round started from; raises if no round has been configured."""
        if self._global_state is None:
            if self._global_arrays is None:
                raise RuntimeError(f"{type(self).__name__}: strategy.max-update-norm needs the global adapter; "
                                   "call configure_train() before aggregating")
            self._global_state = from_arrayrecord(self._global_arrays)
        return self._global_state

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Bound every update, then let the layers below aggregate the kept ones."""
        key = core_hooks.weight_key(self.core)
        candidates = [read_screened(msg, key) for msg in replies]
        if not candidates:
            return None, None
        bound = bound_update_norms(candidates, self.global_state(), self.bound, self.action)
        report = self.reports.current(server_round)
        report.extra["update-norm"] = bound.norms
        if bound.clipped:
            report.extra["clipped"] = {s: {k: c[k] for k in ("update-norm", "factor")} for s, c in bound.clipped.items()}
        for site, clip in bound.clipped.items():
            log(WARNING, "round %d: update from site %s clipped: update norm %.4g exceeds "
                "strategy.max-update-norm = %g; its A and B deltas were scaled by %.4g (norm now %.4g)",
                server_round, site, clip["update-norm"], self.bound, clip["factor"], clip["norm-after"])
        self.reports.reject(server_round, bound.rejected)
        if not bound.kept:
            return None, None
        return self.strategy.aggregate_train(server_round, clean_messages(bound.kept))
