"""Fed-MedLoRA+: adapters weighted by a validation loss, scored at the coordinator or at the sites.

Li et al. 2026, "A Federated and Parameter-Efficient Framework for Large Language Model
Training in Medicine" (arXiv 2601.22124).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from wire import protocol
from wire.arrays import arrayrecord_nbytes, metricrecord_nbytes, to_arrayrecord
from wire.transport import sent_nbytes

from .base import LoraFedAvg
from .registry import read_settings, register
from .round_report import Aggregate
from .screening import SiteCandidate, UpdateRejected

# Who computes L_k: the coordinator on a validation set it holds (the paper), or every
# site on its own validation split (no data at the coordinator).
VALIDATION_MODES = ("coordinator", "sites")


@dataclass
class Scores:
    """A round's L_k, one per candidate (None: no site answered usably), what they are
    ("validation loss" or "site-scored validation loss"), and the report's entries."""

    losses: list[float] | None
    where: str
    extra: dict[str, Any]


@register("fedmedlora-plus")
class FedMedLoRAPlus(LoraFedAvg):
    """Fed-MedLoRA+ (Li et al. 2026, arXiv 2601.22124).

    Each accepted site adapter (candidate k) gets a validation loss L_k (mean cross-entropy
    per answer token), and the adapters are averaged with w_k proportional to
    exp((1 - L_k) / temperature), normalised: softmax(-L_k / T). With temperature 1 and no
    size term this is the authors' exp(1 - L_k). A candidate whose L_k is not finite is
    rejected. Who computes L_k is `validation`:

    - "coordinator" (the paper): `score_fn` scores each candidate on a validation set the
      coordinator holds.
    - "sites": no data at the coordinator. Before weighing the round's screened updates
      (`aggregate_candidates`), the coordinator sends every site whose update was accepted,
      through the run's Grid (handed over by `start`: `use_grid`), one message of type
      `protocol.SCORE_MESSAGE_TYPE` carrying all K candidates (ArrayRecords `candidate-0`
      .. `candidate-{K-1}`) and the round's config record; each site returns K losses on its
      own validation split (client_app/handlers.py `score`). L_k is the plain mean of the K-th
      losses over the sites that answered usably (every site counts the same, whatever the
      size of its validation split). An error reply, a missing reply (after `timeout`
      seconds), or a reply whose losses are not K finite numbers >= 0 is logged with the
      site and left out; if no site answers usably, every candidate is rejected and the
      global adapter stays as it was. The extra traffic is K adapters down and K numbers
      up per scoring site per round.

    The losses and weights are kept in the round report's `extra["validation-loss"]` and
    `["validation-weight"]` (by candidate site), the mode in `["validation-mode"]`; in
    "sites" mode also each scoring site's losses (`["site-scores"]`), the sites left out
    (`["scoring-ignored"]`) and the scoring bytes per site (`["extra-traffic"]`, which the
    coordinator's round report adds to each site's bytes down and up).

    Parameters
    ----------
    score_fn : Callable[[dict[str, np.ndarray]], float] | None (default: None)
        Returns L_k for one candidate adapter (same keys and shapes as the global one).
        Required with validation = "coordinator"; not used with "sites".
    temperature : float (default: 1.0)
        T in exp((1 - L_k) / T); larger values flatten the weights. Must be > 0.
    size_weighted : bool (default: False)
        Also multiply each weight by the site's `num-examples` n_k.
    validation : str (default: "coordinator")
        "coordinator" or "sites" (see above).
    timeout : float (default: 3600.0)
        "sites": seconds to wait for the scoring replies (the run's round timeout).
    expected_shapes : Mapping[str, Sequence[int]] | None (default: None)
        Keys and shapes of the global adapter (see `LoraFedAvg`).
    **fedavg_kwargs
        Passed to FedAvg (sampling and record keys).
    """

    def __init__(
        self,
        score_fn: Callable[[dict[str, np.ndarray]], float] | None = None,
        temperature: float = 1.0,
        size_weighted: bool = False,
        validation: str = "coordinator",
        timeout: float = 3600.0,
        expected_shapes: Mapping[str, Sequence[int]] | None = None,
        **fedavg_kwargs: Any,
    ) -> None:
        if validation not in VALIDATION_MODES:
            raise ValueError(f"strategy.validation: {validation!r} is not one of {list(VALIDATION_MODES)}")
        if validation == "coordinator" and not callable(score_fn):
            raise TypeError(f"score_fn must be callable with validation = 'coordinator', got {score_fn!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
            raise ValueError(f"strategy.temperature: expected a number > 0, got {temperature!r}")
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"strategy.temperature: expected a number > 0, got {temperature!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"strategy.round-timeout: expected a number > 0, got {timeout!r}")
        super().__init__(expected_shapes=expected_shapes, **fedavg_kwargs)
        self.score_fn = score_fn
        self.temperature = float(temperature)
        self.size_weighted = bool(size_weighted)
        self.validation = validation
        self.timeout = float(timeout)
        # "sites": the run's Grid (`use_grid`) and the round's config record (`configure_train`).
        self._grid: Grid | None = None
        self._round_config: ConfigRecord | None = None
        self._scores: Scores | None = None  # the round's L_k, between scoring and weighing

    @dataclass(frozen=True)
    class Settings:
        """Its `strategy.*` keys (the coordinator applies `validation_instances` when it builds
        the scoring set, server_app/app.py)."""

        temperature: float
        size_weighted: bool
        validation: str
        validation_instances: int

    @classmethod
    def from_run_config(
        cls,
        cfg: Any,
        expected_shapes: Mapping[str, Sequence[int]],
        validation_loss: Callable[[dict[str, np.ndarray]], float] | None = None,
        **fedavg_kwargs: Any,
    ) -> FedMedLoRAPlus:
        """Build from the run config: `strategy.temperature`, `strategy.size-weighted`,
        `strategy.validation` and (for "sites") `strategy.round-timeout`."""
        settings = read_settings(cls, cfg.strategy)
        validation = settings.validation
        if validation == "coordinator" and validation_loss is None:
            raise ValueError("strategy.name: fedmedlora-plus needs the coordinator's validation loss "
                             "(or strategy.validation = 'sites')")
        return cls(
            score_fn=validation_loss if validation == "coordinator" else None,
            temperature=settings.temperature,
            size_weighted=settings.size_weighted,
            validation=validation,
            timeout=cfg.strategy.round_timeout,
            expected_shapes=expected_shapes,
            **fedavg_kwargs,
        )

    def summary(self) -> None:
        """Log summary configuration of the strategy."""
        super().summary()
        log(INFO, "\t└──> Validation weighting: temperature %g, size-weighted %s, scored by the %s",
            self.temperature, self.size_weighted, self.validation)

    def use_grid(self, grid: Grid) -> None:
        """The run's Grid, for the scoring messages of "sites" (strategies/core_hooks.py)."""
        self._grid = grid

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedAvg's sampling; the round's config is kept for the scoring messages."""
        messages = super().configure_train(server_round, arrays, config, grid)
        # A copy: it carries the base model, the LoRA config and `server-round` (set above).
        self._round_config = ConfigRecord(dict(config))
        return messages

    def aggregate_candidates(self, server_round: int, candidates: list[SiteCandidate]) -> Aggregate:
        """Score the candidates (L_k: at the coordinator, or a round trip to the sites), then
        weigh and average them."""
        self._scores = self.scores(server_round, candidates) if candidates else None
        try:
            return super().aggregate_candidates(server_round, candidates)
        finally:
            self._scores = None

    def scores(self, server_round: int, accepted: list[SiteCandidate]) -> Scores:
        """L_k for every candidate (None: no site answered usably) and the report's entries."""
        extra: dict[str, Any] = {}
        if self.validation == "sites":
            return Scores(self.site_losses(server_round, accepted, extra), "site-scored validation loss", extra)
        assert self.score_fn is not None
        return Scores([float(self.score_fn(candidate.state)) for candidate in accepted], "validation loss", extra)

    def aggregation_weights(self, server_round: int, accepted: list[SiteCandidate]) -> list[float]:
        """w_k proportional to exp((1 - L_k) / T) [* n_k]; non-finite L_k rejects the candidate."""
        scores = self._scores  # set by `aggregate_candidates`, the one caller
        assert scores is not None
        extra = self.current_aggregate.extra
        extra["validation-mode"] = self.validation
        extra["temperature"] = self.temperature
        extra["size-weighted"] = self.size_weighted
        extra.update(scores.extra)
        if scores.losses is None:
            for candidate in accepted:
                self.reject(candidate, "strategy.validation = 'sites': no site returned usable "
                                       "validation losses for this round's candidates")
            extra["validation-loss"] = {}
            extra["validation-weight"] = {}
            return [0.0] * len(accepted)
        return self._softmax_weights(server_round, accepted, scores.losses, scores.where, extra)

    def _softmax_weights(
        self, server_round: int, accepted: list[SiteCandidate], raw: list[float], where: str,
        extra: dict[str, Any],
    ) -> list[float]:
        losses: list[float | None] = []
        for candidate, loss in zip(accepted, raw, strict=True):
            if math.isfinite(loss):
                losses.append(loss)
            else:
                losses.append(None)
                self.reject(candidate, f"{where} is not finite ({loss})")

        # Log-weights; subtracting the largest keeps exp() in range for any losses.
        exponents = {
            i: (1.0 - loss) / self.temperature
            + (math.log(accepted[i].num_examples) if self.size_weighted else 0.0)
            for i, loss in enumerate(losses)
            if loss is not None
        }
        weights = [0.0] * len(accepted)
        if exponents:
            top = max(exponents.values())
            unnormalised = {i: math.exp(e - top) for i, e in exponents.items()}
            total = math.fsum(unnormalised.values())
            for i, value in unnormalised.items():
                weights[i] = value / total

        extra["validation-loss"] = {}
        extra["validation-weight"] = {}
        for i, candidate in enumerate(accepted):
            if losses[i] is None:
                continue
            extra["validation-loss"][candidate.site] = losses[i]
            extra["validation-weight"][candidate.site] = weights[i]
            log(INFO, "round %d: site %s %s %.4f -> weight %.4f",
                server_round, candidate.site, where, losses[i], weights[i])
        return weights

    # --- site-side scoring -------------------------------------------------------------

    def scoring_message(self, accepted: list[SiteCandidate]) -> RecordDict:
        """All K candidates (`candidate-0` ..) and the round's config, one RecordDict for every site."""
        assert self._round_config is not None
        content = RecordDict({protocol.CONFIG: ConfigRecord(dict(self._round_config))})
        for k, candidate in enumerate(accepted):
            content[protocol.candidate_name(k)] = _candidate_record(candidate)
        return content

    def site_losses(
        self, server_round: int, accepted: list[SiteCandidate], extra: dict[str, Any]
    ) -> list[float] | None:
        """L_k = plain mean over the usable scoring sites of their losses for candidate k.

        Sends one scoring message to each accepted site's node and waits up to `timeout`.
        Returns None when no site answered usably. Fills `extra` with each site's losses,
        the sites left out and the scoring traffic.
        """
        if self._grid is None or self._round_config is None:
            raise RuntimeError(
                f"{type(self).__name__}: strategy.validation = 'sites' needs the run's Grid (handed over by "
                "start through use_grid()) and the round's config (configure_train() runs first)"
            )
        num = len(accepted)
        labels = _node_labels(accepted)
        content = self.scoring_message(accepted)
        bytes_down = sum(arrayrecord_nbytes(content[protocol.candidate_name(k)]) for k in range(num))
        messages = [
            Message(content=content, dst_node_id=node, message_type=protocol.SCORE_MESSAGE_TYPE,
                    group_id=str(server_round))
            for node in labels
        ]
        log(INFO, "round %d: sending %d candidate adapters (%.2f MB) to %d site(s) to score",
            server_round, num, bytes_down / 1e6, len(messages))
        replies = list(self._grid.send_and_receive(messages, timeout=self.timeout))
        bytes_down = sent_nbytes(content) or bytes_down  # as sent, where transport.encoding encoded it

        # Sent, whether or not a site answers; bytes up are counted for content replies.
        traffic = {label: {"bytes-down": bytes_down, "bytes-up": 0} for label in labels.values()}
        scores: dict[str, dict[str, Any]] = {}
        ignored: dict[str, str] = {}
        answered: set[int] = set()
        for msg in replies:
            node = msg.metadata.src_node_id
            if node not in labels or node in answered:
                log(WARNING, "round %d: unexpected scoring reply from node %d; ignored", server_round, node)
                continue
            answered.add(node)
            label = labels[node]
            if msg.has_error():
                ignored[label] = f"error reply (code {msg.error.code}): {msg.error.reason}"
                log(WARNING, "round %d: scoring by site %s failed (code %d): %s; its losses are left out",
                    server_round, label, msg.error.code, msg.error.reason)
                continue
            traffic[label]["bytes-up"] = sum(metricrecord_nbytes(r) for r in msg.content.metric_records.values())
            try:
                scores[label] = _check_scores(msg.content, num)
            except UpdateRejected as err:
                ignored[label] = str(err)
                log(WARNING, "round %d: scores from site %s ignored: %s", server_round, label, err)
        for node, label in labels.items():
            if node not in answered:
                ignored[label] = f"no reply within {self.timeout:g} s"
                log(WARNING, "round %d: site %s sent no scores within %g s; it is left out",
                    server_round, label, self.timeout)

        extra["scoring-mean"] = "plain mean over the scoring sites"
        extra["site-scores"] = {
            label: {
                "candidate-loss": {c.site: loss for c, loss in zip(accepted, s["losses"], strict=True)},
                "num-examples": s["num-examples"],
                "num-tokens": s["num-tokens"],
            }
            for label, s in sorted(scores.items())
        }
        extra["scoring-ignored"] = dict(sorted(ignored.items()))
        extra["extra-traffic"] = dict(sorted(traffic.items()))
        if not scores:
            log(WARNING, "round %d: no site returned usable validation losses (%s)", server_round,
                "; ".join(f"{k}: {v}" for k, v in sorted(ignored.items())) or "no site was asked")
            return None
        # A fixed order keeps the float sums independent of arrival order.
        ordered = [scores[label]["losses"] for label in sorted(scores)]
        return [math.fsum(site[k] for site in ordered) / len(ordered) for k in range(num)]


def _candidate_record(candidate: SiteCandidate) -> ArrayRecord:
    """The candidate as the site sent it (no copy), or its decoded state if the bound moved it."""
    if candidate.clip_factor is None and candidate.message is not None and candidate.message.has_content():
        records = candidate.message.content.array_records
        if len(records) == 1:
            return next(iter(records.values()))
    return to_arrayrecord(candidate.state)


def _node_labels(accepted: list[SiteCandidate]) -> dict[int, str]:
    """One label per node, in node order: the site's name (with the node id if names repeat)."""
    names: dict[int, str] = {}
    for candidate in accepted:
        names.setdefault(candidate.node_id, candidate.site)
    counts: dict[str, int] = {}
    for name in names.values():
        counts[name] = counts.get(name, 0) + 1
    return {node: name if counts[name] == 1 else f"{name} (node {node})" for node, name in sorted(names.items())}


def _check_scores(content: RecordDict, num: int) -> dict[str, Any]:
    """A site's scoring reply: K finite losses >= 0, plus the instances and tokens it scored."""
    records = [r for r in content.metric_records.values() if protocol.SCORE_LOSSES in r]
    if len(records) != 1:
        raise UpdateRejected(f"expected one MetricRecord with '{protocol.SCORE_LOSSES}', found {len(records)}")
    record: MetricRecord = records[0]
    losses = record[protocol.SCORE_LOSSES]
    if not isinstance(losses, list):
        losses = [losses]
    if len(losses) != num:
        raise UpdateRejected(f"expected {num} losses in '{protocol.SCORE_LOSSES}', got {len(losses)}")
    values = [float(v) for v in losses]
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise UpdateRejected(f"losses must be finite numbers >= 0, got {values}")
    counts = {}
    for key in (protocol.SCORE_INSTANCES, protocol.SCORE_TOKENS):
        value = record.get(key, 0)
        counts[key] = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0
    return {"losses": values, **counts}
