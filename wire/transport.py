"""Adapter encodings on the wire (`transport.encoding`): how LoRA tensors travel.

- `float32` (default): as they are;
- `float16`: half the bytes; LoRA factors are small numbers well inside float16's range;
- `int8`: a quarter of the bytes plus one scale per tensor: symmetric per-tensor
  quantization, value ~= scale * q with q in [-127, 127] and scale = max|value| / 127.

Both ends encode what they send and decode what they receive, so strategies and training
always see float32. An encoded message carries a ConfigRecord `transport` naming the
encoding, the scales of each int8 ArrayRecord (in key order) and the bytes of tensor
payload as sent, which is what the communication figures count.

Whatever the encoding, each ArrayRecord travels packed: its tensors' bytes concatenated
into one uint8 array under the key `packed`, with a manifest (`layout.<record>`: JSON list
of [key, dtype, shape]) in the `transport` record. Flower 1.42 moves every array of a
message (and every 5 MB chunk of it) as its own object, one request per object on every hop
(ServerApp, SuperLink, SuperNode, ClientApp and back); an adapter of 420 small tensors was
over 800 requests per hop, packed it is one array of a few chunks (docs/architecture.md,
"Warm sites").
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .arrays import arrayrecord_nbytes, to_arrayrecord
from .audit import payload_sha256

log = logging.getLogger(__name__)

ENCODINGS: tuple[str, ...] = ("float32", "float16", "int8")
TRANSPORT = "transport"  # the ConfigRecord an encoded message carries
ENCODED_BYTES = "encoded-bytes"
PACKED = "packed"  # the one array key of a packed ArrayRecord
REPLY_POLL_SECONDS = 0.2  # a pull is one local request to the SuperLink
DECODED = "decoded"  # set in `transport` once decoded: decoding again is a no-op
SHA256 = "sha256"  # `sha256.<record>`: the packed payload's identity (wire/audit.py), kept once decoded
_DTYPES = {"float32": np.float32, "float16": np.float16, "int8": np.int8}


class EncodingError(ValueError):
    """An encoded message that cannot be decoded (named by record and key)."""


def check_encoding(encoding: str) -> None:
    if encoding not in ENCODINGS:
        raise ValueError(f"transport.encoding: {encoding!r} is not one of {list(ENCODINGS)}")


def encode_array(values: np.ndarray, encoding: str) -> tuple[np.ndarray, float | None]:
    """One tensor in `encoding`; the scale for int8 (None otherwise)."""
    check_encoding(encoding)
    values = np.asarray(values, dtype=np.float32)
    if encoding == "float16":
        return values.astype(np.float16), None
    if encoding == "int8":
        peak = float(np.max(np.abs(values))) if values.size else 0.0
        scale = peak / 127.0 if peak > 0 else 1.0
        return np.clip(np.rint(values / scale), -127, 127).astype(np.int8), scale
    return values, None


def decode_array(values: np.ndarray, scale: float | None) -> np.ndarray:
    if values.dtype == np.int8:
        if scale is None or not math.isfinite(scale):
            raise EncodingError("int8 tensor without a finite scale")
        return values.astype(np.float32) * np.float32(scale)
    return values.astype(np.float32)


def adapter_nbytes(state: Mapping[str, np.ndarray], encoding: str) -> int:
    """Bytes of tensor payload an adapter message carries in `encoding` (scales included):
    what the communication figures count, for the adapter the coordinator sends."""
    from flwr.app import RecordDict

    content = encode_content(RecordDict({"arrays": to_arrayrecord(state)}), encoding)
    return sent_nbytes(content) or arrayrecord_nbytes(content["arrays"])


def _array_record(arrays: Mapping[str, np.ndarray]):
    from flwr.app import Array, ArrayRecord

    return ArrayRecord(OrderedDict((k, Array(np.ascontiguousarray(v))) for k, v in arrays.items()))


def encode_content(content, encoding: str):
    """Encode and pack every ArrayRecord of a RecordDict in place (idempotent); returns it."""
    from flwr.app import ConfigRecord

    check_encoding(encoding)
    if (TRANSPORT in content.config_records and not content.config_records[TRANSPORT].get(DECODED)) \
            or not content.array_records:
        return content
    info: dict[str, Any] = {"encoding": encoding}
    sent = 0
    for name in list(content.array_records):
        record = content.array_records[name]
        encoded, scales = OrderedDict(), []
        for key in record.keys():
            values, scale = encode_array(record[key].numpy(), encoding)
            encoded[key] = values
            if scale is not None:
                scales.append(scale)
        content[name], info[f"layout.{name}"] = pack(encoded)
        info[f"{SHA256}.{name}"] = payload_sha256(content[name][PACKED].numpy().tobytes(), info[f"layout.{name}"])
        sent += arrayrecord_nbytes(content[name])
        if scales:
            info[f"scales.{name}"] = scales
            sent += 8 * len(scales)  # numbers in a ConfigRecord travel as 8 bytes each
    info[ENCODED_BYTES] = sent
    content[TRANSPORT] = ConfigRecord(info)
    return content


def pack(arrays: Mapping[str, np.ndarray]):
    """An ArrayRecord holding `arrays` as one uint8 array, and its manifest (a JSON string)."""
    manifest = [[key, values.dtype.name, list(values.shape)] for key, values in arrays.items()]
    blob = np.concatenate([np.ascontiguousarray(v, dtype=v.dtype.newbyteorder("<")).reshape(-1).view(np.uint8)
                           for v in arrays.values()]
                          or [np.zeros(0, np.uint8)])
    return _array_record({PACKED: blob}), json.dumps(manifest)


def unpack(record, manifest: str, where: str) -> OrderedDict[str, np.ndarray]:
    """The tensors of a packed ArrayRecord, checked against its manifest; EncodingError
    (naming `where`) if they do not match exactly."""
    try:
        entries = json.loads(manifest)
        if not isinstance(entries, list):
            raise ValueError("not a list")
        layout = [(str(key), _DTYPES[dtype], tuple(int(n) for n in shape)) for key, dtype, shape in entries]
    except (ValueError, TypeError, KeyError) as err:
        raise EncodingError(f"transport: {where}: manifest is not a list of [key, dtype, shape] ({err})") from None
    if list(record.keys()) != [PACKED]:
        raise EncodingError(f"transport: {where}: expected one array {PACKED!r}, got {list(record.keys())[:3]}")
    blob = record[PACKED].numpy()
    expected = sum(np.dtype(dtype).itemsize * math.prod(shape) for _, dtype, shape in layout)
    if blob.dtype != np.uint8 or blob.ndim != 1 or blob.size != expected:
        raise EncodingError(f"transport: {where}: {blob.dtype} array of {blob.size} bytes, the manifest "
                            f"describes {expected} bytes")
    if len({key for key, _, _ in layout}) != len(layout):
        raise EncodingError(f"transport: {where}: a key appears twice in the manifest")
    arrays, start = OrderedDict(), 0
    for key, dtype, shape in layout:
        size = np.dtype(dtype).itemsize * math.prod(shape)
        arrays[key] = blob[start:start + size].view(np.dtype(dtype).newbyteorder("<")).reshape(shape)
        start += size
    return arrays


def decode_content(content):
    """Unpack and decode the ArrayRecords of an encoded RecordDict to float32 in place (the
    `transport` record stays, for its byte count, marked decoded); a plain or already decoded
    one is returned as it is."""
    from flwr.app import ConfigRecord

    if TRANSPORT not in content.config_records or content.config_records[TRANSPORT].get(DECODED):
        return content
    info = content.config_records[TRANSPORT]
    encoding = info.get("encoding")
    if encoding not in ENCODINGS:
        raise EncodingError(f"transport: unknown encoding {encoding!r}; expected one of {list(ENCODINGS)}")
    digests = {}
    for name in list(content.array_records):
        layout = info.get(f"layout.{name}")
        if not isinstance(layout, str):
            raise EncodingError(f"transport: ArrayRecord {name!r} has no manifest (layout.{name})")
        tensors = unpack(content.array_records[name], layout, f"ArrayRecord {name!r}")
        digest = payload_sha256(content.array_records[name][PACKED].numpy().tobytes(), layout)
        claimed = info.get(f"{SHA256}.{name}")
        if claimed is not None and claimed != digest:
            raise EncodingError(f"transport: ArrayRecord {name!r}: its bytes do not match the SHA-256 its "
                                "sender recorded (changed on the way)")
        digests[f"{SHA256}.{name}"] = digest
        scales = info.get(f"scales.{name}") if encoding == "int8" else None
        if encoding == "int8" and (not isinstance(scales, list) or len(scales) != len(tensors)):
            raise EncodingError(f"transport: ArrayRecord {name!r} has {len(tensors)} int8 tensors but "
                                f"{len(scales) if isinstance(scales, list) else 'no'} scales")
        decoded = OrderedDict()
        for i, (key, values) in enumerate(tensors.items()):
            if values.dtype != _DTYPES[encoding]:
                raise EncodingError(f"transport: {name}/{key} has dtype {values.dtype}, expected {encoding}")
            decoded[key] = decode_array(values, float(scales[i]) if scales else None)
        content[name] = _array_record(decoded)
    content[TRANSPORT] = ConfigRecord({"encoding": encoding, ENCODED_BYTES: int(info.get(ENCODED_BYTES) or 0),
                                       DECODED: True, **digests})
    return content


def payload_digest(content, name: str | None = None) -> str | None:
    """The SHA-256 of an ArrayRecord as it travelled (`name`: the first one), from the
    `transport` record of an encoded or decoded message; None for a message never packed."""
    if TRANSPORT not in content.config_records:
        return None
    info = content.config_records[TRANSPORT]
    if name is None:
        keys = sorted(k for k in info if k.startswith(f"{SHA256}."))
        return str(info[keys[0]]) if keys else None
    value = info.get(f"{SHA256}.{name}")
    return None if value is None else str(value)


def adapter_sha256(state: Mapping[str, np.ndarray], encoding: str) -> str:
    """The SHA-256 an adapter gets on the wire in `encoding` (what `encode_content` records)."""
    from flwr.app import RecordDict

    content = encode_content(RecordDict({"arrays": to_arrayrecord(state)}), encoding)
    return str(content.config_records[TRANSPORT][f"{SHA256}.arrays"])


def sent_nbytes(content) -> int | None:
    """Tensor bytes as sent, for a decoded message that was encoded (else None)."""
    if TRANSPORT not in content.config_records:
        return None
    return int(content.config_records[TRANSPORT][ENCODED_BYTES])


def transport_grid(inner, encoding: str, stamp: Callable[[Any], None] | None = None):
    """The coordinator's Grid with outgoing messages encoded and packed and replies decoded,
    so strategies never see encoded tensors. `stamp`, when given, is called on every outgoing
    message's content as it leaves (the audit trail's head, server_app/audit_trail.py). It
    also waits for replies by pulling every `REPLY_POLL_SECONDS`: Flower's deployment Grid
    sleeps 3 s between pulls, which a round pays once per message phase
    (docs/architecture.md, "Warm sites")."""
    from flwr.serverapp import Grid

    check_encoding(encoding)

    class TransportGrid(Grid):
        def _encode(self, messages):
            messages = list(messages)
            for msg in messages:
                if not msg.has_error():
                    encode_content(msg.content, encoding)
                    if stamp is not None:
                        stamp(msg.content)
            return messages

        def _decode(self, replies):
            replies = list(replies)
            for msg in replies:
                if msg.has_error():
                    continue
                try:
                    decode_content(msg.content)
                except EncodingError as err:
                    # Left encoded: the strategy's screening rejects it, naming the site.
                    log.warning("reply from node %d cannot be decoded: %s", msg.metadata.src_node_id, err)
            return replies

        def set_run(self, run):
            inner.set_run(run)

        @property
        def run(self):
            return inner.run

        def create_message(self, *args, **kwargs):
            return inner.create_message(*args, **kwargs)

        def get_node_ids(self):
            return inner.get_node_ids()

        def get_nodes(self):
            return inner.get_nodes()

        def push_messages(self, messages):
            return inner.push_messages(self._encode(messages))

        def pull_messages(self, message_ids):
            return self._decode(inner.pull_messages(message_ids))

        def send_and_receive(self, messages, *, timeout=None):
            # Flower's Grid.send_and_receive, with a short pull interval.
            waiting = set(self.push_messages(messages))
            deadline = None if timeout is None else time.monotonic() + timeout
            replies = []
            while waiting:
                pulled = list(self.pull_messages(waiting))
                replies.extend(pulled)
                waiting -= {msg.metadata.reply_to_message_id for msg in pulled}
                if not waiting or (deadline is not None and time.monotonic() >= deadline):
                    break
                time.sleep(REPLY_POLL_SECONDS)
            return replies

        def __getattr__(self, name):  # anything else the Grid implementation offers
            return getattr(inner, name)

    return TransportGrid()
