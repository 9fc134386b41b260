"""The coordinator's side of secure aggregation (`strategy.secure-aggregation`): Flower's SecAgg+.

The `SecureAggregation` wrapper (strategies/compose.py stacks it below the screening) runs
its strategy's exchanges through a `SecureAggregationGrid`, which sits between the strategy
and the wire. A round's train
instructions become Flower's four SecAgg+ exchanges (`SecAggPlusWorkflow`'s own stage
methods, run on a `LegacyContext` whose legacy strategy only hands over the instructions
and takes back the unmasked sum): the sites send public keys, then encrypted key shares,
then their adapters scaled by their weight, quantized and masked, then the shares that
remove the masks. The coordinator sees the masked vectors and their sum, never one site's
adapter.

What the strategy gets back: one reply per site whose masked adapter is in the sum, with
that site's own metrics and count (they are not secret: the site sends them in clear) and,
as its arrays, the size-weighted mean itself. Fed-MedLoRA's size-weighted average of
identical arrays is that mean, so the strategy, the screening and the report run
unchanged; strategies that need each site's own adapter are refused at start
(settings/config.py). docs/threat-model.md, "Secure aggregation", states what this
protects and what it does not.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MessageType, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from wire import protocol
from wire.transport import TRANSPORT

from .flower_compat import (
    MAIN_CONFIGS_RECORD,
    MAIN_PARAMS_RECORD,
    RECORD_KEY_CONFIGS,
    FitIns,
    GridClientProxy,
    LegacyContext,
    LegacyFedAvg,
    SecAggKey,
    SecAggPlusWorkflow,
    WorkflowKey,
    WorkflowState,
    message_nbytes,
    parameters_to_ndarrays,
)
from .round_report import RoundReport
from .wrapper import StrategyWrapper

SECURE_AGGREGATION = "secure-aggregation"  # the config record of the replies it returns
QUANTIZATION_RANGE = 1 << 24
MODULUS = 1 << 32  # SecAggPlusWorkflow's modulus_range (its default; masks and sums wrap at it)
# Each site adds at most QUANTIZATION_RANGE to every summed value (its weight, at most 1, is
# applied before quantization), so the sum of more sites than this could wrap.
MAX_SITES = MODULUS // QUANTIZATION_RANGE - 1
SHARES = 1.0  # every site holds a share of every other's secrets (Flower: a share of all sampled sites)
THRESHOLD = 0.5  # shares needed to remove a site's masks: half, rounded, at least 2


class SecureAggregation(StrategyWrapper):
    """The strategy it holds, its train exchanges run as SecAgg+ (`SecureAggregationGrid`).

    Its one job is the Grid (`wrap_grid`): the strategy, the screening above and the report
    run unchanged on the replies that Grid returns.
    """

    def __init__(self, strategy: Strategy, clipping_range: float, max_weight: int) -> None:
        super().__init__(strategy)
        self.clipping_range = float(clipping_range)
        self.max_weight = int(max_weight)

    def wrap_grid(self, grid: Grid) -> Grid:
        return SecureAggregationGrid(super().wrap_grid(grid), self.clipping_range, self.max_weight)


def note_secure_aggregation(report: RoundReport, labelled: list[tuple[str, Message]]) -> None:
    """The round's SecAgg+ time and bytes in its report, and each site's protocol messages as
    its extra traffic (what `SecureAggregationGrid` put in the replies)."""
    traffic = {}
    for site, msg in labelled:
        if msg.has_content() and SECURE_AGGREGATION in msg.content.config_records:
            record = msg.content[SECURE_AGGREGATION]
            report.extra[SECURE_AGGREGATION] = {k: record[k] for k in ("seconds", "sites", "bytes-sent",
                                                                       "bytes-received")}
            traffic[site] = {"bytes-up": int(record["extra-bytes-up"]), "bytes-down": int(record["extra-bytes-down"])}
    if traffic:
        report.extra["extra-traffic"] = traffic


class SecureAggregationGrid:
    """A Grid whose train exchanges run as SecAgg+ (module docstring); everything else passes.

    Parameters
    ----------
    grid : Grid
        The coordinator's Grid (under the transport encoding).
    clipping_range, max_weight :
        `strategy.secagg-clipping-range` and `strategy.secagg-max-weight`, the quantization
        every site uses (client_app/secure_aggregation.py checks its adapter against them).
    """

    def __init__(self, grid, clipping_range: float, max_weight: int) -> None:
        self._grid = grid
        self.clipping_range = float(clipping_range)
        self.max_weight = int(max_weight)
        self.last_round: dict[str, Any] | None = None  # seconds, bytes, sites of the latest exchange

    def __getattr__(self, name: str) -> Any:
        if name == "_grid":
            raise AttributeError(name)
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        if not messages or any(m.metadata.message_type != MessageType.TRAIN or
                               RECORD_KEY_CONFIGS in m.content.config_records for m in messages):
            return self._grid.send_and_receive(messages, timeout=timeout)
        return self._secure_round(messages, timeout)

    def _secure_round(self, messages: list[Message], timeout: float | None) -> list[Message]:
        started = time.perf_counter()
        by_node = {m.metadata.dst_node_id: m for m in messages}
        if len(by_node) > MAX_SITES:
            reason = (f"secure aggregation: {len(by_node)} sites x quantization range 2^24 would pass the "
                      f"modulus 2^32 and the sum would wrap; at most {MAX_SITES} sites can be summed")
            log(WARNING, "%s; no message was sent", reason)
            return [Message(error=Error(code=0, reason=reason), reply_to=m) for m in messages]
        server_round = int(messages[0].content[protocol.CONFIG]["server-round"])
        # The sum holds the factors the round's rule sends (FFA-LoRA: B only), in the adapter's order.
        _, send = protocol.factor_rule(messages[0].content[protocol.CONFIG])
        keys = list(protocol.selected_factors(dict.fromkeys(messages[0].content[protocol.ARRAYS].keys()), send))
        recorder = _StageRecorder(self._grid, server_round)
        workflow = SecAggPlusWorkflow(SHARES, THRESHOLD, max_weight=float(self.max_weight),
                                      clipping_range=self.clipping_range, quantization_range=QUANTIZATION_RANGE,
                                      timeout=timeout)
        legacy = _legacy_context(by_node, recorder, server_round)
        state = WorkflowState()
        completed = workflow.setup_stage(recorder, legacy, state)
        if completed:
            # The masked-adapter stage sends each site its `nid_to_fitins` with Flower's record
            # added: our own train instruction, not the legacy FitIns the setup made.
            state.nid_to_fitins = {node: RecordDict(dict(by_node[node].content.items())) for node in state.nid_to_fitins}
        for stage in (workflow.share_keys_stage, workflow.collect_masked_vectors_stage, workflow.unmask_stage):
            completed = completed and stage(recorder, legacy, state)
        total = legacy.strategy.aggregate  # type: ignore[attr-defined]
        self.last_round = {"seconds": time.perf_counter() - started, "sites": len(recorder.masked),
                           "bytes-sent": sum(recorder.down.values()), "bytes-received": sum(recorder.up.values())}
        log(INFO, "round %d: secure aggregation of %d sites' adapters (%s) in %.1f s, %.2f MB sent and %.2f MB "
            "received", server_round, len(recorder.masked), "completed" if completed else "halted",
            self.last_round["seconds"], self.last_round["bytes-sent"] / 1e6, self.last_round["bytes-received"] / 1e6)
        if not completed or total is None:
            reason = ("secure aggregation halted: too few sites took part in a stage for the masks to be "
                      f"removed (each site needs {state.threshold} of its neighbours)")
            log(WARNING, "round %d: %s", server_round, reason)
            halted = [Message(error=Error(code=0, reason=reason), metadata=copy.copy(r.metadata))
                      for n, r in recorder.masked.items() if n not in recorder.errors]
            return [*recorder.errors.values(), *halted]
        bound = self._sum_bound(recorder)
        largest = max((float(np.abs(v).max()) for v in total), default=0.0)
        if not largest <= bound:
            # Every site checks its input before quantization; a value past what in-range
            # inputs can give means one did not (or the sum wrapped): nothing of it is used.
            reason = (f"secure aggregation: the unmasked mean reaches {largest:.4g}, more than the {bound:.4g} that "
                      "inputs inside strategy.secagg-clipping-range can give; a site sent an out-of-range or "
                      "non-finite adapter, so the round's sum is discarded")
            log(WARNING, "round %d: %s", server_round, reason)
            return [*recorder.errors.values(), *[Message(error=Error(code=0, reason=reason), metadata=copy.copy(r.metadata))
                                                 for n, r in recorder.masked.items() if n not in recorder.errors]]
        arrays = ArrayRecord({k: Array(v.astype("float32")) for k, v in zip(keys, total, strict=True)})
        replies = list(recorder.errors.values())
        for node, reply in recorder.masked.items():
            # The site's metrics and name records; not Flower's, and not `transport` (it names
            # the empty record the masked reply travelled with, not an adapter).
            content = RecordDict({protocol.ARRAYS: arrays, **{
                name: record for name, record in reply.content.items()
                if name in (protocol.METRICS, protocol.SITE) or (
                    isinstance(record, ConfigRecord) and name != TRANSPORT
                    and not name.startswith(("fitres.", RECORD_KEY_CONFIGS)))}})
            content[SECURE_AGGREGATION] = ConfigRecord({**self.last_round, **recorder.traffic(node)})
            replies.append(Message(content=content, metadata=copy.copy(reply.metadata)))
        return replies


    def _sum_bound(self, recorder: _StageRecorder) -> float:
        """The largest |value| the size-weighted mean can hold when every site's input is in
        range: each site sends v_k * n_k / max_weight within +-clipping, so
        |sum_k n_k v_k| <= K * max_weight * clipping, divided by sum_k n_k."""
        counts = [float(r.content[protocol.METRICS]["num-examples"]) for r in recorder.masked.values()
                  if protocol.METRICS in r.content.metric_records]
        if not counts or sum(counts) <= 0:
            return float("inf")
        return len(counts) * self.max_weight * self.clipping_range / sum(counts)


class _StageRecorder:
    """The Grid the workflow's stages use: keeps each node's last error reply and its
    masked-adapter reply (the one with its metrics), and the bytes to and from each node.
    Flower's key and share messages get the round number (a CONFIG record with
    `server-round`), so a site's audit trail places every stage in its round."""

    def __init__(self, grid, server_round: int) -> None:
        self._grid = grid
        self.server_round = server_round
        self.errors: dict[int, Message] = {}
        self.masked: dict[int, Message] = {}
        self.down: dict[int, int] = {}  # bytes sent to a node, all stages
        self.up: dict[int, int] = {}  # bytes a node sent, all stages
        self.masked_down: dict[int, int] = {}  # the masked-adapter stage's instruction (the global adapter)
        self.masked_up: dict[int, int] = {}  # the masked adapter

    def __getattr__(self, name: str) -> Any:
        if name == "_grid":
            raise AttributeError(name)
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        for msg in messages:
            if protocol.CONFIG not in msg.content.config_records:
                msg.content[protocol.CONFIG] = ConfigRecord({"server-round": self.server_round})
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        for msg in messages:  # encoded in place by the transport Grid below: their size on the wire
            node, size = msg.metadata.dst_node_id, message_nbytes(msg)
            self.down[node] = self.down.get(node, 0) + size
            if protocol.ARRAYS in msg.content.array_records:
                self.masked_down[node] = size
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                self.errors[node] = reply
                continue
            size = message_nbytes(reply)
            self.up[node] = self.up.get(node, 0) + size
            if SecAggKey.MASKED_PARAMETERS in reply.content.config_records.get(RECORD_KEY_CONFIGS, {}):
                self.masked[node], self.masked_up[node] = reply, size
        return replies

    def traffic(self, node: int) -> dict[str, int]:
        """The node's masked adapter (`bytes-up`) and the protocol's other messages both ways."""
        return {"bytes-up": self.masked_up.get(node, 0),
                "extra-bytes-up": self.up.get(node, 0) - self.masked_up.get(node, 0),
                "extra-bytes-down": self.down.get(node, 0) - self.masked_down.get(node, 0)}


def _legacy_context(by_node: dict[int, Message], grid, server_round: int):
    """The LegacyContext the workflow's stages read: the round number, the sampled sites and
    a legacy strategy that hands over nothing else and keeps the unmasked sum."""
    class SumKeeper(LegacyFedAvg):
        """Hands the workflow the sampled sites; keeps the unmasked, weighted sum it returns."""

        aggregate = None

        def configure_fit(self, server_round, parameters, client_manager):
            del server_round, client_manager
            return [(GridClientProxy(node, grid, 0), FitIns(parameters, {})) for node in by_node]

        def aggregate_fit(self, server_round, results, failures):
            del server_round, failures
            if results:
                self.aggregate = parameters_to_ndarrays(results[0][1].parameters)
                return results[0][1].parameters, {}
            return None, {}

    state = RecordDict({MAIN_CONFIGS_RECORD: ConfigRecord({WorkflowKey.CURRENT_ROUND: server_round}),
                        MAIN_PARAMS_RECORD: ArrayRecord()})
    context = Context(run_id=0, node_id=0, node_config={}, state=state, run_config={})
    return LegacyContext(context, strategy=SumKeeper())
