"""LoraFedAvg: FedAvg for LoRA adapters that screens every site update before averaging.

Flower's FedAvg raises for the whole round when one reply is malformed. Here each reply is
checked on its own against the global adapter's keys and shapes; a bad one is rejected
(logged, and named in the round's report) and the round goes on with the others. The
average itself goes through one overridable hook, `aggregation_weights`, so a strategy
that only changes how sites are weighted (Fed-MedLoRA+) overrides that and nothing else.

The screening itself lives in the `ReplyScreening` mixin, shared with the wrapper that puts
Flower's own strategies behind the same checks (strategies/flower.py). It also bounds each
site's update norm (`strategy.max-update-norm`, see strategies/clipping.py), sends the
FedProx coefficient (`strategy.proximal-mu`) with every train instruction, names every site
that sent no reply in time (`WatchedGrid`), and stops the run (`TooFewSites`) when fewer
sites than `strategy.min-sites` replied usably in a round.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from logging import ERROR, INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result, Strategy

from wire.arrays import arrayrecord_nbytes, from_arrayrecord
from wire.transport import sent_nbytes

from .clipping import UPDATE_NORM_ACTIONS, scale_toward, update_terms

# Weights must sum to one up to this much float64 rounding.
WEIGHT_SUM_TOLERANCE = 1e-6

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


@dataclass
class RoundReport:
    """What `aggregate_train` did in one round: accepted updates, rejections, extras."""

    server_round: int
    updates: list[SiteUpdate] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (site, reason)
    extra: dict[str, Any] = field(default_factory=dict)  # strategy-specific, JSON-ready


class ReplyState(Mapping[str, np.ndarray]):
    """A reply's adapter, decoded one tensor at a time on access and never kept.

    Holding every site's decoded float32 copy beside the replies' own bytes doubled a
    round's peak memory; reading tensor by tensor keeps one tensor per site alive at most.
    """

    def __init__(self, record: ArrayRecord, keys: Sequence[str]) -> None:
        self._record = record
        self._keys = tuple(keys)

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self._keys:
            raise KeyError(key)
        return self._record[key].numpy()

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


@dataclass
class SiteCandidate:
    """A reply that passed the checks; input of `aggregation_weights`.

    `state` reads the reply's tensors on demand (a `ReplyState`) in the expected key order;
    a strategy that changes an update (the norm bound) replaces it with decoded arrays.
    """

    node_id: int
    site: str
    num_examples: float
    state: Mapping[str, np.ndarray]  # in the expected key order
    metrics: MetricRecord
    bytes_up: int
    rejected: str | None = None  # set through `LoraFedAvg.reject`
    clip_factor: float | None = None  # set when the update-norm bound scaled the update
    message: Message | None = field(default=None, repr=False, compare=False)  # the reply


class UpdateRejected(ValueError):
    """A site update failed a check; the message is the reason."""


class TooFewSites(RuntimeError):
    """Fewer sites than `strategy.min-sites` replied usably in a round: the run stops.

    Raised by the screening before the round's aggregate is used, so the global adapter
    (and the ServerApp's checkpoint) stay those of the last finished round, from which
    `resume = true` continues. The message names the round, how many sites replied usably
    against the minimum, and every failed site with its reason (an error reply, a rejected
    update, or no reply within the round timeout).
    """

    def __init__(self, server_round: int, usable: Sequence[str], min_sites: int,
                 failed: Sequence[tuple[str, str]]) -> None:
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


@dataclass
class Exchange:
    """Where the instructions of one train or evaluate exchange went (see `WatchedGrid`)."""

    nodes: list[int]  # destination node of each instruction, in order
    by_message_id: dict[str, int]  # message id (set when pushed) -> destination node
    timeout: float | None


class WatchedGrid:
    """The Grid a screening strategy runs on (`ReplyScreening.start` wraps it).

    Flower's `send_and_receive` returns only the replies that arrived within the timeout,
    and the SuperLink answers for a SuperNode it has lost (missed heartbeats) with an error
    reply of its own, not one from that node. So that a round's report names every site that
    did not answer, this notes where each train and evaluate instruction went (its node,
    and its message id once pushed), and the screening matches the replies against it.
    Everything else is the wrapped Grid's.
    """

    def __init__(self, grid: Grid, screening: ReplyScreening) -> None:
        self._grid = grid
        self._screening = screening

    def __getattr__(self, name: str) -> Any:
        if name in ("_grid", "_screening"):  # not set yet (a copy): no recursion
            raise AttributeError(name)
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """The wrapped Grid's `send_and_receive`, noting where the instructions went."""
        messages = list(messages)
        self._screening._learn_node_names(self._grid, messages)
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        self._screening._note_exchange(messages, timeout)  # after the push: message ids are set
        return replies


class ReplyScreening:
    """Per-reply screening shared by every strategy here (a mixin; see `LoraFedAvg`).

    Each train reply is checked on its own against the expected adapter (exactly one
    ArrayRecord with exactly the expected keys and shapes, float dtype, finite values;
    exactly one MetricRecord whose `weighted_by_key` is a number > 0). Error replies and
    failing replies are rejected (logged with the site, recorded in `last_train_report`)
    and the round goes on with the others. Accepted updates are put in a fixed order, then
    held to `max_update_norm` (0 = off): an update whose norm (strategies/clipping.py)
    exceeds it is rejected or moved toward the global adapter, per `update_norm_action`.

    Under `start`, a site sent an instruction that did not answer within the round timeout
    is rejected too ("no reply within strategy.round-timeout = ... s"), and so is one the
    SuperLink reports lost; a site is named by the name it sent in any earlier reply (else
    its registered SuperNode name, else `node <id>`). If fewer than `min_sites` (0 = no
    minimum) updates remain usable, `TooFewSites` stops the run with every failed site's reason.

    The host class provides `weighted_by_key` and sets `expected_shapes`,
    `last_train_report` and `last_evaluate_report` in its `__init__`.
    """

    invariants: tuple[str, ...] = ()
    weighted_by_key: str
    expected_shapes: OrderedDict[str, tuple[int, ...]] | None
    last_train_report: RoundReport | None
    last_evaluate_report: list[tuple[str, Metrics]]
    # Class defaults, so strategies built without `configure_screening` screen as before.
    max_update_norm: float = 0.0
    update_norm_action: str = "clip"
    proximal_mu: float = 0.0
    min_sites: int = 0  # usable replies a round needs (`strategy.min-sites`); 0 = no minimum
    _global_arrays: ArrayRecord | None = None
    _global_state: OrderedDict[str, np.ndarray] | None = None

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

    # --- what carries over between rounds (checkpoints) --------------------------------

    def state_dict(self) -> dict[str, Any]:
        """What this strategy carries from one round to the next, for a checkpoint.

        Values may be None, bools, numbers, strings, numpy arrays, ArrayRecords, and lists
        and dicts (string keys) of those. The default keeps nothing: screening and plain
        weighted averaging start every round afresh. A strategy with state between rounds
        (server optimiser moments, per-site ranks) overrides this and `load_state_dict`.
        """
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what `state_dict` returned (the run continues after that round)."""
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state between rounds, got {sorted(state)}")

    def configure_screening(
        self,
        max_update_norm: float = 0.0,
        update_norm_action: str = "clip",
        proximal_mu: float = 0.0,
        min_sites: int = 0,
    ) -> None:
        """Set the update-norm bound, the FedProx coefficient sent to sites, and the number
        of usable replies a round needs (`strategy.min-sites`; 0 = no minimum)."""
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

    def set_expected(self, shapes: Mapping[str, Sequence[int]]) -> None:
        """Set the keys and shapes every update must have."""
        if not shapes:
            raise ValueError("expected adapter shapes: got no tensors")
        self.expected_shapes = OrderedDict((str(k), tuple(int(d) for d in v)) for k, v in shapes.items())

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

    def _train_config(self, arrays: ArrayRecord, config: ConfigRecord) -> ConfigRecord:
        """Remember the global adapter; send the FedProx coefficient when one is set."""
        self.set_global(arrays)
        if self.proximal_mu > 0:
            # client_app/app.py passes config["proximal-mu"] to train_round's FedProx term.
            config["proximal-mu"] = self.proximal_mu
        return config

    def _require_expected(self) -> None:
        if self.expected_shapes is None:
            raise RuntimeError(
                f"{type(self).__name__}: the expected adapter shapes are not set; pass "
                "expected_shapes or call set_expected() before aggregating"
            )

    def screen_replies(self, server_round: int, replies: Iterable[Message]) -> list[SiteCandidate]:
        """Check every reply, bound the accepted updates' norms; canonical order.

        Rejections go to `last_train_report`, which the caller has set for this round; a
        site that was sent an instruction (under `start`) and did not answer is one of them.
        Raises `TooFewSites` if fewer than `min_sites` updates are left.
        """
        self._require_expected()
        exchange = self._take_exchange(MessageType.TRAIN)
        candidates: list[SiteCandidate] = []
        replies = list(replies)
        answered: set[int] = set()
        for msg in replies:
            node = self._reply_node(msg, exchange)
            answered.add(node)
            site = self._site_of(msg, node)
            if msg.has_error():
                self._record_rejection(
                    server_round, site, f"error reply (code {msg.error.code}): {msg.error.reason}"
                )
                continue
            try:
                candidate = self.check_reply(msg, site)
            except UpdateRejected as err:
                self._record_rejection(server_round, site, str(err))
                continue
            candidate.message = msg
            candidates.append(candidate)
        for node in _unanswered(exchange, answered):
            self._record_rejection(server_round, self._node_label(node), _no_reply(exchange))
        log(INFO, "aggregate_train: %d of %d replies accepted", len(candidates), len(replies))
        kept = self.bound_update_norms(server_round, canonical_order(candidates))
        self.require_min_sites(server_round, [c.site for c in kept])
        return kept

    def require_min_sites(self, server_round: int, usable: Sequence[str]) -> None:
        """Raise `TooFewSites` (logged) if fewer than `min_sites` sites are usable this round."""
        if self.min_sites <= 0 or len(usable) >= self.min_sites:
            return
        failed = sorted(self.last_train_report.rejected) if self.last_train_report is not None else []
        error = TooFewSites(server_round, sorted(usable), self.min_sites, failed)
        log(ERROR, "%s", error)
        raise error

    # --- which site a reply, or a missing reply, belongs to ---------------------------

    def _site_names(self) -> dict[int, str]:
        """node id -> the site name it sent (or registered with), learned as replies come."""
        return self.__dict__.setdefault("_names_by_node", {})

    def _node_label(self, node: int) -> str:
        return self._site_names().get(node) or f"node {node}"

    def _site_of(self, msg: Message, node: int) -> str:
        """The reply's own site name (remembered for its node), else what its node is known as."""
        name = _reply_site_name(msg)
        if name is None:
            return self._node_label(node)
        self._site_names()[node] = name
        return name

    def _note_exchange(self, messages: Sequence[Message], timeout: float | None) -> None:
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
        self.__dict__.setdefault("_exchanges", {}).update(sent)

    def _take_exchange(self, kind: str) -> Exchange | None:
        """The last exchange of this kind, once: each aggregation consumes its own."""
        return self.__dict__.setdefault("_exchanges", {}).pop(kind, None)

    def _learn_node_names(self, grid: Grid, messages: Sequence[Message]) -> None:
        """Names the SuperLink knows (SuperNodes registered with a name) for nodes not yet named."""
        names = self._site_names()
        unknown = {m.metadata.dst_node_id for m in messages if m.metadata.message_type == MessageType.TRAIN}
        unknown -= set(names)
        if not unknown:
            return
        try:
            nodes = list(grid.get_nodes())
        except Exception:  # noqa: BLE001 - names are a nicety: node ids still name the sites
            return
        for info in nodes:
            node, name = getattr(info, "node_id", None), getattr(info, "name", "")
            if node in unknown and name:
                names[node] = str(name)

    @staticmethod
    def _reply_node(msg: Message, exchange: Exchange | None) -> int:
        """The node a reply answers for: its sender, or, for an error reply the SuperLink sent
        about a lost node, the node the instruction went to."""
        src = msg.metadata.src_node_id
        if exchange is not None and src not in exchange.nodes:
            node = exchange.by_message_id.get(msg.metadata.reply_to_message_id)
            if node is not None:
                return node
        return src

    def check_reply(self, msg: Message, site: str) -> SiteCandidate:
        """Decode one content reply, or raise UpdateRejected naming what is wrong."""
        assert self.expected_shapes is not None
        content = msg.content
        if len(content.array_records) != 1:
            raise UpdateRejected(f"expected exactly one ArrayRecord, found {len(content.array_records)}")
        record = next(iter(content.array_records.values()))

        missing = [k for k in self.expected_shapes if k not in record]
        unexpected = [k for k in record.keys() if k not in self.expected_shapes]
        if missing or unexpected:
            raise UpdateRejected(
                f"adapter keys differ: missing {_first(missing)}, unexpected {_first(unexpected)}"
            )
        # Metadata checks first: they cost nothing, decoding the tensors does.
        for key, shape in self.expected_shapes.items():
            array = record[key]
            if tuple(array.shape) != shape:
                raise UpdateRejected(f"{key} has shape {tuple(array.shape)}, expected {shape}")
            if not _is_float_dtype(array.dtype):
                raise UpdateRejected(f"{key} has dtype {array.dtype}, expected a float dtype")
        num_examples, metrics = self._check_metrics(content)

        # One tensor decoded at a time: the check keeps nothing but the verdict.
        for key in self.expected_shapes:
            try:
                values = record[key].numpy()
            except Exception as err:  # noqa: BLE001 - any decoding failure is the reply's fault
                raise UpdateRejected(f"{key} cannot be decoded ({type(err).__name__}: {err})") from err
            finite = np.isfinite(values)
            if not finite.all():
                bad = int(values.size - np.count_nonzero(finite))
                raise UpdateRejected(f"{key} has {bad} non-finite value(s)")
            del values, finite
        return SiteCandidate(
            node_id=msg.metadata.src_node_id,
            site=site,
            num_examples=num_examples,
            state=ReplyState(record, list(self.expected_shapes)),
            metrics=metrics,
            bytes_up=sent_nbytes(content) or arrayrecord_nbytes(record),
        )

    def _check_metrics(self, content: RecordDict) -> tuple[float, MetricRecord]:
        key = self.weighted_by_key
        if len(content.metric_records) != 1:
            raise UpdateRejected(f"expected exactly one MetricRecord, found {len(content.metric_records)}")
        metrics = next(iter(content.metric_records.values()))
        if key not in metrics:
            raise UpdateRejected(f"MetricRecord has no '{key}'")
        value = metrics[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UpdateRejected(f"'{key}' must be a single number, got {type(value).__name__}")
        if not math.isfinite(value) or value <= 0:
            raise UpdateRejected(f"'{key}' must be > 0, got {value}")
        return value, metrics

    def bound_update_norms(self, server_round: int, candidates: list[SiteCandidate]) -> list[SiteCandidate]:
        """Hold each update's norm to `max_update_norm`: reject it, or scale it toward the global.

        The norms (and any clip factors) go to `last_train_report.extra["update-norm"]`
        (and `["clipped"]`), by site.
        """
        bound = self.max_update_norm
        if bound <= 0 or not candidates:
            return candidates
        global_state = self.global_state()
        extra = self.last_train_report.extra if self.last_train_report is not None else {}
        norms = extra.setdefault("update-norm", {})
        kept = []
        for candidate in candidates:
            terms = update_terms(candidate.state, global_state)
            norm = terms.norm()
            norms[candidate.site] = norm
            if norm <= bound:
                kept.append(candidate)
                continue
            reason = f"update norm {norm:.4g} exceeds strategy.max-update-norm = {bound:g}"
            if self.update_norm_action == "reject":
                self._record_rejection(server_round, candidate.site, reason)
                continue
            factor = terms.clip_factor(bound)
            candidate.state = scale_toward(candidate.state, global_state, factor)
            candidate.clip_factor = factor
            extra.setdefault("clipped", {})[candidate.site] = {"update-norm": norm, "factor": factor}
            log(
                WARNING,
                "round %d: update from site %s clipped: %s; its A and B deltas were scaled by %.4g "
                "(norm now %.4g)",
                server_round,
                candidate.site,
                reason,
                factor,
                terms.norm(factor),
            )
            kept.append(candidate)
        return kept

    def reject(self, candidate: SiteCandidate, reason: str) -> None:
        """Reject a screened candidate from inside `aggregation_weights`."""
        candidate.rejected = reason
        server_round = self.last_train_report.server_round if self.last_train_report else 0
        self._record_rejection(server_round, candidate.site, reason)

    def _record_rejection(self, server_round: int, site: str, reason: str) -> None:
        log(WARNING, "round %d: update from site %s rejected: %s", server_round, site, reason)
        if self.last_train_report is not None:
            self.last_train_report.rejected.append((site, reason))

    def screen_evaluate_replies(self, server_round: int, replies: Iterable[Message]) -> list[Message]:
        """The content replies, in a fixed order; failures and missing replies logged by
        site, per-site metrics kept."""
        exchange = self._take_exchange(MessageType.EVALUATE)
        content_replies = []
        answered: set[int] = set()
        for msg in replies:
            node = self._reply_node(msg, exchange)
            answered.add(node)
            site = self._site_of(msg, node)
            if msg.has_error():
                log(
                    WARNING,
                    "round %d: evaluation by site %s failed (code %d): %s",
                    server_round,
                    site,
                    msg.error.code,
                    msg.error.reason,
                )
            else:
                content_replies.append(msg)
        for node in _unanswered(exchange, answered):
            log(WARNING, "round %d: evaluation by site %s failed: %s", server_round, self._node_label(node),
                _no_reply(exchange))
        # A fixed order keeps the float sums, and so the result, independent of arrival order.
        content_replies.sort(key=lambda m: (site_label(m), m.metadata.src_node_id))
        self.last_evaluate_report = [
            (site_label(m), metric_dict(m.content.metric_records.values())) for m in content_replies
        ]
        return content_replies


class RoundOffset(Strategy):
    """A strategy seen through shifted round numbers: round r here is `offset + r` to it.

    Used by `ReplyScreening.start` to continue a run with Flower's `Strategy.start`, which
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


class LoraFedAvg(ReplyScreening, FedAvg):
    """FedAvg over LoRA adapters with per-reply screening and a weighting hook.

    Sampling, `configure_train` and `configure_evaluate` are FedAvg's. `aggregate_train`
    checks each reply against the expected adapter (exactly one ArrayRecord with exactly the
    expected keys and shapes, float dtype, finite values; exactly one MetricRecord whose
    `weighted_by_key` is a number > 0), rejects failing replies and error replies, and
    averages the rest per tensor in float64 with the weights of `aggregation_weights`.
    The default weights are proportional to `num-examples` (Fed-MedLoRA). The result is
    the same for the same replies in any order. What happened is kept in
    `last_train_report` and `last_evaluate_report` for the server's report. The update-norm
    bound and the FedProx coefficient come from `configure_screening` (see `ReplyScreening`).

    Parameters
    ----------
    expected_shapes : Mapping[str, Sequence[int]] | None (default: None)
        Keys and shapes of the global adapter, in the order the aggregate is returned.
        May be set later with `set_expected`; if still unset when `start` runs, it is
        taken from `initial_arrays`.
    **fedavg_kwargs
        Passed to FedAvg (`fraction_train`, `min_train_nodes`, `min_available_nodes`,
        `weighted_by_key`, ...); see `flwr.serverapp.strategy.FedAvg`.
    """

    invariants: tuple[str, ...] = ("weights-sum-to-one",)

    def __init__(
        self,
        expected_shapes: Mapping[str, Sequence[int]] | None = None,
        **fedavg_kwargs: Any,
    ) -> None:
        super().__init__(**fedavg_kwargs)
        self.expected_shapes: OrderedDict[str, tuple[int, ...]] | None = None
        if expected_shapes is not None:
            self.set_expected(expected_shapes)
        self.last_train_report: RoundReport | None = None
        self.last_evaluate_report: list[tuple[str, Metrics]] = []

    @classmethod
    def from_run_config(
        cls,
        cfg: Mapping[str, Any],
        expected_shapes: Mapping[str, Sequence[int]],
        validation_loss: Callable[[dict[str, np.ndarray]], float] | None = None,
        **fedavg_kwargs: Any,
    ) -> LoraFedAvg:
        """Build from the validated run config (`settings.config.validate`: every key present,
        typed and checked); this class reads none of its `strategy.*` keys."""
        del cfg, validation_loss  # plain averaging needs neither
        return cls(expected_shapes=expected_shapes, **fedavg_kwargs)

    def summary(self) -> None:
        """Log summary configuration of the strategy."""
        super().summary()
        if self.expected_shapes is not None:
            numel = sum(math.prod(s) for s in self.expected_shapes.values())
            log(INFO, "\t└──> Adapter: %d tensors, %d parameters", len(self.expected_shapes), numel)
        if self.max_update_norm > 0:
            log(INFO, "\t└──> Update norm bound: %g (%s)", self.max_update_norm, self.update_norm_action)
        if self.min_sites > 0:
            log(INFO, "\t└──> Usable replies needed per round (strategy.min-sites): %d", self.min_sites)

    # --- training ---------------------------------------------------------------------

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedAvg's sampling; the global adapter is kept for the update-norm bound."""
        return super().configure_train(server_round, arrays, self._train_config(arrays, config), grid)

    def aggregate_train(
        self,
        server_round: int,
        replies: Iterable[Message],
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Screen the replies, weight the accepted updates and average them per tensor."""
        self._require_expected()
        self.last_train_report = RoundReport(server_round=server_round)
        candidates = self.screen_replies(server_round, replies)
        weights = self.aggregation_weights(server_round, candidates) if candidates else []
        accepted, weights = self._drop_rejected(candidates, weights)
        self.last_train_report.rejected.sort()  # independent of arrival order
        self.require_min_sites(server_round, [c.site for c in accepted])
        if not accepted:
            log(WARNING, "round %d: no valid update; the global adapter is unchanged", server_round)
            return None, None

        arrays = self.weighted_average(accepted, weights)
        metrics = self._aggregate_train_metrics(accepted)
        self.last_train_report.updates = [
            SiteUpdate(
                node_id=c.node_id,
                site=c.site,
                num_examples=c.num_examples,
                weight=w,
                metrics=metric_dict([c.metrics]),
                bytes_up=c.bytes_up,
            )
            for c, w in zip(accepted, weights, strict=True)
        ]
        return arrays, metrics

    def aggregation_weights(self, server_round: int, accepted: list[SiteCandidate]) -> list[float]:
        """One weight per candidate: non-negative, summing to one. Default: n_k / sum(n).

        A strategy may reject a candidate here with `self.reject(candidate, reason)` and
        give it weight 0; the weights of the others must still sum to one.
        """
        del server_round
        total = math.fsum(c.num_examples for c in accepted)
        return [c.num_examples / total for c in accepted]

    def weighted_average(self, accepted: list[SiteCandidate], weights: list[float]) -> ArrayRecord:
        """sum_k w_k * state_k per tensor, in float64, returned as float32.

        Streams: one tensor of one site is decoded at a time, so the round's extra memory
        is one float64 accumulator plus the float32 result, not a copy per site.
        """
        assert self.expected_shapes is not None
        averaged: dict[str, Array] = {}
        for key, shape in self.expected_shapes.items():
            total = np.zeros(shape, dtype=np.float64)
            for candidate, weight in zip(accepted, weights, strict=True):
                total += np.multiply(candidate.state[key], weight, dtype=np.float64)
            averaged[key] = Array(total.astype(np.float32))
            del total
        return ArrayRecord(averaged)

    def _drop_rejected(
        self, candidates: list[SiteCandidate], weights: Sequence[float]
    ) -> tuple[list[SiteCandidate], list[float]]:
        """Check the hook's weights and keep the candidates it did not reject."""
        name = f"{type(self).__name__}.aggregation_weights"
        weights = [float(w) for w in weights]
        if len(weights) != len(candidates):
            raise ValueError(f"{name} returned {len(weights)} weights for {len(candidates)} updates")
        if any(not math.isfinite(w) or w < 0 for w in weights):
            raise ValueError(f"{name} returned weights that are negative or not finite: {weights}")
        kept = [(c, w) for c, w in zip(candidates, weights, strict=True) if c.rejected is None]
        if any(w != 0 for c, w in zip(candidates, weights, strict=True) if c.rejected is not None):
            raise ValueError(f"{name} gave a rejected update a non-zero weight: {weights}")
        if kept and abs(math.fsum(w for _, w in kept) - 1.0) > WEIGHT_SUM_TOLERANCE:
            raise ValueError(f"{name} returned weights that do not sum to one: {weights}")
        return [c for c, _ in kept], [w for _, w in kept]

    def _aggregate_train_metrics(self, accepted: list[SiteCandidate]) -> MetricRecord:
        """Weighted average of the metrics every accepted site reported."""
        common = _common_metric_keys([c.metrics for c in accepted])
        dropped = sorted({k for c in accepted for k in c.metrics.keys()} - set(common))
        if dropped:
            log(INFO, "aggregate_train: metric(s) %s not reported alike by every site; left out", dropped)
        records = [
            RecordDict({"metrics": MetricRecord({k: c.metrics[k] for k in common})}) for c in accepted
        ]
        return self.train_metrics_aggr_fn(records, self.weighted_by_key)

    # --- evaluation -------------------------------------------------------------------

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """FedAvg's aggregation over the content replies; per-site metrics kept for the report."""
        return super().aggregate_evaluate(server_round, self.screen_evaluate_replies(server_round, replies))


def site_label(msg: Message) -> str:
    """The site's name from the reply's `site` ConfigRecord, else `node <id>`."""
    name = _reply_site_name(msg)
    return name if name is not None else f"node {msg.metadata.src_node_id}"


def _reply_site_name(msg: Message) -> str | None:
    if msg.has_content():
        record = msg.content.config_records.get("site")
        if isinstance(record, ConfigRecord) and record.get("name") not in (None, ""):
            return str(record["name"])
    return None


def _unanswered(exchange: Exchange | None, answered: set[int]) -> list[int]:
    """Nodes sent an instruction in `exchange` that sent no reply (none without an exchange)."""
    if exchange is None:
        return []
    return [node for node in dict.fromkeys(exchange.nodes) if node not in answered]


def _no_reply(exchange: Exchange | None) -> str:
    timeout = exchange.timeout if exchange is not None else None
    if timeout is None:
        return "no reply"
    return f"no reply within strategy.round-timeout = {timeout:g} s (the site stopped, lost its connection or is too slow)"


def metric_dict(records: Iterable[MetricRecord]) -> Metrics:
    """Plain-Python copy of MetricRecords (floats, or lists of floats)."""
    out: Metrics = {}
    for record in records:
        for key, value in record.items():
            out[key] = [float(v) for v in value] if isinstance(value, list) else float(value)
    return out


def canonical_order(candidates: list[SiteCandidate]) -> list[SiteCandidate]:
    """Sort by site and node; the float sums then do not depend on arrival order."""
    keys = [(c.site, c.node_id) for c in candidates]
    if len(set(keys)) == len(keys):
        return [c for _, c in sorted(zip(keys, candidates, strict=True), key=lambda p: p[0])]
    # Duplicate (site, node): break ties by content so the order is still fixed.
    return sorted(candidates, key=lambda c: (c.site, c.node_id, c.num_examples, _digest(c)))


def _digest(candidate: SiteCandidate) -> str:
    h = hashlib.blake2b(digest_size=16)
    for key, values in candidate.state.items():
        h.update(key.encode())
        h.update(np.ascontiguousarray(values).tobytes())
    return h.hexdigest()


def _common_metric_keys(records: list[MetricRecord]) -> list[str]:
    """Keys every record has, with values of one kind (number, or list of one length)."""
    first = records[0]
    common = []
    for key in first.keys():
        kinds = {_metric_kind(r[key]) if key in r else None for r in records}
        if len(kinds) == 1 and None not in kinds:
            common.append(key)
    return common


def _metric_kind(value: Any) -> str:
    return f"list{len(value)}" if isinstance(value, list) else "scalar"


def _is_float_dtype(dtype: str) -> bool:
    try:
        return np.dtype(dtype).kind == "f"
    except TypeError:
        return False


def _first(keys: list[str], n: int = 3) -> str:
    shown = ", ".join(keys[:n])
    return f"[{shown}{', ...' if len(keys) > n else ''}]"
