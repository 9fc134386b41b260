"""Flower messages as a SuperNode or the SuperLink would send them: an instruction with the
SuperLink's metadata, and a site's reply to it (an update, or an error), built as a
SuperNode builds it, `Message(content, reply_to=instruction)`, so `metadata.src_node_id` is
the site's node."""

from __future__ import annotations

import time

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    Metadata,
    MetricRecord,
    RecordDict,
)


def instruction(node_id: int, message_type: str = MessageType.TRAIN, content: RecordDict | None = None) -> Message:
    """What a SuperNode receives (instruction messages need the SuperLink's metadata)."""
    metadata = Metadata(
        run_id=1,
        message_id=f"ins-{node_id}",
        src_node_id=0,
        dst_node_id=node_id,
        reply_to_message_id="",
        group_id="1",
        created_at=time.time(),
        ttl=3600.0,
        message_type=message_type,
    )
    return Message(content=RecordDict() if content is None else content, metadata=metadata)


def reply(
    node_id: int,
    state: dict[str, np.ndarray],
    num_examples: float | list | None = 10,
    site: str | None = None,
    metrics: dict | None = None,
    message_type: str = MessageType.TRAIN,
) -> Message:
    metric_values = dict(metrics or {"train-loss": 1.0})
    if num_examples is not None:
        metric_values["num-examples"] = num_examples
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(np.asarray(v)) for k, v in state.items()}),
            "metrics": MetricRecord(metric_values),
        }
    )
    if site is not None:
        content["site"] = ConfigRecord({"name": site})
    return Message(content=content, reply_to=instruction(node_id, message_type))


def error_reply(node_id: int, reason: str = "data/notes.txt line 3: bad span") -> Message:
    return Message(Error(code=7, reason=reason), reply_to=instruction(node_id))
