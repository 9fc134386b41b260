"""What a round did, as typed values: the core's aggregate and the round's report.

`LoraFedAvg.aggregate_candidates` returns an `Aggregate`. The wrappers that strategies/compose.py
stacks around a strategy share one `RoundReports`: the screening starts each round's
`RoundReport`, the norm bound and the round report wrapper (strategies/reporting.py) add to
it, and the ServerApp takes it with `round_report` (server_app/report.py prints it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from logging import WARNING
from typing import Any

from flwr.app import ArrayRecord, MetricRecord
from flwr.common.logger import log

from .screening import Rejection, SiteCandidate

Metrics = dict[str, float | list[float]]


@dataclass
class SiteUpdate:
    """One accepted site update, as the round report shows it."""

    node_id: int
    site: str
    num_examples: float
    weight: float
    metrics: Metrics
    bytes_up: int
    sha256: str = ""  # the adapter as it travelled (wire/transport.py)
    reported: dict[str, str] = field(default_factory=dict)  # base model and versions the site reported


@dataclass
class Aggregate:
    """What a strategy made of the candidates it was given in one round (`LoraFedAvg`'s
    `aggregate_candidates`; its `aggregate_report`, strategies/core_hooks.py)."""

    server_round: int
    arrays: ArrayRecord | None = None
    metrics: MetricRecord | None = None
    weights: list[tuple[SiteCandidate, float]] = field(default_factory=list)  # the used candidates
    rejected: list[Rejection] = field(default_factory=list)  # by `LoraFedAvg.reject`
    extra: dict[str, Any] = field(default_factory=dict)  # strategy-specific, JSON-ready


@dataclass
class RoundReport:
    """One round: the accepted updates with their weights, the rejections, the strategy's
    extras, and the per-site evaluation results."""

    server_round: int
    updates: list[SiteUpdate] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # strategy-specific, JSON-ready
    evaluated: list[tuple[str, Metrics]] = field(default_factory=list)  # (site, metrics)


class TooFewSites(RuntimeError):
    """Fewer sites than `strategy.min-sites` replied usably in a round: the run stops.

    Raised before the round's aggregate is used, so the global adapter (and the ServerApp's
    checkpoint) stay those of the last finished round, from which `resume = true`
    continues. The message names the round, how many sites replied usably against the
    minimum, and every failed site with its reason (an error reply, a rejected update, or
    no reply within the round timeout).
    """

    def __init__(self, server_round: int, usable: Sequence[str], min_sites: int,
                 failed: Sequence[Rejection]) -> None:
        self.server_round = server_round
        self.usable = list(usable)
        self.min_sites = min_sites
        self.failed = list(failed)
        shown = ", ".join(self.usable) if self.usable else "none"
        failures = "; ".join(f"{site}: {reason}" for site, reason in self.failed) or "none (too few sites were sampled)"
        super().__init__(
            f"round {server_round}: {len(self.usable)} site(s) replied usably ({shown}), fewer than "
            f"strategy.min-sites = {min_sites}; the run stops without aggregating round {server_round}, "
            f"so the global adapter stays that of round {server_round - 1}. Failed site(s): {failures}"
        )


def metric_dict(records: Iterable[MetricRecord]) -> Metrics:
    """Plain-Python copy of MetricRecords (floats, or lists of floats)."""
    out: Metrics = {}
    for record in records:
        for key, value in record.items():
            out[key] = [float(v) for v in value] if isinstance(value, list) else float(value)
    return out


def site_update(candidate: SiteCandidate, weight: float) -> SiteUpdate:
    """The report's row for an accepted candidate."""
    return SiteUpdate(
        node_id=candidate.node_id,
        site=candidate.site,
        num_examples=candidate.num_examples,
        weight=weight,
        metrics=metric_dict([candidate.metrics]),
        bytes_up=candidate.bytes_up,
        sha256=candidate.sha256,
        reported=dict(candidate.reported),
    )


class RoundReports:
    """The report of the latest round, shared by the wrappers of one stack (strategies/compose.py).

    The screening starts a round's report (`begin`) with the rows of the updates it accepted
    (`accept`); the round report wrapper turns the rows the strategy used into
    `RoundReport.updates` with their weights (`row`); every layer adds its rejections (`reject`).
    """

    def __init__(self) -> None:
        self._report: RoundReport | None = None
        self._rows: dict[tuple[str, int], SiteUpdate] = {}  # accepted this round, by (site, node)

    def begin(self, server_round: int) -> RoundReport:
        self._report, self._rows = RoundReport(server_round=server_round), {}
        return self._report

    def current(self, server_round: int) -> RoundReport:
        """This round's report, begun if no layer began it yet (evaluation, a wrapper used alone)."""
        if self._report is None or self._report.server_round != server_round:
            return self.begin(server_round)
        return self._report

    def get(self, server_round: int | None = None) -> RoundReport:
        """The report of `server_round` (default: the latest round); LookupError if there is none."""
        report = self._report
        if report is None or (server_round is not None and report.server_round != server_round):
            have = "no round yet" if report is None else f"round {report.server_round}"
            raise LookupError(f"no report for round {server_round} ({have})")
        return report

    def accept(self, candidates: Iterable[SiteCandidate]) -> None:
        self._rows = {(c.site, c.node_id): site_update(c, 0.0) for c in candidates}

    def row(self, candidate: SiteCandidate, weight: float) -> SiteUpdate:
        """The report's row for a used update: the one taken when it was accepted (its bytes as
        it travelled), with its weight."""
        row = self._rows.get((candidate.site, candidate.node_id))
        return site_update(candidate, weight) if row is None else dataclasses.replace(row, weight=weight)

    def reject(self, server_round: int, rejected: Sequence[Rejection]) -> None:
        """Log the rejections and add them to the round's report."""
        for site, reason in rejected:
            log(WARNING, "round %d: update from site %s rejected: %s", server_round, site, reason)
        self.current(server_round).rejected.extend(rejected)
