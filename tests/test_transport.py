"""Adapter encodings on the wire: round trips, byte counts, packing, and broken encoded messages."""

from __future__ import annotations

import json
from collections import OrderedDict

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from settings.config import ConfigError, validate
from wire.transport import (
    PACKED,
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
    assert list(record.keys()) == [PACKED] and record[PACKED].numpy().dtype == np.uint8
    assert [entry[1] for entry in json.loads(msg[TRANSPORT]["layout.arrays"])] == [np.dtype(dtype).name] * 3
    assert sent_nbytes(msg) == adapter_nbytes(state, encoding)
    # Payload as serialized (one small header for the packed array), plus 8 bytes per int8 scale.
    values = sum(v.size for v in state.values())
    per_value = {"float32": 4, "float16": 2, "int8": 1}[encoding]
    overhead = adapter_nbytes(state, encoding) - per_value * values
    assert 0 < overhead <= 160 + (8 * len(state) if encoding == "int8" else 0)
    decoded = decode_content(msg)["arrays"]
    assert list(decoded.keys()) == list(state)
    for key, values in state.items():
        got = decoded[key].numpy()
        assert got.dtype == np.float32 and got.shape == values.shape
        peak = float(np.abs(values).max()) or 1.0
        assert np.abs(got - values).max() <= tolerance * peak + 1e-12  # relative to the tensor's peak
    assert msg["config"]["server-round"] == 1  # other records untouched


def test_a_packed_adapter_is_a_few_flower_objects_instead_of_one_per_tensor() -> None:
    from flwr.app import Message
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    from support.messages import instruction

    state = OrderedDict((f"layer{i}.lora_{ab}.weight", np.full((16, 64), i, np.float32))
                        for i in range(50) for ab in "AB")
    plain = len(get_all_nested_objects(Message(content(state), reply_to=instruction(1))))
    packed = len(get_all_nested_objects(Message(encode_content(content(state), "float32"), reply_to=instruction(1))))
    assert plain > 100 and packed < 10, (plain, packed)


def test_encoding_twice_is_encoding_once() -> None:
    msg = encode_content(content(adapter()), "int8")
    before = msg["arrays"][PACKED].numpy().copy()
    encode_content(msg, "int8")  # a content shared by several messages is encoded once
    assert np.array_equal(msg["arrays"][PACKED].numpy(), before)


def test_decoding_twice_is_decoding_once_and_a_decoded_message_can_be_sent_again() -> None:
    state = adapter()
    msg = decode_content(encode_content(content(state), "float16"))
    sent = sent_nbytes(msg)
    decode_content(msg)  # no-op: already float32 tensors under their own keys
    assert list(msg["arrays"].keys()) == list(state) and sent_nbytes(msg) == sent
    encode_content(msg, "int8")  # e.g. forwarded: packed again, in the new encoding
    assert list(msg["arrays"].keys()) == [PACKED] and msg[TRANSPORT]["encoding"] == "int8"
    assert np.allclose(decode_content(msg)["arrays"]["layer.lora_A.weight"].numpy(), state["layer.lora_A.weight"],
                       atol=np.abs(state["layer.lora_A.weight"]).max() / 100)


def test_broken_encoded_messages_are_named() -> None:
    msg = encode_content(content(adapter()), "int8")
    layout = msg[TRANSPORT]["layout.arrays"]
    msg[TRANSPORT] = ConfigRecord({"encoding": "int8", "scales.arrays": [1.0], "layout.arrays": layout,
                                   "encoded-bytes": 10})
    with pytest.raises(EncodingError, match="'arrays' has 3 int8 tensors but 1 scales"):
        decode_content(msg)
    msg[TRANSPORT] = ConfigRecord({"encoding": "int4", "encoded-bytes": 10})
    with pytest.raises(EncodingError, match="unknown encoding 'int4'"):
        decode_content(msg)
    msg = encode_content(content(adapter()), "float16")
    layout = msg[TRANSPORT]["layout.arrays"]
    msg[TRANSPORT] = ConfigRecord({"encoding": "int8", "scales.arrays": [1.0, 1.0, 1.0], "layout.arrays": layout,
                                   "encoded-bytes": 10})
    with pytest.raises(EncodingError, match="arrays/layer.lora_A.weight has dtype float16, expected int8"):
        decode_content(msg)


@pytest.mark.parametrize(("layout", "problem"), [
    (None, r"ArrayRecord 'arrays' has no manifest \(layout.arrays\)"),
    ("{not json", "manifest is not a list of \\[key, dtype, shape\\]"),
    ('[["a", "float64", [2]]]', "manifest is not a list"),
    ('[["a", "float32", [4, 32]]]', "uint8 array of 1152 bytes, the manifest describes 512 bytes"),
    ('[["a", "float32", [4, 32]], ["a", "float32", [32, 4]], ["b", "float32", [8, 4]]]', "a key appears twice"),
])
def test_a_broken_manifest_is_named(layout, problem) -> None:
    msg = encode_content(content(adapter()), "float32")
    info = {"encoding": "float32", "encoded-bytes": 10} | ({"layout.arrays": layout} if layout else {})
    msg[TRANSPORT] = ConfigRecord(info)
    with pytest.raises(EncodingError, match=problem):
        decode_content(msg)


def test_config_key_is_checked() -> None:
    assert validate({"transport.encoding": "int8"}).transport.encoding == "int8"
    with pytest.raises(ConfigError, match="transport.encoding: 'bf16' is not one of"):
        validate({"transport.encoding": "bf16"})
    with pytest.raises(ConfigError, match="'int8' cannot be combined with strategy.dp = 'client-fixed'"):
        validate({"transport.encoding": "int8", "strategy.dp": "client-fixed"})
    assert validate({"transport.encoding": "int8", "strategy.dp": "server-fixed"}).strategy.dp == "server-fixed"


def test_float32_grid_packs_what_it_sends_and_unpacks_replies() -> None:
    from flwr.app import Message
    from flwr.serverapp import Grid

    from support.messages import instruction

    sent = []
    reply_content = encode_content(content(adapter(1)), "float32")  # as a site packs its reply

    class Inner(Grid):  # stands in for Flower's Grid
        run = None
        def set_run(self, run): ...
        def create_message(self, *a, **k): ...
        def get_node_ids(self): return [11]
        def get_nodes(self): return []
        def push_messages(self, messages):
            sent.extend(messages)
            return ["ins-11"]
        def pull_messages(self, ids): return [Message(reply_content, reply_to=instruction(11))]
        def send_and_receive(self, messages, *, timeout=None): raise AssertionError("polls 3 s apart")

    grid = transport_grid(Inner(), "float32")
    outgoing = instruction(11)
    outgoing.content = content(adapter(0))
    replies = list(grid.send_and_receive([outgoing]))
    assert list(sent[0].content["arrays"].keys()) == [PACKED]
    got = replies[0].content["arrays"]
    assert all(np.array_equal(got[k].numpy(), v) for k, v in adapter(1).items())


def test_grid_pulls_replies_until_all_arrived_or_the_timeout(monkeypatch) -> None:
    from flwr.serverapp import Grid

    import wire.transport
    from support.messages import reply

    monkeypatch.setattr(wire.transport, "REPLY_POLL_SECONDS", 0.01)
    ready = {"ins-11": [1, 1, 2], "ins-12": [3]}  # reply i arrives at the pull numbered here
    pulls = []

    class Inner(Grid):  # replies arrive one pull apart
        run = None
        def set_run(self, run): ...
        def create_message(self, *a, **k): ...
        def get_node_ids(self): return [11, 12]
        def get_nodes(self): return []
        def push_messages(self, messages): return list(ready)
        def pull_messages(self, ids):
            pulls.append(set(ids))
            n = len(pulls)
            return [reply(int(i[-2:]), {"a": np.zeros(2, np.float32)}) for i in ids if ready[i][-1] == n]
        def send_and_receive(self, messages, *, timeout=None): raise AssertionError("polls 3 s apart")

    got = transport_grid(Inner(), "float32").send_and_receive([], timeout=5)
    assert [m.metadata.src_node_id for m in got] == [11, 12] and len(pulls) == 3
    assert pulls[2] == {"ins-12"}  # what arrived is not asked for again
    pulls.clear()
    ready["ins-12"] = [99]  # never arrives: the timeout ends the wait
    got = transport_grid(Inner(), "float32").send_and_receive([], timeout=0.2)
    assert [m.metadata.src_node_id for m in got] == [11] and 5 < len(pulls) < 40


def test_grid_decodes_replies_and_leaves_undecodable_ones_to_screening(caplog) -> None:
    from flwr.serverapp import Grid

    from strategies import FedMedLoRA, compose
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
        def push_messages(self, messages): return ["ins-11", "ins-12"]
        def pull_messages(self, ids): return [good, broken]
        def send_and_receive(self, messages, *, timeout=None): raise AssertionError("polls 3 s apart")

    grid = transport_grid(Inner(), "int8")
    replies = list(grid.send_and_receive([], timeout=1))
    assert "reply from node 12 cannot be decoded" in caplog.text
    assert replies[0].content["arrays"]["a"].numpy().dtype == np.float32
    assert list(replies[1].content["arrays"].keys()) == [PACKED]  # left as it came

    strategy = compose(FedMedLoRA(expected_shapes=SHAPES))
    arrays, _ = strategy.aggregate_train(1, replies)
    report = strategy.round_report()
    assert [u.site for u in report.updates] == ["h1"]
    assert report.rejected and report.rejected[0][0] == "h2" and "unexpected [packed]" in report.rejected[0][1]
    assert np.allclose(arrays["a"].numpy(), 0.25, atol=0.25 / 127)
    assert report.updates[0].bytes_up == adapter_nbytes(const_state(0.25), "int8")
