"""The checks every site update passes before any strategy aggregates it, as pure functions.

Flower's FedAvg raises for the whole round when one reply is malformed. Here each reply is
checked on its own: `screen_train_replies` returns the accepted replies (as
`SiteCandidate`s, in a fixed order) and the rejected ones with their reasons, and
`bound_update_norms` does the same for `strategy.max-update-norm`. Neither logs nor keeps
anything; the wrappers (strategies/screened.py, strategies/norm_bound.py) call them, log the
verdicts and put them in the round's report, and hand the layer below `clean_messages`, which
the next layer reads back with `read_screened`.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from wire.arrays import arrayrecord_nbytes
from wire.transport import payload_digest, sent_nbytes

from .clipping import scale_toward, update_terms

Shapes = Mapping[str, tuple[int, ...]]
# Weights must sum to one up to this much float64 rounding.
WEIGHT_SUM_TOLERANCE = 1e-6
Rejection = tuple[str, str]  # (site, reason)


class UpdateRejected(ValueError):
    """A site update failed a check; the message is the reason."""


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


class FilledState(Mapping[str, np.ndarray]):
    """A reply's tensors, and for the keys it did not send (a factor the round's rule kept
    at the sites) the adapter the round's instructions carried; in `keys` order."""

    def __init__(self, sent: Mapping[str, np.ndarray], round_adapter: ArrayRecord, keys: Sequence[str]) -> None:
        self._sent = sent
        self._round_adapter = round_adapter
        self._keys = tuple(keys)

    def __getitem__(self, key: str) -> np.ndarray:
        if key in self._sent:
            return self._sent[key]
        if key not in self._keys:
            raise KeyError(key)
        return self._round_adapter[key].numpy()

    def filled_array(self, key: str) -> Array | None:
        """The round adapter's own Array for a key the reply did not send (None for a sent key):
        passed on as it is, twenty sites' fill-ins cost no copy."""
        return None if key in self._sent or key not in self._keys else self._round_adapter[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


@dataclass
class SiteCandidate:
    """A reply that passed the checks; what `LoraFedAvg.aggregation_weights` weighs.

    `state` reads the reply's tensors on demand (a `ReplyState`) in the expected key order;
    the norm bound replaces it with decoded arrays when it moves the update.
    """

    node_id: int
    site: str
    num_examples: float
    state: Mapping[str, np.ndarray]  # in the expected key order
    metrics: MetricRecord
    bytes_up: int
    rejected: str | None = None  # set through `LoraFedAvg.reject`
    sha256: str = ""  # the adapter as it travelled (wire/transport.py); "" if it was not packed
    reported: dict[str, str] = field(default_factory=dict)  # the reply's `site` record but the name
    clip_factor: float | None = None  # set when the update-norm bound scaled the update
    message: Message | None = field(default=None, repr=False, compare=False)  # the reply


@dataclass
class Screening:
    """The verdicts on one round's train replies."""

    accepted: list[SiteCandidate]  # canonical order (`canonical_order`)
    rejected: list[Rejection]


@dataclass
class NormBound:
    """The verdicts of the update-norm bound: kept (some moved), rejected, and every norm."""

    kept: list[SiteCandidate]
    rejected: list[Rejection]
    norms: dict[str, float]  # by site
    clipped: dict[str, dict[str, float]]  # by site: the norm and the factor it was scaled by


def read_reply(msg: Message, shapes: Shapes, weighted_by_key: str, site: str) -> SiteCandidate:
    """The reply as a candidate, checked without decoding a tensor; raises UpdateRejected.

    Exactly one ArrayRecord with exactly the keys of `shapes`, each of its shape and of a
    float dtype; exactly one MetricRecord whose `weighted_by_key` is a number > 0.
    """
    content = msg.content
    if len(content.array_records) != 1:
        raise UpdateRejected(f"expected exactly one ArrayRecord, found {len(content.array_records)}")
    record = next(iter(content.array_records.values()))
    missing = [k for k in shapes if k not in record]
    unexpected = [k for k in record.keys() if k not in shapes]
    if missing or unexpected:
        raise UpdateRejected(f"adapter keys differ: missing {_first(missing)}, unexpected {_first(unexpected)}")
    for key, shape in shapes.items():
        array = record[key]
        if tuple(array.shape) != tuple(shape):
            raise UpdateRejected(f"{key} has shape {tuple(array.shape)}, expected {tuple(shape)}")
        if not _is_float_dtype(array.dtype):
            raise UpdateRejected(f"{key} has dtype {array.dtype}, expected a float dtype")
    num_examples, metrics = _read_metrics(content, weighted_by_key)
    return SiteCandidate(
        node_id=msg.metadata.src_node_id,
        site=site,
        num_examples=num_examples,
        state=ReplyState(record, list(shapes)),
        metrics=metrics,
        bytes_up=_bytes_up(content, record),
        message=msg,
        sha256=payload_digest(content) or "",
        reported=_reported(content),
    )


def _bytes_up(content: RecordDict, record) -> int:
    """The adapter's bytes as the site sent them: its masked adapter under secure aggregation
    (the reply's arrays are then the sum: strategies/secure_aggregation.py)."""
    from .secure_aggregation import SECURE_AGGREGATION

    if SECURE_AGGREGATION in content.config_records:
        return int(content[SECURE_AGGREGATION]["bytes-up"])
    return sent_nbytes(content) or arrayrecord_nbytes(record)


def _reported(content: RecordDict) -> dict[str, str]:
    """What a site says about itself with its adapter (base model, versions: wire/protocol.py)."""
    record = content.config_records.get("site")
    return {k: str(v) for k, v in record.items() if k != "name"} if record is not None else {}


def check_reply(msg: Message, shapes: Shapes, weighted_by_key: str, site: str) -> SiteCandidate:
    """`read_reply`, then every tensor decoded once and checked finite; raises UpdateRejected."""
    candidate = read_reply(msg, shapes, weighted_by_key, site)
    record = next(iter(msg.content.array_records.values()))
    for key in shapes:  # one tensor at a time: the check keeps nothing but the verdict
        try:
            values = record[key].numpy()
        except Exception as err:  # noqa: BLE001 - any decoding failure is the reply's fault
            raise UpdateRejected(f"{key} cannot be decoded ({type(err).__name__}: {err})") from err
        finite = np.isfinite(values)
        if not finite.all():
            raise UpdateRejected(f"{key} has {int(values.size - np.count_nonzero(finite))} non-finite value(s)")
        del values, finite
    return candidate


def screen_train_replies(
    replies: Sequence[tuple[str, Message]], check: Callable[[Message, str], SiteCandidate]
) -> Screening:
    """Split (site, reply) pairs into accepted candidates and (site, reason) rejections.

    An error reply is rejected with its code and reason; a content reply is rejected when
    `check` raises UpdateRejected. Both lists come in a fixed order, whatever the arrival order.
    """
    accepted, rejected = [], []
    for site, msg in replies:
        if msg.has_error():
            rejected.append((site, f"error reply (code {msg.error.code}): {msg.error.reason}"))
            continue
        try:
            accepted.append(check(msg, site))
        except UpdateRejected as err:
            rejected.append((site, str(err)))
    return Screening(canonical_order(accepted), sorted(rejected))


def bound_update_norms(
    candidates: Sequence[SiteCandidate], global_state: Mapping[str, np.ndarray], bound: float, action: str
) -> NormBound:
    """Hold each update's norm (strategies/clipping.py) to `bound`: reject it (`action` =
    "reject") or move it toward the global adapter ("clip"). A bound of 0 keeps every update."""
    if bound <= 0:
        return NormBound(list(candidates), [], {}, {})
    kept, rejected, norms, clipped = [], [], {}, {}
    for candidate in candidates:
        terms = update_terms(candidate.state, global_state)
        norm = norms[candidate.site] = terms.norm()
        if norm <= bound:
            kept.append(candidate)
            continue
        reason = f"update norm {norm:.4g} exceeds strategy.max-update-norm = {bound:g}"
        if action == "reject":
            rejected.append((candidate.site, reason))
            continue
        factor = terms.clip_factor(bound)
        clipped[candidate.site] = {"update-norm": norm, "factor": factor, "norm-after": terms.norm(factor)}
        kept.append(dataclasses.replace(
            candidate, state=scale_toward(candidate.state, global_state, factor), clip_factor=factor
        ))
    return NormBound(kept, rejected, norms, clipped)


def clean_messages(candidates: Sequence[SiteCandidate], shared_metrics: bool = False) -> list[Message]:
    """Fresh replies for the layer below: float32 arrays of every key, the site's metrics (with
    `shared_metrics`, only those every site reported: Flower's metric aggregation needs the
    same keys everywhere), and the site's record named as the screening named it.

    Unchanged float32 arrays are shared with the original reply (no copy), and a factor the
    round did not send is the round adapter's own Array; Flower's robust strategies pop
    arrays from the records they get, so the records are new. A clipped update carries its
    decoded state.
    """
    common = common_metric_keys([c.metrics for c in candidates]) if shared_metrics and candidates else None
    messages = []
    for candidate in candidates:
        assert candidate.message is not None
        original = next(iter(candidate.message.content.array_records.values()))
        arrays = {}
        for key in candidate.state:
            # Unclipped, a key is the reply's own array or, for a factor it did not send, the round adapter's.
            if candidate.clip_factor is not None:
                same = None
            elif key in original:
                same = original[key]
            else:
                same = candidate.state.filled_array(key) if isinstance(candidate.state, FilledState) else None
            if same is not None and np.dtype(same.dtype) == np.float32:
                arrays[key] = same
            else:
                arrays[key] = Array(np.asarray(candidate.state[key], np.float32))
        records = dict(candidate.message.content.config_records)
        records["site"] = ConfigRecord({**records.get("site", {}), "name": candidate.site})
        metrics = MetricRecord({k: candidate.metrics[k] for k in (candidate.metrics if common is None else common)})
        content = RecordDict({"arrays": ArrayRecord(arrays), "metrics": metrics, **records})
        messages.append(Message(content=content, metadata=copy.copy(candidate.message.metadata)))
    return messages


def read_screened(msg: Message, weighted_by_key: str) -> SiteCandidate:
    """A reply from `clean_messages` as a candidate again, without decoding a tensor: its keys
    and shapes are its own (the screening checked them)."""
    record = next(iter(msg.content.array_records.values()))
    return read_reply(msg, {key: tuple(record[key].shape) for key in record.keys()}, weighted_by_key,
                      site_label(msg))


def check_weights(name: str, candidates: Sequence[SiteCandidate], weights: Sequence[float]) -> list[float]:
    """The weights an aggregation hook returned, as floats; ValueError naming the hook if
    they are not one finite weight >= 0 per candidate, 0 for the rejected ones, summing to
    one over the others."""
    weights = [float(w) for w in weights]
    if len(weights) != len(candidates):
        raise ValueError(f"{name} returned {len(weights)} weights for {len(candidates)} updates")
    if any(not math.isfinite(w) or w < 0 for w in weights):
        raise ValueError(f"{name} returned weights that are negative or not finite: {weights}")
    if any(w != 0 for c, w in zip(candidates, weights, strict=True) if c.rejected is not None):
        raise ValueError(f"{name} gave a rejected update a non-zero weight: {weights}")
    kept = [w for c, w in zip(candidates, weights, strict=True) if c.rejected is None]
    if kept and abs(math.fsum(kept) - 1.0) > WEIGHT_SUM_TOLERANCE:
        raise ValueError(f"{name} returned weights that do not sum to one: {weights}")
    return weights


def canonical_order(candidates: Sequence[SiteCandidate]) -> list[SiteCandidate]:
    """Sort by site and node; the float sums then do not depend on arrival order."""
    keys = [(c.site, c.node_id) for c in candidates]
    if len(set(keys)) == len(keys):
        return [c for _, c in sorted(zip(keys, candidates, strict=True), key=lambda p: p[0])]
    # Duplicate (site, node): break ties by content so the order is still fixed.
    return sorted(candidates, key=lambda c: (c.site, c.node_id, c.num_examples, _digest(c)))


def common_metric_keys(records: Sequence[MetricRecord]) -> list[str]:
    """Keys every record has, with values of one kind (number, or list of one length)."""
    first = records[0]
    common = []
    for key in first.keys():
        kinds = {_metric_kind(r[key]) if key in r else None for r in records}
        if len(kinds) == 1 and None not in kinds:
            common.append(key)
    return common


def expected_shapes_of(shapes: Mapping[str, Sequence[int]]) -> OrderedDict[str, tuple[int, ...]]:
    """Keys and shapes as the checks compare them; ValueError if there are none."""
    if not shapes:
        raise ValueError("expected adapter shapes: got no tensors")
    return OrderedDict((str(k), tuple(int(d) for d in v)) for k, v in shapes.items())


def site_label(msg: Message) -> str:
    """The site's name from the reply's `site` ConfigRecord, else `node <id>`."""
    name = reply_site_name(msg)
    return name if name is not None else f"node {msg.metadata.src_node_id}"


def reply_site_name(msg: Message) -> str | None:
    """The name in the reply's `site` ConfigRecord (client_app/handlers.py), if any."""
    if msg.has_content():
        record = msg.content.config_records.get("site")
        if isinstance(record, ConfigRecord) and record.get("name") not in (None, ""):
            return str(record["name"])
    return None


def _read_metrics(content: RecordDict, key: str) -> tuple[float, MetricRecord]:
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


def _digest(candidate: SiteCandidate) -> str:
    h = hashlib.blake2b(digest_size=16)
    for key, values in candidate.state.items():
        h.update(key.encode())
        h.update(np.ascontiguousarray(values).tobytes())
    return h.hexdigest()


def _metric_kind(value: object) -> str:
    return f"list{len(value)}" if isinstance(value, list) else "scalar"


def _is_float_dtype(dtype: str) -> bool:
    try:
        return np.dtype(dtype).kind == "f"
    except TypeError:
        return False


def _first(keys: list[str], n: int = 3) -> str:
    shown = ", ".join(keys[:n])
    return f"[{shown}{', ...' if len(keys) > n else ''}]"
