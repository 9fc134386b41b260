"""The audit trails read as an attacker would attack them (docs/threat-model.md, "Audit
trail"). A small federation is written by the real writers, `CoordinatorAudit` and the
site's `site_audit`, exchanging real packed adapters; each test then cuts, rebuilds, swaps
or forges a file and runs `fedmedlora audit-verify` on it, which must exit 1 naming the
file and line."""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

from fedmedlora.cli import main as cli
from settings.config import validate
from support.messages import instruction
from wire import protocol
from wire.arrays import to_arrayrecord
from wire.audit import GENESIS, AuditError, AuditLog, entry_hash, read_chain
from wire.transport import decode_content, encode_content, payload_digest

SITES = ("site-a", "site-b")


@dataclass
class Federation:
    coordinator: Path  # the run folder's audit.jsonl
    sites: dict[str, Path]  # each site's audit log
    keys: list[Path]  # the coordinator's key, then each site's

    def verify(self, capsys, sites: list[Path] | None = None) -> tuple[int, str]:
        """`fedmedlora audit-verify` with every key: its exit code and what it printed."""
        capsys.readouterr()
        sites = list(self.sites.values()) if sites is None else sites
        code = cli(["audit-verify", str(self.coordinator), *[f"--site={p}" for p in sites],
                    *[f"--key={k}" for k in self.keys]])
        out = capsys.readouterr()
        return code, out.out + out.err


def _adapter(seed: int) -> OrderedDict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return OrderedDict((f"layer.{i}.lora_A.weight", rng.normal(size=(2, 4)).astype(np.float32)) for i in range(2))


def _instruction(coordinator, server_round: int, state, node: int, secure: bool = False) -> Message:
    """A train message as it leaves the coordinator (packed, stamped with its trail's head)."""
    content = RecordDict({protocol.ARRAYS: to_arrayrecord(state),
                          protocol.CONFIG: ConfigRecord({"server-round": server_round})})
    if secure:  # a SecAgg+ stage: Flower's record rides along
        content[RECORD_KEY_CONFIGS] = ConfigRecord({"stage": "collect_masked_vectors"})
    encode_content(content, "float32")
    coordinator.stamp(content)
    msg = instruction(node, MessageType.TRAIN)  # with the SuperLink's metadata, as a SuperNode gets it
    msg.content = content
    return msg


def _train_reply(msg: Message, state, secure: bool = False) -> Message:
    content = RecordDict({protocol.METRICS: MetricRecord({"num-examples": 10})})
    if secure:  # the masked vector travels in Flower's record: no adapter leaves the site
        content[RECORD_KEY_CONFIGS] = ConfigRecord({"masked_parameters": [1, 2, 3]})
    else:
        content[protocol.ARRAYS] = to_arrayrecord(state)
    return Message(content=encode_content(content, "float32"), reply_to=msg)


def _site_exchange(site: str, node: int, tmp_path: Path, run_id: int, msg: Message, trained, secure: bool) -> str:
    """One message at the site, through a fresh `site_audit` (a SuperNode's ClientApp
    process per message); returns the SHA-256 of what the site sent ('' under SecAgg+)."""
    from client_app.audit_log import site_audit

    context = Context(run_id=run_id, node_id=node, state=RecordDict(), run_config={},
                      node_config={"site-name": site, "audit-log": str(tmp_path / "sites" / site / "audit.jsonl"),
                                   "audit-key": str(tmp_path / "keys" / f"{site}.key")})
    audit = site_audit(context)
    decode_content(msg.content)
    audit.received(msg)
    reply = _train_reply(msg, trained, secure)
    audit.sent(msg, reply)
    return "" if secure else payload_digest(reply.content)


def federation(tmp_path: Path, run_id: int = 7, rounds: int = 2, secure_round: int = 0, forge=None) -> Federation:
    """`rounds` training rounds between a coordinator and SITES, written by the real writers.
    `secure_round`: that round runs as SecAgg+. `forge(record)` may change the round record
    the coordinator writes (what a dishonest coordinator would record)."""
    from server_app.audit_trail import CoordinatorAudit, coordinator_key

    folder = tmp_path / "outputs" / f"run-{run_id}"
    folder.mkdir(parents=True, exist_ok=True)
    cfg = validate({"strategy.name": "fedmedlora", "transport.encoding": "float32", "audit-key": "",
                    "output-dir": str(tmp_path / "outputs")})
    coordinator = CoordinatorAudit(folder, run_id, "base", "b" * 64, cfg, coordinator_key(cfg, folder))
    state = _adapter(0)
    coordinator.initial(payload_digest(encode_content(RecordDict({"arrays": to_arrayrecord(state)}), "float32")))
    for server_round in range(1, rounds + 1):
        secure = server_round == secure_round
        rows = []
        for node, site in enumerate(SITES, 1):
            msg = _instruction(coordinator, server_round, state, node, secure)
            sha = _site_exchange(site, node, tmp_path, run_id, msg, _adapter(10 * server_round + node), secure)
            rows.append({"site": site, "node-id": node, "sha256": sha, "num-examples": 10, "weight": 0.5})
        record = {"round": server_round, "sites": rows, "rejected": [],
                  **({"strategy": {"secure-aggregation": {}}} if secure else {})}
        if forge is not None:
            forge(record)
        state = _adapter(100 + server_round)
        coordinator.round(record, payload_digest(encode_content(RecordDict({"arrays": to_arrayrecord(state)}),
                                                                "float32")))
    coordinator.end()
    return Federation(folder / "audit.jsonl", {s: tmp_path / "sites" / s / "audit.jsonl" for s in SITES},
                      [tmp_path / "outputs" / "audit.key", *[tmp_path / "keys" / f"{s}.key" for s in SITES]])


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def _rebuild(path: Path, edit) -> None:
    """What someone who can write the file but lacks its key can do: edit the lines, then
    recompute every `seq`, `prev` and `hash` (and the line count and head of keyed lines);
    only a MAC cannot be redone."""
    from wire.audit import SEALS

    entries = edit([json.loads(line) for line in _lines(path)])
    prev = GENESIS
    for seq, entry in enumerate(entries):
        entry["seq"], entry["prev"] = seq, prev
        if entry["event"] in SEALS:
            entry["lines"], entry["head"] = seq, prev
        entry["hash"] = prev = entry_hash(entry)
    path.write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))


def _first(entries, event):
    return next(e for e in entries if e["event"] == event)


# --------------------------------------------------------------------------- the control


def test_honest_trails_verify_and_each_site_holds_the_coordinators_heads(tmp_path, capsys):
    fed = federation(tmp_path, secure_round=2)
    code, out = fed.verify(capsys)
    assert code == 0 and out.startswith("ok:"), out
    coordinator = read_chain(fed.coordinator)
    assert coordinator[-1]["event"] == "run-end" and coordinator[-1]["lines"] == len(coordinator) - 1
    for path in fed.sites.values():
        site = read_chain(path)
        assert [e["event"] for e in site[:3]] == ["received", "sent", "seal"] and site[-1]["event"] == "seal"
        heads = [(e[protocol.AUDIT_LINES], e[protocol.AUDIT_HEAD]) for e in site if e["event"] == "received"]
        assert heads and all(coordinator[n - 1]["hash"] == h for n, h in heads)
        assert [e.get("secure-aggregation") for e in site if e["event"] == "sent"] == [None, True]
    for key in fed.keys:
        assert oct(os.stat(key).st_mode & 0o777) == "0o600"


# --------------------------------------------------------------------------- the attacks


@pytest.mark.parametrize("cut", [1, 3])
def test_the_coordinators_trail_cut_at_a_line_boundary_fails(tmp_path, capsys, cut):
    fed = federation(tmp_path)
    lines = _lines(fed.coordinator)
    fed.coordinator.write_text("".join(lines[:-cut]))  # whole lines: the chain itself is intact
    assert len(read_chain(fed.coordinator)) == len(lines) - cut
    code, out = fed.verify(capsys)
    assert code == 1
    assert f"audit.jsonl:{len(lines) - cut}: the trail ends without a keyed end line" in out, out
    if cut == 3:  # round 2's line is gone too: the sites' copies of the head reach past the end
        assert "the coordinator's trail had 5 lines when this message came" in out and "(lines cut off its end)" in out


def test_a_sites_trail_cut_back_to_an_earlier_seal_fails(tmp_path, capsys):
    fed = federation(tmp_path)
    lines = _lines(fed.sites["site-a"])
    fed.sites["site-a"].write_text("".join(lines[:3]))  # round 1's received, sent, seal: a valid, sealed trail
    code, out = fed.verify(capsys)
    assert code == 1
    assert "from site-a in round 2 of run 7; " in out and "site-a/audit.jsonl has no such sent line" in out, out


def _forge_received_digest(entries):
    _first(entries, "round")["received"][0]["sha256"] = "e" * 64  # an adapter site-a never sent
    return entries


def _forge_sent_count(entries):
    _first(entries, "sent")["num-examples"] = 1000.0  # what the site says it trained on
    return entries


@pytest.mark.parametrize("trail, edit", [("coordinator", _forge_received_digest), ("site-a", _forge_sent_count)])
def test_a_chain_rebuilt_after_an_edit_fails(tmp_path, capsys, trail, edit):
    from wire.audit import SEALS

    fed = federation(tmp_path)
    path = fed.coordinator if trail == "coordinator" else fed.sites[trail]
    _rebuild(path, edit)
    entries = read_chain(path)  # every hash and link is right again
    code, out = fed.verify(capsys)
    assert code == 1
    sealed = max(e["seq"] + 1 for e in entries if e["event"] in SEALS)  # the last keyed line
    assert f"audit.jsonl:{sealed}: the {entries[sealed - 1]['event']} MAC does not match" in out, out
    if trail == "coordinator":  # and the sites' copies of its head show the rewrite
        assert "site-a/audit.jsonl:4: the coordinator's trail ended at line" in out and "(rewritten)" in out, out


def test_a_rebuilt_chain_sealed_again_with_another_key_fails(tmp_path, capsys):
    fed = federation(tmp_path)
    _rebuild(fed.coordinator, lambda entries: _forge_received_digest(entries)[:-1])
    forged_key = tmp_path / "attacker" / "audit.key"
    from wire.audit import ensure_key

    AuditLog(fed.coordinator, ensure_key(forged_key, fed.coordinator)).seal("run-end")
    code, out = fed.verify(capsys)
    assert code == 1
    line = len(_lines(fed.coordinator))
    assert f"audit.jsonl:{line}: sealed with key id" in out and "no key given has that id" in out, out


def test_a_coordinator_that_rewrites_and_seals_again_its_own_trail_is_shown_by_the_sites_heads(tmp_path, capsys):
    from wire.audit import ensure_key

    fed = federation(tmp_path)

    def reweigh(entries):  # a weight no site can check, changed by whoever holds the coordinator's key
        _first(entries, "round")["received"][0]["weight"] = 0.9
        return entries[:-1]

    _rebuild(fed.coordinator, reweigh)
    AuditLog(fed.coordinator, ensure_key(fed.keys[0], fed.coordinator)).seal("run-end")
    code, out = fed.verify(capsys)
    assert code == 1 and "MAC does not match" not in out  # its own seal holds
    assert "site-a/audit.jsonl:4: the coordinator's trail ended at line 5 with head" in out and "(rewritten)" in out
    assert "site-b/audit.jsonl:4: the coordinator's trail ended at line 5 with head" in out, out


def test_a_sites_trail_from_another_run_compares_nothing_and_fails(tmp_path, capsys):
    ours, other = federation(tmp_path / "run7", run_id=7), federation(tmp_path / "run8", run_id=8)
    ours.keys += other.keys[1:]  # every key is given: only the pairing is wrong
    code, out = ours.verify(capsys, sites=[other.sites["site-a"]])
    assert code == 1
    assert "site-a/audit.jsonl: no line of the coordinator's run(s) 7 (" in out
    assert "this trail has run(s) 8: nothing to compare" in out, out


def test_a_site_recorded_as_rejected_and_received_fails(tmp_path, capsys):
    def also_rejected(record):
        if record["round"] == 1:
            record["rejected"] = [{"site": "site-a", "reason": "update norm over the bound"}]

    fed = federation(tmp_path, forge=also_rejected)
    code, out = fed.verify(capsys)
    assert code == 1
    round_line = next(e["seq"] + 1 for e in read_chain(fed.coordinator) if e["event"] == "round")
    assert f"audit.jsonl:{round_line}: round 1: site-a is recorded as rejected (update norm over the bound) " \
           "and its adapter" in out, out


def test_a_secure_aggregation_reply_the_coordinator_did_not_record_fails(tmp_path, capsys):
    def drop_site_a(record):
        if record["round"] == 2:
            record["sites"] = [r for r in record["sites"] if r["site"] != "site-a"]

    fed = federation(tmp_path, secure_round=2, forge=drop_site_a)
    code, out = fed.verify(capsys)
    assert code == 1
    sent = next(e["seq"] + 1 for e in read_chain(fed.sites["site-a"]) if e["event"] == "sent" and e["round"] == 2)
    assert f"site-a/audit.jsonl:{sent}: site-a sent a SecAgg+ message in round 2 of run 7; the coordinator's " \
           "trail neither received nor rejected it" in out, out


def test_an_adapter_the_coordinator_says_it_received_but_the_site_never_sent_fails(tmp_path, capsys):
    fed = federation(tmp_path, rounds=1)

    def invent(record):  # round 2: site-a was never asked, yet an adapter from it is recorded
        record["sites"].append({"site": "site-a", "node-id": 1, "sha256": "d" * 64, "num-examples": 10, "weight": 0.5})

    from server_app.audit_trail import CoordinatorAudit, coordinator_key

    folder = fed.coordinator.parent
    cfg = validate({"strategy.name": "fedmedlora", "transport.encoding": "float32", "audit-key": "",
                    "output-dir": str(folder.parent)})
    coordinator = CoordinatorAudit(folder, 7, "base", "b" * 64, cfg, coordinator_key(cfg, folder))  # a resume
    record = {"round": 2, "sites": [], "rejected": []}
    invent(record)
    coordinator.round(record, "f" * 64)
    coordinator.end()
    code, out = fed.verify(capsys)
    assert code == 1
    line = next(e["seq"] + 1 for e in read_chain(fed.coordinator) if e["event"] == "round" and e["round"] == 2)
    assert f"audit.jsonl:{line}: the coordinator recorded adapter dddddddddddddddd from site-a in round 2 of run 7; " \
           in out and "site-a/audit.jsonl has no such sent line" in out, out


# --------------------------------------------------------------------------- keys and bad inputs


def test_a_writer_does_not_seal_again_a_trail_rebuilt_without_its_key(tmp_path):
    fed = federation(tmp_path)
    _rebuild(fed.sites["site-a"], _forge_sent_count)
    from wire.audit import ensure_key

    with pytest.raises(AuditError, match=r"site-a/audit.jsonl:3: the seal MAC does not match.*not extended"):
        AuditLog(fed.sites["site-a"], ensure_key(fed.keys[1], fed.sites["site-a"]))


def test_a_missing_key_is_named_and_the_trail_is_not_ok(tmp_path, capsys):
    fed = federation(tmp_path)
    fed.keys = fed.keys[:1]  # the sites' keys are not given
    code, out = fed.verify(capsys)
    assert code == 1 and "site-a/audit.jsonl:3: sealed with key id" in out and "no key given has that id" in out, out
    assert "site-a/audit.jsonl:6: sealed" not in out  # named once per file and key


@pytest.mark.parametrize("content, mode, message", [
    (None, 0o600, r"audit key file not found"),
    ("ab" * 32 + "\n", 0o644, r"permissions 0644; an audit key must be readable by its owner only \(chmod 600"),
    ("not a key\n", 0o600, r"k.key:1: expected 64 lowercase hex digits"),
    ("ab" * 32 + "\nmore\n", 0o600, r"k.key:2: an audit key file holds one line"),
], ids=["missing", "permissions", "malformed", "two-lines"])
def test_a_bad_key_file_is_named_by_file_and_line(tmp_path, capsys, content, mode, message):
    from wire.audit import read_key

    key = tmp_path / "k.key"
    if content is not None:
        key.write_text(content)
        key.chmod(mode)
    with pytest.raises(AuditError, match=message):
        read_key(key)
    fed = federation(tmp_path / "fed")
    fed.keys.append(key)
    code, out = fed.verify(capsys)
    assert code == 1 and "k.key" in out, out


def test_a_site_trail_needs_a_key_kept_outside_its_folder(tmp_path):
    from client_app.audit_log import site_audit

    def context(**node_config):
        return Context(run_id=1, node_id=1, node_config={"site-name": "site-a", **node_config},
                       state=RecordDict(), run_config={})

    trail = tmp_path / "trail" / "audit.jsonl"
    with pytest.raises(AuditError, match=r"node config audit-log = .* needs audit-key"):
        site_audit(context(**{"audit-log": str(trail)}))
    with pytest.raises(AuditError, match=r"node config audit-key: .*outside the trail's folder"):
        site_audit(context(**{"audit-log": str(trail), "audit-key": str(tmp_path / "trail" / "audit.key")}))
    assert not (tmp_path / "trail" / "audit.key").exists()
    assert site_audit(context(**{"audit-log": str(trail), "audit-key": str(tmp_path / "keys" / "a.key")})) is not None
    assert oct((tmp_path / "keys" / "a.key").stat().st_mode & 0o777) == "0o600"


def test_the_coordinators_key_config_names_the_bad_file(tmp_path):
    from server_app.audit_trail import coordinator_key
    from settings.config import ConfigError

    bad = tmp_path / "open.key"
    bad.write_text("ab" * 32 + "\n")
    bad.chmod(0o644)
    folder = tmp_path / "outputs" / "run"
    with pytest.raises(ConfigError, match=rf"audit-key: {bad}: permissions 0644"):
        coordinator_key(validate({"audit-key": str(bad), "output-dir": str(tmp_path / "outputs")}), folder)
    with pytest.raises(ConfigError, match=r"audit-key: .*outside the trail's folder"):
        coordinator_key(validate({"audit-key": str(folder / "audit.key"), "output-dir": str(tmp_path / "outputs")}),
                        folder)


def test_every_message_leaves_the_coordinator_with_its_trails_head(tmp_path):
    from server_app.audit_trail import CoordinatorAudit, coordinator_key
    from wire.transport import transport_grid

    class Inner:
        pushed: list[Message] = []

        def push_messages(self, messages):
            self.pushed.extend(messages)
            return [str(i) for i, _ in enumerate(messages)]

    folder = tmp_path / "outputs" / "run"
    cfg = validate({"strategy.name": "fedmedlora", "transport.encoding": "float32", "audit-key": "",
                    "output-dir": str(tmp_path / "outputs")})
    audit = CoordinatorAudit(folder, 7, "base", "b" * 64, cfg, coordinator_key(cfg, folder))
    inner = Inner()
    grid = transport_grid(inner, "float32", stamp=audit.stamp)
    msg = instruction(1, MessageType.EVALUATE)
    msg.content = RecordDict({protocol.CONFIG: ConfigRecord({"server-round": 1})})
    grid.push_messages([msg])
    record = inner.pushed[0].content[protocol.AUDIT]
    assert record[protocol.AUDIT_LINES] == 1 and record[protocol.AUDIT_HEAD] == read_chain(folder / "audit.jsonl")[0]["hash"]
