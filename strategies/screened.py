"""ScreenedStrategy: the one wrapper that puts every strategy behind the same screening.

In the style of Flower's DP wrappers, it wraps a strategy (`inner`: a `LoraFedAvg`, one of
Flower's strategies, or a DP wrapper around either) and adds, around its rounds:

- the checks of strategies/screening.py on every train reply: error, non-finite, wrongly
  keyed or shaped replies are rejected and named with their site, and so are sites that
  sent no reply in time (`WatchedGrid`); the round goes on with the others;
- the update-norm bound (`strategy.max-update-norm`, strategies/clipping.py);
- the FedProx coefficient (`strategy.proximal-mu`) in every train instruction;
- `strategy.min-sites`, checked once per round after the core's own rejections: fewer
  usable updates stop the run (`TooFewSites`);
- the round's report, a `RoundReport` the ServerApp takes with `round_report`;
- continuing a run at a later round (`start(first_round=...)`).

The accepted replies go to the core in a fixed order: a `LoraFedAvg` core directly gets
the candidates (`aggregate_candidates`); anything else gets fresh float32 replies. Under
a DP wrapper the replies pass through it first and are screened once, here.

Report weights (`SiteUpdate.weight`) are the strategy's effective weights where it has them:
a `LoraFedAvg` core's own weights; the `num-examples` shares of FedAvg-style averaging
(FedProx; FedAvgM, FedAdam, FedYogi average with these shares before their server-side
step); 1 for the update Krum selects and 0 for the others. FedMedian and FedTrimmedAvg have
no per-site weight: they report the `num-examples` shares as well (the report's
`extra["weights"]` says which kind a round used, except for a `LoraFedAvg` core's own).
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from logging import ERROR, INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from wire.arrays import from_arrayrecord

from .aggregation_error import aggregation_error
from .base import LoraFedAvg
from .clipping import UPDATE_NORM_ACTIONS
from .flower_compat import FLOWER_STATE
from .lora_pairs import LoraModule, lora_modules
from .round_report import Aggregate, RoundReport, TooFewSites, metric_dict, site_update
from .screening import (
    Rejection,
    SiteCandidate,
    bound_update_norms,
    check_reply,
    common_metric_keys,
    expected_shapes_of,
    reply_site_name,
    screen_train_replies,
    site_label,
)


class ScreenedStrategy(Strategy):
    """Any flwr strategy behind the per-reply screening, the norm bound and `min-sites`.

    Parameters
    ----------
    inner : Strategy
        The strategy that aggregates the accepted replies (possibly a DP wrapper).
    expected_shapes : Mapping[str, Sequence[int]] | None (default: None)
        Keys and shapes of the global adapter; else a `LoraFedAvg` core's, else taken from
        `initial_arrays` in `start`.
    core : Strategy | None (default: inner)
        The innermost strategy (under any DP wrapper): its `weighted_by_key` is the
        screened weight key, and a `LoraFedAvg` core checks replies (`check_reply`) and
        supplies the report's weights.
    """

    invariants: tuple[str, ...] = ()

    def __init__(
        self,
        inner: Strategy,
        expected_shapes: Mapping[str, Sequence[int]] | None = None,
        *,
        core: Strategy | None = None,
    ) -> None:
        self.inner = inner
        self.core = inner if core is None else core
        self.weighted_by_key = str(getattr(self.core, "weighted_by_key", "num-examples"))
        self.dp_mode = "none"
        self.expected_shapes: OrderedDict[str, tuple[int, ...]] | None = None
        if isinstance(self.core, LoraFedAvg):
            self.invariants = self.core.invariants
            if expected_shapes is None:
                expected_shapes = self.core.expected_shapes
        if expected_shapes is not None:
            self.set_expected(expected_shapes)
        self.max_update_norm = 0.0
        self.update_norm_action = "clip"
        self.proximal_mu = 0.0
        self.min_sites = 0  # usable replies a round needs (`strategy.min-sites`); 0 = no minimum
        self.aggregation_error = True  # the report's `aggregation-error` (strategies/aggregation_error.py)
        self._global_arrays: ArrayRecord | None = None
        self._global_state: OrderedDict[str, np.ndarray] | None = None
        self._names_by_node: dict[int, str] = {}  # node id -> the site name it sent or registered
        self._exchanges: dict[str, Exchange] = {}  # message type -> the last exchange (`WatchedGrid`)
        self._report: RoundReport | None = None

    # --- set-up ------------------------------------------------------------------------

    def configure_screening(
        self,
        max_update_norm: float = 0.0,
        update_norm_action: str = "clip",
        proximal_mu: float = 0.0,
        min_sites: int = 0,
        aggregation_error: bool = True,
    ) -> None:
        """Set the update-norm bound, the FedProx coefficient sent to sites, the number of
        usable replies a round needs (`strategy.min-sites`; 0 = no minimum), and whether each
        round measures its aggregation error (`strategy.aggregation-error`)."""
        if isinstance(min_sites, bool) or not isinstance(min_sites, int) or min_sites < 0:
            raise ValueError(f"strategy.min-sites: expected an integer >= 0, got {min_sites!r}")
        if isinstance(max_update_norm, bool) or not (math.isfinite(max_update_norm) and max_update_norm >= 0):
            raise ValueError(f"strategy.max-update-norm: expected a number >= 0, got {max_update_norm!r}")
        if update_norm_action not in UPDATE_NORM_ACTIONS:
            raise ValueError(
                f"strategy.update-norm-action: {update_norm_action!r} is not one of {list(UPDATE_NORM_ACTIONS)}"
            )
        if isinstance(proximal_mu, bool) or not (math.isfinite(proximal_mu) and proximal_mu >= 0):
            raise ValueError(f"strategy.proximal-mu: expected a number >= 0, got {proximal_mu!r}")
        self.max_update_norm = float(max_update_norm)
        self.update_norm_action = update_norm_action
        self.proximal_mu = float(proximal_mu)
        self.min_sites = min_sites
        self.aggregation_error = bool(aggregation_error)

    def set_expected(self, shapes: Mapping[str, Sequence[int]]) -> None:
        """Set the keys and shapes every update must have, here and in a `LoraFedAvg` core."""
        self.expected_shapes = expected_shapes_of(shapes)
        if isinstance(self.core, LoraFedAvg):
            self.core.set_expected(shapes)

    def set_global(self, arrays: ArrayRecord | Mapping[str, np.ndarray]) -> None:
        """The global adapter this round's updates start from (`configure_train` sets it)."""
        if isinstance(arrays, ArrayRecord):
            self._global_arrays, self._global_state = arrays, None  # decoded only if needed
        else:
            self._global_arrays = None
            self._global_state = OrderedDict((k, np.asarray(v)) for k, v in arrays.items())

    def global_state(self) -> OrderedDict[str, np.ndarray]:
        """The decoded global adapter; raises if no round has been configured yet."""
        if self._global_state is None:
            if self._global_arrays is None:
                raise RuntimeError(
                    f"{type(self).__name__}: strategy.max-update-norm needs the global adapter; "
                    "call configure_train() or set_global() before aggregating"
                )
            self._global_state = from_arrayrecord(self._global_arrays)
        return self._global_state

    def summary(self) -> None:
        """Log summary configuration of the strategy."""
        log(INFO, "\t├──> Screening: %s replies checked against the global adapter", type(self.core).__name__)
        if self.max_update_norm > 0:
            log(INFO, "\t│\t└── Update norm bound: %g (%s)", self.max_update_norm, self.update_norm_action)
        if self.min_sites > 0:
            log(INFO, "\t│\t└── Usable replies needed per round (strategy.min-sites): %d", self.min_sites)
        self.inner.summary()

    # --- the run -----------------------------------------------------------------------

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
        *,
        first_round: int = 1,
    ) -> Result:
        """Flower's loop over rounds `first_round` .. `num_rounds`; the initial adapter fixes
        the expected shapes if unset.

        `first_round` > 1 continues a run (server_app/checkpoint.py): `initial_arrays` is the
        global adapter after round `first_round - 1` and the strategy's state has been
        restored with `load_state_dict`. Flower's `Strategy.start` always counts from 1, so
        it runs `num_rounds - first_round + 1` rounds through `RoundOffset`, which hands every
        strategy method, `evaluate_fn` and the returned `Result` the run's own round numbers
        (the sites' `server-round`, and so their learning-rate schedule, continues). The
        round-0 evaluation is not repeated.
        """
        if self.expected_shapes is None:
            self.set_expected({k: tuple(initial_arrays[k].shape) for k in initial_arrays.keys()})
        if isinstance(first_round, bool) or not isinstance(first_round, int) or first_round < 1:
            raise ValueError(f"first_round: expected an integer >= 1, got {first_round!r}")
        if not isinstance(grid, WatchedGrid):  # names the sites that do not answer in time
            grid = WatchedGrid(grid, self)
        if first_round == 1:
            return super().start(grid, initial_arrays, num_rounds, timeout, train_config, evaluate_config,
                                 evaluate_fn)
        offset = first_round - 1
        if num_rounds <= offset:
            log(INFO, "rounds 1..%d are done; nothing left to run", num_rounds)
            return Result()
        log(INFO, "continuing at round %d of %d (Flower's log counts these rounds from 1)", first_round, num_rounds)

        def shifted_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            if server_round == 0:  # evaluated before the interruption
                return None
            assert evaluate_fn is not None
            return evaluate_fn(server_round + offset, arrays)

        result = RoundOffset(self, offset).start(
            grid, initial_arrays, num_rounds - offset, timeout, train_config, evaluate_config,
            shifted_evaluate if evaluate_fn is not None else None,
        )
        return Result(
            arrays=result.arrays,
            train_metrics_clientapp={r + offset: m for r, m in result.train_metrics_clientapp.items()},
            evaluate_metrics_clientapp={r + offset: m for r, m in result.evaluate_metrics_clientapp.items()},
            evaluate_metrics_serverapp={r + offset: m for r, m in result.evaluate_metrics_serverapp.items()},
        )

    def class_name(self) -> str:
        """The strategy's class, as checkpoints name it: a subclass of this wrapper (Flower's
        registered strategies) by its own name, else the core's (FedMedLoRA, a plugin)."""
        return (type(self) if type(self) is not ScreenedStrategy else type(self.core)).__qualname__

    def round_report(self, server_round: int | None = None) -> RoundReport:
        """The report of `server_round` (default: the latest round); LookupError if there is none."""
        report = self._report
        if report is None or (server_round is not None and report.server_round != server_round):
            have = "no round yet" if report is None else f"round {report.server_round}"
            raise LookupError(f"{type(self).__name__}: no report for round {server_round} ({have})")
        return report

    # --- what carries over between rounds (checkpoints) --------------------------------

    def state_dict(self) -> dict[str, Any]:
        """What the wrapped strategies keep between rounds: a `LoraFedAvg` core's own
        `state_dict` when nothing sits between, else `strategy_state(inner)`."""
        if self.inner is self.core and isinstance(self.core, LoraFedAvg):
            return self.core.state_dict()
        return strategy_state(self.inner)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what `state_dict` returned into the wrapped strategies."""
        if self.inner is self.core and isinstance(self.core, LoraFedAvg):
            self.core.load_state_dict(state)
        else:
            load_strategy_state(self.inner, state)

    # --- training ----------------------------------------------------------------------

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The inner strategy's sampling; the global adapter is kept for the norm bound and
        the FedProx coefficient, when one is set, goes with the instructions."""
        self.set_global(arrays)
        if self.proximal_mu > 0:
            # client_app/handlers.py passes config["proximal-mu"] to train_round's FedProx term.
            config["proximal-mu"] = self.proximal_mu
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Screen, bound the norms, let the core aggregate what is left, report the round.

        `TooFewSites` if fewer than `min_sites` updates are usable after all of it."""
        if self.expected_shapes is None:
            raise RuntimeError(
                f"{type(self).__name__}: the expected adapter shapes are not set; pass "
                "expected_shapes or call set_expected() before aggregating"
            )
        report = self._report = RoundReport(server_round=server_round)
        replies = list(replies)
        labelled, missing = self._label_replies(replies, MessageType.TRAIN)
        _note_secure_aggregation(report, labelled)
        screening = screen_train_replies(labelled, self._check_reply)
        self._reject(server_round, [*screening.rejected, *missing])
        log(INFO, "aggregate_train: %d of %d replies accepted", len(screening.accepted), len(replies))
        candidates = screening.accepted
        if self.max_update_norm > 0 and candidates:
            bound = bound_update_norms(candidates, self.global_state(), self.max_update_norm,
                                       self.update_norm_action)
            report.extra["update-norm"] = bound.norms
            if bound.clipped:
                report.extra["clipped"] = {s: {k: c[k] for k in ("update-norm", "factor")}
                                           for s, c in bound.clipped.items()}
            for site, clip in bound.clipped.items():
                log(WARNING, "round %d: update from site %s clipped: update norm %.4g exceeds "
                    "strategy.max-update-norm = %g; its A and B deltas were scaled by %.4g (norm now %.4g)",
                    server_round, site, clip["update-norm"], self.max_update_norm, clip["factor"],
                    clip["norm-after"])
            self._reject(server_round, bound.rejected)
            candidates = bound.kept

        arrays, metrics = None, None
        if candidates:
            aggregate = self._core_aggregate(server_round, candidates)
            arrays, metrics = aggregate.arrays, aggregate.metrics
            report.updates = [site_update(c, w) for c, w in aggregate.weights]
            report.extra.update(aggregate.extra)
            if self.aggregation_error and arrays is not None and aggregate.weights:
                report.extra["aggregation-error"] = self._aggregation_error(aggregate.weights, arrays)
            self._reject(server_round, aggregate.rejected)
        report.rejected.sort()  # independent of arrival order
        self._require_min_sites(server_round, [u.site for u in report.updates])
        if not candidates:
            log(WARNING, "round %d: no valid update; the global adapter is unchanged", server_round)
            return None, None
        if arrays is None:
            log(WARNING, "round %d: %s returned no update; the global adapter is unchanged",
                server_round, type(self.inner).__name__)
            return None, metrics
        arrays = self._checked_output(server_round, arrays)
        if arrays is not None and self.dp_mode != "none":
            self._warn_unequal_weights(server_round, [u.weight for u in report.updates])
        return arrays, metrics

    def personal_adapters(self, global_state: Mapping[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
        """Each site's own adapter by name, from a personalising core (FedSA-LoRA); else none."""
        personal = getattr(self.core, "personal_adapters", None)
        return personal(global_state) if callable(personal) else {}

    def _aggregation_error(self, weights: list[tuple[SiteCandidate, float]], arrays: ArrayRecord) -> dict[str, float]:
        """||sum_k p_k B_k A_k - B A||_F / ||sum_k p_k B_k A_k||_F of the round (strategies/aggregation_error.py),
        B A being the adapter the core returned (for a personalised strategy, the one for a
        new site) and p_k the weights it used."""
        assert self.expected_shapes is not None
        core = self.core if isinstance(self.core, LoraFedAvg) else None
        modules = lora_modules(self.expected_shapes)
        returned = {key: arrays[key].numpy() for key in arrays.keys()}

        def scale(i: int, module: LoraModule) -> float:
            return core.product_scale(weights[i][0], module) if core is not None else 1.0

        return aggregation_error(modules, [(c.state, w) for c, w in weights], returned, scale)

    def _check_reply(self, msg: Message, site: str) -> SiteCandidate:
        """A `LoraFedAvg` core's check (ExactLoRA accepts other ranks), else the shared one."""
        if isinstance(self.core, LoraFedAvg):
            return self.core.check_reply(msg, site)
        assert self.expected_shapes is not None
        return check_reply(msg, self.expected_shapes, self.weighted_by_key, site)

    def _core_aggregate(self, server_round: int, candidates: list[SiteCandidate]) -> Aggregate:
        """The core's aggregate of the candidates, with one weight per used candidate."""
        if self.inner is self.core and isinstance(self.core, LoraFedAvg):
            return self.core.aggregate_candidates(server_round, candidates)
        if isinstance(self.core, LoraFedAvg):
            self.core.last_aggregate = None
        arrays, metrics = self.inner.aggregate_train(server_round, self._clean_messages(candidates))
        aggregate = Aggregate(server_round, arrays, metrics)
        core_aggregate = self.core.last_aggregate if isinstance(self.core, LoraFedAvg) else None
        if core_aggregate is not None and core_aggregate.server_round == server_round:
            # The core ran under a DP wrapper: its own weights and rejections, matched by site.
            weights = {(c.site, c.node_id): w for c, w in core_aggregate.weights}
            aggregate.weights = [(c, weights[(c.site, c.node_id)]) for c in candidates
                                 if (c.site, c.node_id) in weights]
            aggregate.rejected = list(core_aggregate.rejected)
            aggregate.extra = {**core_aggregate.extra, "weights": type(self.core).__name__}
            return aggregate
        kind, weights = self.site_weights(candidates)
        aggregate.weights = list(zip(candidates, weights, strict=True))
        aggregate.extra["weights"] = kind
        return aggregate

    def _clean_messages(self, candidates: list[SiteCandidate]) -> list[Message]:
        """Fresh replies for the inner strategy: float32 arrays, metrics every site reported.

        Unchanged float32 arrays are shared with the original reply (no copy); Flower's
        robust strategies pop arrays from the records they get, so the records are new.
        A clipped update (and any update of another rank) carries its decoded state.
        """
        common = common_metric_keys([c.metrics for c in candidates])
        messages = []
        for candidate in candidates:
            assert candidate.message is not None
            original = next(iter(candidate.message.content.array_records.values()))
            arrays = {}
            for key in candidate.state:
                if candidate.clip_factor is not None or key not in original:
                    # moved toward the global by the bound, or a factor the site kept (filled in)
                    arrays[key] = Array(np.asarray(candidate.state[key], np.float32))
                elif np.dtype(original[key].dtype) == np.float32:
                    arrays[key] = original[key]
                else:
                    arrays[key] = Array(original[key].numpy().astype(np.float32))
            content = RecordDict(
                {
                    "arrays": ArrayRecord(arrays),
                    "metrics": MetricRecord({k: candidate.metrics[k] for k in common}),
                    # The site's name record, so a core reports the same sites.
                    **candidate.message.content.config_records,
                }
            )
            messages.append(Message(content=content, metadata=copy.copy(candidate.message.metadata)))
        return messages

    def site_weights(self, candidates: list[SiteCandidate]) -> tuple[str, list[float]]:
        """(kind, weight per candidate) for the report; default: the `num-examples` shares."""
        total = math.fsum(c.num_examples for c in candidates)
        return "num-examples share", [c.num_examples / total for c in candidates]

    def _checked_output(self, server_round: int, arrays: ArrayRecord) -> ArrayRecord | None:
        """The global adapter's keys in float32; a non-finite result is refused.

        A `LoraFedAvg` core's own output (no DP wrapper between) is checked and returned as
        it is: it is float32 in the global key order already, ExactLoRA recognises its
        aggregate by identity, and its rank "full" is wider than the global adapter."""
        assert self.expected_shapes is not None
        if set(arrays.keys()) != set(self.expected_shapes):
            raise RuntimeError(f"{type(self.inner).__name__} returned keys that differ from the global adapter's")
        lora_core = isinstance(self.core, LoraFedAvg)
        as_is = lora_core and self.inner is self.core
        out = {}
        for key, shape in self.expected_shapes.items():
            values = arrays[key].numpy() if as_is else np.asarray(arrays[key].numpy(), dtype=np.float32)
            if values.shape != shape and not lora_core:
                raise RuntimeError(f"{type(self.inner).__name__} returned {key} with shape {values.shape}, "
                                   f"expected {shape}")
            if not np.isfinite(values).all():
                log(ERROR, "round %d: %s produced non-finite values in %s; the global adapter is unchanged",
                    server_round, type(self.inner).__name__, key)
                self.round_report(server_round).extra["output-rejected"] = f"non-finite values in {key}"
                return None
            if not as_is:
                out[key] = Array(values)
        return arrays if as_is else ArrayRecord(out)

    def _warn_unequal_weights(self, server_round: int, weights: list[float]) -> None:
        if weights and max(weights) - min(weights) > 1e-9:
            log(WARNING, "round %d: strategy.dp: Flower's noise is calibrated for equal site weights "
                "(1/%d); this round's weights range %.3g..%.3g, so its noise multiplier towards the largest "
                "site is lower than strategy.dp-noise-multiplier: the epsilon reported is computed at that lower "
                "one (fedmedlora-equal avoids the loss)", server_round, len(weights), min(weights), max(weights))

    def _reject(self, server_round: int, rejected: Sequence[Rejection]) -> None:
        """Log the rejections and add them to the round's report."""
        for site, reason in rejected:
            log(WARNING, "round %d: update from site %s rejected: %s", server_round, site, reason)
        self.round_report(server_round).rejected.extend(rejected)

    def _require_min_sites(self, server_round: int, usable: Sequence[str]) -> None:
        """Raise `TooFewSites` (logged) if fewer than `min_sites` sites are usable this round."""
        if self.min_sites <= 0 or len(usable) >= self.min_sites:
            return
        error = TooFewSites(server_round, sorted(usable), self.min_sites, sorted(self.round_report().rejected))
        log(ERROR, "%s", error)
        raise error

    # --- evaluation --------------------------------------------------------------------

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The inner strategy's evaluation sampling."""
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """The inner strategy's aggregation over the content replies, in a fixed order;
        failures and missing replies logged by site, per-site metrics in the round's report."""
        labelled, missing = self._label_replies(list(replies), MessageType.EVALUATE)
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
        if self._report is None or self._report.server_round != server_round:
            self._report = RoundReport(server_round=server_round)
        self._report.evaluated = [(site_label(m), metric_dict(m.content.metric_records.values())) for m in content]
        return self.inner.aggregate_evaluate(server_round, content) if content else None

    # --- which site a reply, or a missing reply, belongs to ---------------------------

    def _label_replies(self, replies: list[Message], kind: str) -> tuple[list[tuple[str, Message]], list[Rejection]]:
        """(site, reply) for every reply, and (site, reason) for every node that was sent an
        instruction of this kind (under `start`) and did not answer."""
        exchange = self._exchanges.pop(kind, None)  # each aggregation consumes its own
        labelled, answered = [], set()
        for msg in replies:
            node = _reply_node(msg, exchange)
            answered.add(node)
            labelled.append((self._site_of(msg, node), msg))
        missing = []
        if exchange is not None:
            reason = _no_reply(exchange.timeout)
            missing = [(self._node_label(n), reason) for n in dict.fromkeys(exchange.nodes) if n not in answered]
        return labelled, missing

    def _node_label(self, node: int) -> str:
        return self._names_by_node.get(node) or f"node {node}"

    def _site_of(self, msg: Message, node: int) -> str:
        """The reply's own site name (remembered for its node), else what its node is known as."""
        name = reply_site_name(msg)
        if name is None:
            return self._node_label(node)
        self._names_by_node[node] = name
        return name

    def note_exchange(self, messages: Sequence[Message], timeout: float | None) -> None:
        """Called by `WatchedGrid` after a train or evaluate exchange (other types are ignored)."""
        sent: dict[str, Exchange] = {}
        for msg in messages:
            kind = msg.metadata.message_type
            if kind not in (MessageType.TRAIN, MessageType.EVALUATE):
                continue
            exchange = sent.setdefault(kind, Exchange([], {}, timeout))
            node = msg.metadata.dst_node_id
            exchange.nodes.append(node)
            if msg.metadata.message_id:
                exchange.by_message_id[msg.metadata.message_id] = node
        self._exchanges.update(sent)

    def learn_node_names(self, grid: Grid, messages: Sequence[Message]) -> None:
        """Names the SuperLink knows (SuperNodes registered with a name) for nodes not yet named."""
        unknown = {m.metadata.dst_node_id for m in messages if m.metadata.message_type == MessageType.TRAIN}
        unknown -= set(self._names_by_node)
        if not unknown:
            return
        try:
            nodes = list(grid.get_nodes())
        except Exception:  # noqa: BLE001 - names are a nicety: node ids still name the sites
            return
        for info in nodes:
            node, name = getattr(info, "node_id", None), getattr(info, "name", "")
            if node in unknown and name:
                self._names_by_node[node] = str(name)


@dataclass
class Exchange:
    """Where the instructions of one train or evaluate exchange went (see `WatchedGrid`)."""

    nodes: list[int]  # destination node of each instruction, in order
    by_message_id: dict[str, int]  # message id (set when pushed) -> destination node
    timeout: float | None


class WatchedGrid:
    """The Grid a `ScreenedStrategy` runs on (`start` wraps it).

    Flower's `send_and_receive` returns only the replies that arrived within the timeout,
    and the SuperLink answers for a SuperNode it has lost (missed heartbeats) with an error
    reply of its own, not one from that node. So that a round's report names every site that
    did not answer, this notes where each train and evaluate instruction went (its node,
    and its message id once pushed), and the screening matches the replies against it.
    Everything else is the wrapped Grid's.
    """

    def __init__(self, grid: Grid, strategy: ScreenedStrategy) -> None:
        self._grid = grid
        self._strategy = strategy

    def __getattr__(self, name: str) -> Any:
        if name in ("_grid", "_strategy"):  # not set yet (a copy): no recursion
            raise AttributeError(name)
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """The wrapped Grid's `send_and_receive`, noting where the instructions went."""
        messages = list(messages)
        self._strategy.learn_node_names(self._grid, messages)
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        self._strategy.note_exchange(messages, timeout)  # after the push: message ids are set
        return replies


class RoundOffset(Strategy):
    """A strategy seen through shifted round numbers: round r here is `offset + r` to it.

    Used by `ScreenedStrategy.start` to continue a run with Flower's `Strategy.start`, which
    always counts rounds from 1 (FedAvg's `configure_train` writes that count into the
    sites' `server-round`; FedAdam's bias correction reads it).
    """

    def __init__(self, strategy: Strategy, offset: int) -> None:
        self.strategy = strategy
        self.offset = offset

    def summary(self) -> None:
        """The strategy's own summary."""
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The strategy's `configure_train` for round `offset + server_round`."""
        return self.strategy.configure_train(server_round + self.offset, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The strategy's `aggregate_train` for round `offset + server_round`."""
        return self.strategy.aggregate_train(server_round + self.offset, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The strategy's `configure_evaluate` for round `offset + server_round`."""
        return self.strategy.configure_evaluate(server_round + self.offset, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """The strategy's `aggregate_evaluate` for round `offset + server_round`."""
        return self.strategy.aggregate_evaluate(server_round + self.offset, replies)


def strategy_state(strategy: Strategy) -> dict[str, Any]:
    """What `strategy`, and any strategy it wraps, keeps between rounds.

    A strategy with `state_dict()` (ours) gives its own; Flower's give the attributes listed
    in `FLOWER_STATE`; a DP wrapper adds the strategy it wraps.
    """
    if callable(getattr(strategy, "state_dict", None)):
        return {"own": strategy.state_dict()}
    state: dict[str, Any] = {}
    for cls, attributes in FLOWER_STATE:
        if isinstance(strategy, cls):
            state.update({name: getattr(strategy, name) for name in attributes})
    wrapped = getattr(strategy, "strategy", None)  # Flower's DP wrappers
    if isinstance(wrapped, Strategy):
        state["wrapped"] = strategy_state(wrapped)
    return state


def load_strategy_state(strategy: Strategy, state: Mapping[str, Any]) -> None:
    """Put back what `strategy_state` returned; raises ValueError if a part is missing."""
    name = type(strategy).__name__
    if callable(getattr(strategy, "load_state_dict", None)):
        strategy.load_state_dict(state.get("own", {}))
        return
    known = False
    for cls, attributes in FLOWER_STATE:
        if isinstance(strategy, cls):
            known = True
            for attribute in attributes:
                if attribute not in state:
                    raise ValueError(f"{name}: the saved state has no {attribute!r}")
                setattr(strategy, attribute, state[attribute])
    wrapped = getattr(strategy, "strategy", None)
    if isinstance(wrapped, Strategy):
        load_strategy_state(wrapped, state.get("wrapped", {}))
    elif not known and not type(strategy).__module__.startswith("flwr."):
        log(WARNING, "%s declares no state between rounds (no state_dict/load_state_dict): if it keeps "
            "any, the continued run starts it afresh", name)


def _note_secure_aggregation(report: RoundReport, labelled: list[tuple[str, Message]]) -> None:
    """Under secure aggregation (strategies/secure_aggregation.py): the round's SecAgg+ time
    and bytes in the report, and each site's protocol messages as its extra traffic."""
    from .secure_aggregation import SECURE_AGGREGATION

    traffic = {}
    for site, msg in labelled:
        if msg.has_content() and SECURE_AGGREGATION in msg.content.config_records:
            record = msg.content[SECURE_AGGREGATION]
            report.extra[SECURE_AGGREGATION] = {k: record[k] for k in ("seconds", "sites", "bytes-sent",
                                                                       "bytes-received")}
            traffic[site] = {"bytes-up": int(record["extra-bytes-up"]), "bytes-down": int(record["extra-bytes-down"])}
    if traffic:
        report.extra["extra-traffic"] = traffic


def _reply_node(msg: Message, exchange: Exchange | None) -> int:
    """The node a reply answers for: its sender, or, for an error reply the SuperLink sent
    about a lost node, the node the instruction went to."""
    src = msg.metadata.src_node_id
    if exchange is not None and src not in exchange.nodes:
        node = exchange.by_message_id.get(msg.metadata.reply_to_message_id)
        if node is not None:
            return node
    return src


def _no_reply(timeout: float | None) -> str:
    if timeout is None:
        return "no reply"
    return f"no reply within strategy.round-timeout = {timeout:g} s (the site stopped, lost its connection or is too slow)"
