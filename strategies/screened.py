"""ScreenedStrategy: every train reply checked on its own before the layers below see it.

A wrapper (strategies/wrapper.py) that adds, around the rounds of the strategy it holds:

- the checks of strategies/screening.py on every train reply: error, non-finite, wrongly
  keyed or shaped replies are rejected and named with their site, and so are sites that
  sent no reply in time (strategies/roster.py); the round goes on with the others, and
  the layer below gets the accepted replies as fresh float32 replies in a fixed order
  (`clean_messages`), each screened once;
- `strategy.min-sites`, checked once the round is aggregated (after the norm bound's and
  the strategy's own rejections): fewer usable updates stop the run (`TooFewSites`);
- the sites' evaluation replies: failures and missing replies logged by site, each site's
  metrics in the round's report.

It starts each round's report (strategies/round_report.py `RoundReports`, shared with the
layers below) and answers `round_report`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from logging import ERROR, INFO, WARNING

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from . import core_hooks
from .roster import SiteRoster, WatchedGrid
from .round_report import RoundReport, RoundReports, TooFewSites, metric_dict
from .screening import (
    SiteCandidate,
    clean_messages,
    expected_shapes_of,
    screen_train_replies,
    site_label,
)
from .secure_aggregation import note_secure_aggregation
from .wrapper import StrategyWrapper


class ScreenedStrategy(StrategyWrapper):
    """The strategy it holds, behind the per-reply screening and `strategy.min-sites`.

    Parameters
    ----------
    strategy : Strategy
        What aggregates the accepted replies (the rest of the stack).
    reports : RoundReports
        The round reports this stack shares.
    expected_shapes : Mapping[str, Sequence[int]] | None (default: None)
        Keys and shapes of the global adapter; else the bare strategy's, else those of the
        adapter the first round is configured with.
    min_sites : int (default: 0)
        Usable updates a round needs (`strategy.min-sites`); 0 = no minimum.
    """

    def __init__(
        self,
        strategy: Strategy,
        reports: RoundReports,
        expected_shapes: Mapping[str, Sequence[int]] | None = None,
        min_sites: int = 0,
    ) -> None:
        super().__init__(strategy)
        if isinstance(min_sites, bool) or not isinstance(min_sites, int) or min_sites < 0:
            raise ValueError(f"strategy.min-sites: expected an integer >= 0, got {min_sites!r}")
        self.reports = reports
        self.min_sites = min_sites
        self.roster = SiteRoster()
        self.expected_shapes: OrderedDict[str, tuple[int, ...]] | None = None
        shapes = expected_shapes if expected_shapes is not None else core_hooks.expected_shapes(self.core)
        if shapes is not None:
            self.set_expected(shapes)

    def set_expected(self, shapes: Mapping[str, Sequence[int]]) -> None:
        """Set the keys and shapes every update must have, here and in the bare strategy."""
        self.expected_shapes = expected_shapes_of(shapes)
        core_hooks.set_expected(self.core, shapes)

    def summary(self) -> None:
        """Log summary configuration of the strategy."""
        log(INFO, "\t├──> Screening: %s replies checked against the global adapter", type(self.core).__name__)
        if self.min_sites > 0:
            log(INFO, "\t│\t└── Usable replies needed per round (strategy.min-sites): %d", self.min_sites)
        super().summary()

    def wrap_grid(self, grid: Grid) -> Grid:
        """The layers' Grid, watched: the roster learns where each instruction went."""
        return WatchedGrid(super().wrap_grid(grid), self.roster)

    def round_report(self, server_round: int | None = None) -> RoundReport:
        """The report of `server_round` (default: the latest round); LookupError if there is none."""
        return self.reports.get(server_round)

    # --- training ----------------------------------------------------------------------

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The layers' instructions; the first adapter fixes the expected shapes if unset."""
        if self.expected_shapes is None:
            self.set_expected({k: tuple(arrays[k].shape) for k in arrays.keys()})
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Screen, let the layers below aggregate what is left, then hold the round to
        `min_sites` (`TooFewSites`)."""
        if self.expected_shapes is None:
            raise RuntimeError(
                f"{type(self).__name__}: the expected adapter shapes are not set; give them to compose() "
                "(WrapperSettings.expected_shapes) or to the strategy, or configure a round first"
            )
        report = self.reports.begin(server_round)
        replies = list(replies)
        labelled, missing = self.roster.label_replies(replies, MessageType.TRAIN)
        note_secure_aggregation(report, labelled)
        screening = screen_train_replies(labelled, self._check_reply)
        self.reports.reject(server_round, [*screening.rejected, *missing])
        log(INFO, "aggregate_train: %d of %d replies accepted", len(screening.accepted), len(replies))
        self.reports.accept(screening.accepted)
        arrays, metrics = None, None
        if screening.accepted:
            arrays, metrics = self.strategy.aggregate_train(server_round, clean_messages(screening.accepted))
        report.rejected.sort()  # independent of arrival order
        self._require_min_sites(server_round, [u.site for u in report.updates])
        if arrays is None and not report.updates:
            log(WARNING, "round %d: no valid update; the global adapter is unchanged", server_round)
        elif arrays is None:
            log(WARNING, "round %d: %s returned no update; the global adapter is unchanged",
                server_round, type(self.core).__name__)
        return arrays, metrics

    def _check_reply(self, msg: Message, site: str) -> SiteCandidate:
        assert self.expected_shapes is not None
        return core_hooks.check_reply(self.core, msg, site, self.expected_shapes)

    def _require_min_sites(self, server_round: int, usable: Sequence[str]) -> None:
        """Raise `TooFewSites` (logged) if fewer than `min_sites` sites are usable this round."""
        if self.min_sites <= 0 or len(usable) >= self.min_sites:
            return
        error = TooFewSites(server_round, sorted(usable), self.min_sites, sorted(self.reports.get().rejected))
        log(ERROR, "%s", error)
        raise error

    # --- evaluation --------------------------------------------------------------------

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """The layers' aggregation over the content replies, in a fixed order; failures and
        missing replies logged by site, per-site metrics in the round's report."""
        labelled, missing = self.roster.label_replies(list(replies), MessageType.EVALUATE)
        content = []
        for site, msg in labelled:
            if msg.has_error():
                log(WARNING, "round %d: evaluation by site %s failed (code %d): %s",
                    server_round, site, msg.error.code, msg.error.reason)
            else:
                content.append(msg)
        for site, reason in missing:
            log(WARNING, "round %d: evaluation by site %s failed: %s", server_round, site, reason)
        # A fixed order keeps the float sums, and so the result, independent of arrival order.
        content.sort(key=lambda m: (site_label(m), m.metadata.src_node_id))
        report = self.reports.current(server_round)
        report.evaluated = [(site_label(m), metric_dict(m.content.metric_records.values())) for m in content]
        return self.strategy.aggregate_evaluate(server_round, content) if content else None
