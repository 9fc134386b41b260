"""Adapter state (name -> numpy array) to and from Flower records, and their size on the wire.

Torch-free, so the strategies and the transport can use it without loading a model.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np


def to_arrayrecord(state: dict[str, np.ndarray]):
    from flwr.app import Array, ArrayRecord

    return ArrayRecord(OrderedDict((k, Array(np.asarray(v, dtype=np.float32))) for k, v in state.items()))


def from_arrayrecord(record) -> OrderedDict[str, np.ndarray]:
    return OrderedDict((k, record[k].numpy()) for k in record.keys())


def arrayrecord_nbytes(record) -> int:
    """Bytes of tensor payload an ArrayRecord puts on the wire."""
    return sum(len(record[k].data) for k in record.keys())


def metricrecord_nbytes(record) -> int:
    """Bytes of payload a MetricRecord puts on the wire: 8 per number (lists count each item)."""
    return 8 * sum(len(v) if isinstance(v, list) else 1 for v in record.values())


def arrays_digest(record) -> str:
    """A hash of an ArrayRecord's keys, dtypes, shapes and values."""
    h = hashlib.blake2b(digest_size=16)
    for key in record.keys():
        values = np.ascontiguousarray(record[key].numpy())
        h.update(f"{key}|{values.dtype.str}|{values.shape}|".encode())
        h.update(values.tobytes())
    return h.hexdigest()
