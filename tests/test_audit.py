"""Audit trails (wire/audit.py, fedmedlora/audit_check.py): the hash chain shows an edited,
removed or reordered line; a broken chain is not extended; a packed adapter changed on the
way is refused; the coordinator's and a site's trails are matched adapter by adapter.
Attacks by someone who can write the files (a cut tail, a rebuilt chain, swapped runs,
forged records): tests/test_audit_tamper.py."""

from __future__ import annotations

import json
from collections import OrderedDict

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, RecordDict

from fedmedlora.audit_check import verify
from wire.arrays import to_arrayrecord
from wire.audit import AuditError, AuditLog, read_chain
from wire.transport import PACKED, EncodingError, adapter_sha256, decode_content, encode_content, payload_digest


def _chain(path, n=4):
    log = AuditLog(path)
    for i in range(n):
        log.append("round", round=i, value=i * 1.5)
    return path


def _rewrite(path, lines):
    path.write_text("".join(line if line.endswith("\n") else line + "\n" for line in lines))


def test_an_intact_chain_reads_back_and_extends(tmp_path):
    path = _chain(tmp_path / "audit.jsonl")
    entries = read_chain(path)
    assert [e["seq"] for e in entries] == [0, 1, 2, 3] and entries[0]["prev"] == "0" * 64
    assert all(b["prev"] == a["hash"] for a, b in zip(entries, entries[1:]))
    AuditLog(path).append("round", round=4)  # a new writer goes on from the last line
    assert [e["round"] for e in read_chain(path)] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("tamper, message", [
    (lambda lines: [lines[0], lines[1].replace('"value":1.5', '"value":9.5'), *lines[2:]], r"audit.jsonl:2: hash"),
    (lambda lines: [lines[0], *lines[2:]], r"audit.jsonl:2: seq 2, expected 1"),
    (lambda lines: [lines[1], lines[0], *lines[2:]], r"audit.jsonl:1: seq 1, expected 0"),
    (lambda lines: [*lines[:3], lines[3][:20]], r"audit.jsonl:4: not a JSON line"),
], ids=["edited", "removed", "reordered", "cut"])
def test_tampering_is_found_and_named(tmp_path, tamper, message):
    path = _chain(tmp_path / "audit.jsonl")
    _rewrite(path, tamper(path.read_text().splitlines()))
    with pytest.raises(AuditError, match=message):
        read_chain(path)
    with pytest.raises(AuditError):  # and never extended
        AuditLog(path)


def test_a_line_rewritten_with_a_fresh_hash_breaks_the_next_link(tmp_path):
    from wire.audit import entry_hash

    path = _chain(tmp_path / "audit.jsonl")
    lines = path.read_text().splitlines()
    forged = json.loads(lines[1])
    forged["value"] = 99.0
    forged["hash"] = entry_hash(forged)
    _rewrite(path, [lines[0], json.dumps(forged), *lines[2:]])
    with pytest.raises(AuditError, match=r"audit.jsonl:3: prev does not match"):
        read_chain(path)


def _state():
    rng = np.random.default_rng(0)
    return OrderedDict((f"layer.{i}.lora_A.weight", rng.normal(size=(4, 8)).astype(np.float32)) for i in range(3))


@pytest.mark.parametrize("encoding", ["float32", "float16", "int8"])
def test_both_ends_name_an_adapter_by_the_same_hash(encoding):
    state = _state()
    content = encode_content(RecordDict({"arrays": to_arrayrecord(state)}), encoding)
    sent = payload_digest(content)
    assert sent == adapter_sha256(state, encoding) and len(sent) == 64
    decode_content(content)
    assert payload_digest(content) == sent


def test_an_adapter_changed_on_the_way_is_refused():
    content = encode_content(RecordDict({"arrays": to_arrayrecord(_state())}), "float32")
    blob = content["arrays"][PACKED].numpy().copy()
    blob[7] ^= 1
    content["arrays"] = ArrayRecord(OrderedDict({PACKED: Array(blob)}))
    with pytest.raises(EncodingError, match="do not match the SHA-256"):
        decode_content(content)


def _key(tmp_path, name):
    from wire.audit import ensure_key

    return ensure_key(tmp_path / "keys" / f"{name}.key", tmp_path / "trails" / "audit.jsonl")


def _coordinator(tmp_path, received_sha="a" * 64, rejected=()):
    log = AuditLog(tmp_path / "trails" / "audit.jsonl", _key(tmp_path, "coordinator"))
    log.append("run-start", **{"run-id": 7})
    log.append("global", round=0, **{"global-sha256": "g0" * 32})
    log.append("round", round=1, asked=["site-a"], replied=["site-a"],
               received=[] if rejected else [{"site": "site-a", "sha256": received_sha, "num-examples": 10,
                                               "weight": 1.0}],
               rejected=list(rejected), **{"global-sha256": "g1" * 32})
    log.seal("run-end")
    return tmp_path / "trails" / "audit.jsonl"


def _site(tmp_path, sent_sha="a" * 64, received_sha="g0" * 32, run_id=7):
    log = AuditLog(tmp_path / "trails" / "site-a.jsonl", _key(tmp_path, "site-a"))
    common = {"run-id": run_id, "site": "site-a", "message-type": "train", "round": 1}
    log.append("received", **common, sha256=received_sha)
    log.append("sent", **common, sha256=sent_sha)
    log.seal("seal")
    return tmp_path / "trails" / "site-a.jsonl"


def _keys(tmp_path):
    return sorted((tmp_path / "keys").iterdir())


def test_agreeing_trails_verify(tmp_path):
    assert verify(_coordinator(tmp_path), [_site(tmp_path)], _keys(tmp_path)) == []


def test_an_adapter_the_coordinator_did_not_record_is_reported(tmp_path):
    problems = verify(_coordinator(tmp_path, received_sha="b" * 64), [_site(tmp_path)], _keys(tmp_path))
    assert "site-a.jsonl:2: site-a sent adapter aaaa" in problems[0] and "audit.jsonl:3 records adapter bbbb" in problems[0]
    assert "audit.jsonl:3: the coordinator recorded adapter bbbb" in problems[1] and len(problems) == 2


def test_a_global_adapter_the_coordinator_never_made_is_reported(tmp_path):
    problems = verify(_coordinator(tmp_path), [_site(tmp_path, received_sha="f" * 64)], _keys(tmp_path))
    assert len(problems) == 1 and "received global adapter ffff" in problems[0]


def test_a_rejected_adapter_is_not_a_problem(tmp_path):
    coordinator = _coordinator(tmp_path, rejected=[{"site": "site-a", "reason": "norm"}])
    assert verify(coordinator, [_site(tmp_path)], _keys(tmp_path)) == []
