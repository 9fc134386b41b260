"""Adapter encodings on the wire: round trips, byte counts, and broken encoded messages."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from settings.config import ConfigError, validate
from wire.transport import (
    TRANSPORT,
    EncodingError,
    adapter_nbytes,
    decode_content,
    encode_content,
    sent_nbytes,
    transport_grid,
)


def adapter(seed: int = 0) -> OrderedDict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return OrderedDict([("layer.lora_A.weight", rng.normal(0, 0.02, (4, 32)).astype(np.float32)),
                        ("layer.lora_B.weight", rng.normal(0, 1e-3, (32, 4)).astype(np.float32)),
                        ("zeros.lora_B.weight", np.zeros((8, 4), np.float32))])


def content(state) -> RecordDict:
    return RecordDict({"arrays": ArrayRecord(OrderedDict((k, Array(v)) for k, v in state.items())),
                       "config": ConfigRecord({"server-round": 1})})


@pytest.mark.parametrize(("encoding", "tolerance", "dtype"),
                         [("float32", 0.0, np.float32), ("float16", 1e-3, np.float16), ("int8", 1 / 254, np.int8)])
def test_round_trip_error_and_bytes(encoding, tolerance, dtype) -> None:
    state = adapter()
    msg = encode_content(content(state), encoding)
    record = msg["arrays"]
    assert all(record[k].numpy().dtype == dtype for k in record.keys())
    values = sum(v.size for v in state.values())
    if encoding == "float32":
        assert TRANSPORT not in msg.config_records  # unchanged: nothing to decode
    else:
        assert sent_nbytes(msg) == adapter_nbytes(state, encoding)
    # Payload as serialized (a small header per tensor), plus 8 bytes per int8 scale.
    per_value = {"float32": 4, "float16": 2, "int8": 1}[encoding]
    overhead = adapter_nbytes(state, encoding) - per_value * values
    assert 0 < overhead <= len(state) * (160 + (8 if encoding == "int8" else 0))
    decoded = decode_content(msg)["arrays"]
    for key, values in state.items():
        got = decoded[key].numpy()
        assert got.dtype == np.float32 and got.shape == values.shape
        peak = float(np.abs(values).max()) or 1.0
        assert np.abs(got - values).max() <= tolerance * peak + 1e-12  # relative to the tensor's peak
    assert msg["config"]["server-round"] == 1  # other records untouched


def test_encoding_twice_is_encoding_once() -> None:
    msg = encode_content(content(adapter()), "int8")
    before = msg["arrays"]["layer.lora_A.weight"].numpy().copy()
    encode_content(msg, "int8")  # a content shared by several messages is encoded once
    assert np.array_equal(msg["arrays"]["layer.lora_A.weight"].numpy(), before)


def test_broken_encoded_messages_are_named() -> None:
    msg = encode_content(content(adapter()), "int8")
    msg[TRANSPORT] = ConfigRecord({"encoding": "int8", "scales.arrays": [1.0], "encoded-bytes": 10})
    with pytest.raises(EncodingError, match="'arrays' has 3 int8 tensors but 1 scales"):
        decode_content(msg)
    msg[TRANSPORT] = ConfigRecord({"encoding": "int4", "encoded-bytes": 10})
    with pytest.raises(EncodingError, match="unknown encoding 'int4'"):
        decode_content(msg)
    msg = encode_content(content(adapter()), "float16")
    msg[TRANSPORT] = ConfigRecord({"encoding": "int8", "scales.arrays": [1.0, 1.0, 1.0], "encoded-bytes": 10})
    with pytest.raises(EncodingError, match="arrays/layer.lora_A.weight has dtype float16, expected int8"):
        decode_content(msg)


def test_config_key_is_checked() -> None:
    assert validate({"transport.encoding": "int8"})["transport.encoding"] == "int8"
    with pytest.raises(ConfigError, match="transport.encoding: 'bf16' is not one of"):
        validate({"transport.encoding": "bf16"})
    with pytest.raises(ConfigError, match="'int8' cannot be combined with strategy.dp = 'client-fixed'"):
        validate({"transport.encoding": "int8", "strategy.dp": "client-fixed"})
    assert validate({"transport.encoding": "int8", "strategy.dp": "server-fixed"})["strategy.dp"] == "server-fixed"


def test_float32_grid_is_the_grid_itself() -> None:
    sentinel = object()
    assert transport_grid(sentinel, "float32") is sentinel


def test_grid_decodes_replies_and_leaves_undecodable_ones_to_screening(caplog) -> None:
    from flwr.serverapp import Grid

    from strategies import FedMedLoRA, ScreenedStrategy
    from support.messages import reply
    from support.toy_adapter import SHAPES, const_state

    good = reply(11, const_state(0.25), 1, "h1")
    encode_content(good.content, "int8")
    broken = reply(12, const_state(0.75), 3, "h2")
    encode_content(broken.content, "int8")
    broken.content[TRANSPORT] = ConfigRecord({"encoding": "int8", "encoded-bytes": 1})  # scales lost

    class Inner(Grid):  # stands in for Flower's Grid: returns the two replies
        run = None
        def set_run(self, run): ...
        def create_message(self, *a, **k): ...
        def get_node_ids(self): return [11, 12]
        def get_nodes(self): return []
        def push_messages(self, messages): return []
        def pull_messages(self, ids): return []
        def send_and_receive(self, messages, *, timeout=None): return [good, broken]

    grid = transport_grid(Inner(), "int8")
    replies = list(grid.send_and_receive([], timeout=1))
    assert "reply from node 12 cannot be decoded" in caplog.text
    assert replies[0].content["arrays"]["a"].numpy().dtype == np.float32
    assert replies[1].content["arrays"]["a"].numpy().dtype == np.int8  # left as it came

    strategy = ScreenedStrategy(FedMedLoRA(expected_shapes=SHAPES))
    arrays, _ = strategy.aggregate_train(1, replies)
    report = strategy.round_report()
    assert [u.site for u in report.updates] == ["h1"]
    assert report.rejected and report.rejected[0][0] == "h2" and "dtype int8" in report.rejected[0][1]
    assert np.allclose(arrays["a"].numpy(), 0.25, atol=0.25 / 127)
    assert report.updates[0].bytes_up == adapter_nbytes(const_state(0.25), "int8")
