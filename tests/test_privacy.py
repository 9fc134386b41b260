"""Nothing that leaves a site contains note text (docs/architecture.md).

Every message of a simulation run and of a loopback deployment is recorded (see
tests/support/capture.py): at each site's ClientApp (a mod: what it received, what it sent or
raised), at the coordinator's ServerApp (a recording Grid: what it sent, what it received,
error replies included) and, in the deployment, on the wire between the SuperNodes and the
SuperLink (an HTTP proxy: every request body a SuperNode sent). Then:

1. no sentence (>= 20 characters) and no annotated entity string (>= 8 characters) of any
   site's notes is in any of it: not in text, not as UTF-8 or UTF-16 bytes in any array
   payload or string, not in the coordinator's logs and outputs;
2. the only arrays a site sends are its LoRA adapter: the PEFT state-dict keys (lora_A and
   lora_B of every configured target module), their shapes, float32;
3. site-c's data is broken by an annotation line that holds a sentence of its notes (an
   error that quoted the line would carry note text): its error replies say what kind of
   thing failed and give a site error id, and name neither the file nor its folder (file
   names often hold MRNs; tests/test_error_reports.py checks that the site's log has them).

The unit tests below show that the checks fail on messages that do carry note text.
Same tiny model and synthetic corpus as tests/test_simulation.py and tests/test_deploy.py.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest

from support.capture import (
    CAPTURE_ENV,
    Exchange,
    NoteTextFinder,
    WireRecorder,
    adapter_problems,
    capture_mod,
    decode_wire,
    load_records,
    message_record,
    record_of,
    site_error_id,
    unpacked,
)
from support.deployment import copy_app

pytestmark = pytest.mark.e2e  # real Flower runs: the slow tier

ROUNDS = 1
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The synthetic corpus, with site-c broken: a relation line whose text column holds a
    sentence of the same note (a malformed line any quoting error would echo)."""
    from data_loaders.synthetic import generate_corpus

    root = tmp_path_factory.mktemp("corpus")
    generate_corpus(root, seed=3, docs_per_site=24, coordinator_docs=4)
    ann = sorted((root / "site-c").glob("*.ann"))[0]
    sentence = _long_sentence(ann.with_suffix(".txt").read_text(encoding="utf-8"))
    with open(ann, "a", encoding="utf-8") as handle:
        handle.write(f"R999\tCause Arg1:T1 Arg2:T2 {sentence}\n")
    (root / "broken.json").write_text(
        f'{{"file": "{ann}", "line": {len(ann.read_text(encoding="utf-8").splitlines())}}}', encoding="utf-8")
    return root


def _long_sentence(text: str) -> str:
    from clinical_ie.segment import split_sentences

    return max((text[s:e] for s, e in split_sentences(text)), key=len)


@pytest.fixture(scope="module")
def finder(corpus) -> NoteTextFinder:
    """Every sentence and entity string of the three sites' notes that the coordinator's
    own validation notes do not also hold (the synthetic notes share phrases)."""
    from data_loaders.brat import read_brat_folder
    from support.capture import note_strings

    site_docs = [doc for site in ("site-a", "site-b", "site-c")
                 for doc in read_brat_folder(corpus / site, strict=False)]
    coordinator_text = "\n".join(d.text for d in read_brat_folder(corpus / "coordinator"))
    strings = {s for s in note_strings(site_docs) if s not in coordinator_text}
    assert len(strings) > 200
    return NoteTextFinder(strings)


@pytest.fixture(scope="module")
def expected_adapter(tiny_llama) -> dict[str, tuple[int, ...]]:
    """The PEFT adapter state dict of the run's LoRA config on the tiny model: key -> shape."""
    from transformers import AutoConfig

    from modeling.adapter_io import get_adapter_state
    from modeling.base import load_base_model
    from modeling.lora import LoraSettings, attach_lora

    model, _ = load_base_model(str(tiny_llama), "none", "float32")
    state = get_adapter_state(attach_lora(model, LoraSettings(r=4, alpha=8), seed=0))
    expected = {k: tuple(v.shape) for k, v in state.items()}
    # ... which is lora_A and lora_B of every target module of every layer, nothing else.
    config = AutoConfig.from_pretrained(tiny_llama)
    head = config.hidden_size // config.num_attention_heads
    dims = {"q_proj": (config.hidden_size, config.hidden_size),
            "k_proj": (config.hidden_size, config.num_key_value_heads * head),
            "v_proj": (config.hidden_size, config.num_key_value_heads * head),
            "o_proj": (config.hidden_size, config.hidden_size),
            "gate_proj": (config.hidden_size, config.intermediate_size),
            "up_proj": (config.hidden_size, config.intermediate_size),
            "down_proj": (config.intermediate_size, config.hidden_size)}
    derived = {}
    for layer in range(config.num_hidden_layers):
        for module, (d_in, d_out) in dims.items():
            block = "self_attn" if module in TARGET_MODULES[:4] else "mlp"
            prefix = f"base_model.model.model.layers.{layer}.{block}.{module}"
            derived[f"{prefix}.lora_A.weight"] = (4, d_in)
            derived[f"{prefix}.lora_B.weight"] = (d_out, 4)
    assert expected == derived
    return expected


def _overrides(tiny_llama: Path, corpus: Path, out: Path) -> dict:
    # Fed-MedLoRA+ scored by the sites: every message type of the protocol (train,
    # evaluate, evaluate.score with the round's candidate adapters) is exchanged.
    return {
        "model.name": str(tiny_llama), "num-server-rounds": ROUNDS, "train.max-steps": 2,
        "train.batch-size": 2, "lora.r": 4, "lora.alpha": 8, "eval.max-instances": 3,
        "eval.max-new-tokens": 8, "data.root": str(corpus),
        "data.server-validation": str(corpus / "coordinator"), "output-dir": str(out),
        "run-name": "privacy", "strategy.name": "fedmedlora-plus", "strategy.validation": "sites",
        "strategy.min-sites": 2,  # site-c fails every round; the run goes on with the other two
    }


def _capture_app(tmp_path: Path) -> Path:
    """A copy of the project whose components are tests/support/capture_apps.py's (the
    project's apps, recording); what `flwr run` packs, nothing else changed."""
    app = copy_app(tmp_path / "app")
    pyproject = app / "pyproject.toml"
    text = pyproject.read_text(encoding="utf-8")
    changed = text.replace('serverapp = "server_app.app:app"', 'serverapp = "tests.support.capture_apps:serverapp"') \
                  .replace('clientapp = "client_app.app:app"', 'clientapp = "tests.support.capture_apps:clientapp"')
    assert changed.count("tests.support.capture_apps:") == 2
    pyproject.write_text(changed, encoding="utf-8")
    return app


# --------------------------------------------------------------------------- the checks


def _check_no_note_text(finder: NoteTextFinder, entries: list[dict]) -> None:
    findings = []
    for i, entry in enumerate(entries):
        label = f"{entry.get('file', '')}#{i} {entry.get('side')} {entry.get('direction')}"
        findings += finder.search(entry, label)
    assert not findings, "note text left a site:\n" + "\n".join(map(str, findings[:20]))


def _check_site_replies(replies: list[dict], expected: dict, where: str) -> dict[str, int]:
    """Every reply a site sent: a train reply's only arrays are the LoRA adapter; other
    replies carry no arrays at all. Returns the count of replies by message type."""
    counts: dict[str, int] = {}
    for record in replies:
        kind = record["metadata"]["message_type"] + (" error" if record["error"] else "")
        counts[kind] = counts.get(kind, 0) + 1
        if record["error"]:
            assert record["content"] is None
            continue
        arrays = {name: r for name, r in record["content"].items() if r["kind"] == "arrays"}
        assert all(r["kind"] in ("arrays", "metrics", "config") for r in record["content"].values()), where
        if record["metadata"]["message_type"] == "train":
            assert list(arrays) == ["arrays"], f"{where}: array records {list(arrays)}"
            record_arrays, problems = unpacked(record["content"], "arrays")
            problems += adapter_problems(record_arrays, expected)
            assert not problems, f"{where}: {problems}"
        else:
            assert not arrays, f"{where}: a {record['metadata']['message_type']} reply with arrays {list(arrays)}"
    return counts


def _check_error_reasons(reasons: list[str], broken: dict) -> None:
    """site-c's errors say what kind of thing failed with a site error id, name neither the
    broken file nor its folder, and (checked with everything else) hold no note text."""
    assert reasons, "site-c sent no error reply"
    broken_file = Path(broken["file"])
    for reason in reasons:
        assert "malformed site data: AnnotationError" in reason, reason
        site_error_id(reason)
        for named in (broken_file.stem, str(broken_file.parent)):
            assert named not in reason, reason


def _broken(corpus: Path) -> dict:
    import json

    return json.loads((corpus / "broken.json").read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- unit tests


def _message(content=None, error=None, message_type="train"):
    from flwr.app import Message
    from flwr.app.metadata import Metadata

    metadata = Metadata(run_id=1, message_id="", src_node_id=7, dst_node_id=1, reply_to_message_id="m0",
                        group_id="1", created_at=time.time(), ttl=600.0, message_type=message_type)
    if error is not None:
        return Message(metadata=metadata, error=error)
    return Message(metadata=metadata, content=content)


SENTENCE = "Patient reports crushing chest pain radiating to the left arm."
ENTITY = "metformin 500 mg"


def _clean_content(extra_arrays: dict | None = None, config: dict | None = None, metrics: dict | None = None):
    from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

    arrays = {"layer.lora_A.weight": Array(np.ones((4, 8), dtype=np.float32)),
              "layer.lora_B.weight": Array(np.zeros((8, 4), dtype=np.float32))}
    arrays.update(extra_arrays or {})
    return RecordDict({
        "arrays": ArrayRecord(arrays),
        "metrics": MetricRecord({"num-examples": 12, "train-loss": 0.5, **(metrics or {})}),
        "site": ConfigRecord({"name": "site-a", **(config or {})}),
    })


EXPECTED_TOY = {"layer.lora_A.weight": (4, 8), "layer.lora_B.weight": (8, 4)}


def test_the_checks_pass_a_clean_reply():
    record = message_record(_message(_clean_content()))
    assert NoteTextFinder([SENTENCE, ENTITY]).search(record) == []
    assert adapter_problems(record["content"]["arrays"], EXPECTED_TOY) == []


@pytest.mark.parametrize("where", ["config", "metric-key", "utf8-array", "utf16-array", "bytes-config", "error"])
def test_the_note_text_check_finds_a_sentence_wherever_it_hides(where):
    from flwr.app import Array, Error

    if where == "config":
        msg = _message(_clean_content(config={"note": f"context: {SENTENCE}"}))
    elif where == "metric-key":
        msg = _message(_clean_content(metrics={f"f1-{ENTITY}": 1.0}))
    elif where == "bytes-config":
        msg = _message(_clean_content(config={"blob": b"\x00\x01" + SENTENCE.encode("utf-16-be")}))
    elif where == "error":
        msg = _message(error=Error(code=2, reason=f"ValueError: span text {SENTENCE!r} does not match"))
    else:  # the sentence's bytes inside a LoRA tensor of the right key, shape and dtype
        data = SENTENCE.encode("utf-8" if where == "utf8-array" else "utf-16-le")
        tensor = np.frombuffer(data.ljust(4 * 32, b"\x00"), dtype=np.float32).reshape(4, 8)
        msg = _message(_clean_content(extra_arrays={"layer.lora_A.weight": Array(tensor.copy())}))
        assert adapter_problems(message_record(msg)["content"]["arrays"], EXPECTED_TOY) == []
    findings = NoteTextFinder([SENTENCE, ENTITY]).search(message_record(msg))
    assert findings, f"the sentence in {where} was not found"
    assert any(f.text in (SENTENCE, ENTITY) for f in findings)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"extra": np.zeros(3, np.float32)}, "not LoRA tensors"),
        ({"layer.lora_A.weight": np.ones((4, 8), np.float64)}, "dtype float64"),
        ({"layer.lora_A.weight": np.ones((4, 9), np.float32)}, "shape (4, 9)"),
    ],
    ids=["extra-array", "float64", "wrong-shape"],
)
def test_the_adapter_check_flags_anything_but_the_lora_tensors(change, problem):
    from flwr.app import Array

    record = record_of(_clean_content(extra_arrays={k: Array(v) for k, v in change.items()})["arrays"])
    problems = adapter_problems(record, EXPECTED_TOY)
    assert any(problem in p for p in problems), problems
    assert any("missing" in p for p in adapter_problems(record, {**EXPECTED_TOY, "other.lora_B.weight": (1, 4)}))


def test_the_checks_read_a_packed_reply_as_it_travels():
    """Replies travel packed (wire/transport.py): the adapter check reads the tensors from
    the packed bytes and the manifest, and flags an extra tensor or bytes left over."""
    from flwr.app import Array, ArrayRecord, ConfigRecord

    from wire.transport import encode_content

    content = encode_content(_clean_content(), "float32")
    record, problems = unpacked(message_record(_message(content))["content"], "arrays")
    assert problems == [] and adapter_problems(record, EXPECTED_TOY) == []
    extra = encode_content(_clean_content(extra_arrays={"extra": Array(np.zeros(3, np.float32))}), "float32")
    record, problems = unpacked(message_record(_message(extra))["content"], "arrays")
    assert any("not LoRA tensors" in p for p in adapter_problems(record, EXPECTED_TOY))
    hidden = encode_content(_clean_content(), "float32")
    blob = hidden["arrays"]["packed"].numpy()
    hidden["arrays"] = ArrayRecord({"packed": Array(np.concatenate([blob, np.frombuffer(SENTENCE.encode(), np.uint8)]))})
    hidden["transport"] = ConfigRecord(dict(content["transport"]))
    recorded = message_record(_message(hidden))
    _, problems = unpacked(recorded["content"], "arrays")
    assert problems == [f"arrays: {len(SENTENCE.encode())} packed bytes beyond the manifest's tensors"]
    assert NoteTextFinder([SENTENCE]).search(recorded)


def test_capture_mod_records_when_enabled_and_passes_through_otherwise(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from flwr.app import Message

    context = SimpleNamespace(node_config={"site-name": "hospital-a"}, node_id=5)
    incoming = _message(_clean_content())
    reply = _message(_clean_content(), message_type="train")
    monkeypatch.delenv(CAPTURE_ENV, raising=False)
    assert capture_mod(incoming, context, lambda m, c: reply) is reply
    assert not any(tmp_path.iterdir())

    monkeypatch.setenv(CAPTURE_ENV, str(tmp_path))
    assert capture_mod(incoming, context, lambda m, c: reply) is reply

    def fail(m: Message, c):
        raise RuntimeError(f"bad note: {SENTENCE}")

    with pytest.raises(RuntimeError):
        capture_mod(incoming, context, fail)
    entries = load_records(tmp_path)
    assert [e["direction"] for e in entries] == ["received", "sent", "received", "raised"]
    assert all(e["site"] == "hospital-a" for e in entries)
    sent = entries[1]["message"]["content"]["arrays"]["arrays"]["layer.lora_A.weight"]
    assert np.load(io.BytesIO(sent["data"])).shape == (4, 8)  # raw bytes survive the file
    # ... and the checker sees the sentence in the recorded exception
    assert NoteTextFinder([SENTENCE]).search(entries[3])


def test_wire_decoding_rebuilds_what_a_supernode_pushed():
    """The proxy's records decode to the Message the site sent (the SuperNode's own steps:
    message id = object id, PushMessages with the content removed, then PushObject)."""
    from flwr.app.message import remove_content_from_message
    from flwr.common.serde import message_to_proto
    from flwr.proto.fleet_pb2 import PushMessagesRequest
    from flwr.proto.message_pb2 import PushObjectRequest
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, get_object_tree

    msg = _message(_clean_content(config={"note": SENTENCE}))
    msg.metadata.__dict__["_message_id"] = msg.object_id
    tree = get_object_tree(msg)
    push = PushMessagesRequest(messages_list=[message_to_proto(remove_content_from_message(msg))],
                               message_object_trees=[tree])

    def exchange(path, body):
        return Exchange("127.0.0.1:1", "POST", path, [], body, 200, [], b"", 0.0)

    exchanges = [exchange("/v1/fleet/push-messages", push.SerializeToString())]
    for object_id, obj in get_all_nested_objects(msg).items():
        exchanges.append(exchange("/v1/fleet/push-object", PushObjectRequest(
            object_id=object_id, object_content=obj.deflate()).SerializeToString()))
    (decoded,) = decode_wire(exchanges)
    assert decoded.direction == "site->coordinator" and not decoded.missing_objects
    assert decoded.record["content"] == message_record(msg)["content"]
    assert NoteTextFinder([SENTENCE]).search(decoded.record)


@pytest.mark.parametrize(
    "line",
    [
        "R9\tCause Arg1:T1 Arg2:T2 {s}",           # text after a relation's arguments
        "A9\tNegated T1 {s}",                      # ... after an attribute's target
        "E9\t{s}",                                 # an event line of text
        "T9\tproblem 0 5;{s}\tFever",              # text among the offsets
        "T9\tproblem 0 five {s}\tFever",
        "T9 {s}\tproblem 0 5\tFever",              # text in the id column
        "R9\tCause Arg1:T1 Arg2:{e}",              # an entity string where an id belongs
    ],
)
def test_reader_errors_name_file_and_line_but_never_quote_the_line(tmp_path, line):
    from data_loaders.brat import AnnotationError, read_brat

    text = f"Fever and cough. {SENTENCE} Started {ENTITY} daily."
    (tmp_path / "n.txt").write_text(text, encoding="utf-8")
    (tmp_path / "n.ann").write_text("T1\tproblem 0 5\tFever\nT2\tproblem 10 15\tcough\n"
                                    + line.format(s=SENTENCE, e=ENTITY.replace(" ", "_")) + "\n", encoding="utf-8")
    with pytest.raises(AnnotationError) as info:
        read_brat(tmp_path / "n.txt")
    assert str(info.value).startswith(f"{tmp_path / 'n.ann'}:3: ")
    assert NoteTextFinder([SENTENCE, ENTITY, ENTITY.replace(" ", "_")]).search(str(info.value)) == []


def test_jsonl_errors_never_quote_note_text(tmp_path):
    import json

    from data_loaders.brat import AnnotationError
    from data_loaders.jsonl import read_jsonl

    doc = {"id": "d", "text": SENTENCE, "entities": [{"id": "T1", "type": "problem", "spans": [[0, 7]],
                                                        "text": "Patient"}], "relations": []}
    bad = [
        {**doc, SENTENCE: 1},
        {**doc, "relations": [{"id": "R1", "type": "x", "arg1": "T1", "arg2": SENTENCE}]},
        {**doc, "entities": [{**doc["entities"][0], "id": SENTENCE}] * 2},  # a duplicate id
    ]
    for obj in bad:
        path = tmp_path / "d.jsonl"
        path.write_text(json.dumps(obj) + "\n", encoding="utf-8")
        with pytest.raises(AnnotationError) as info:
            read_jsonl(path)
        assert str(info.value).startswith(f"{path}:1: ")
        assert NoteTextFinder([SENTENCE]).search(str(info.value)) == []


# --------------------------------------------------------------------------- end to end


def _site_replies_from_captures(entries: list[dict]) -> tuple[list[dict], list[str]]:
    """(what the sites' ClientApps sent, the reasons of what they raised)"""
    sent = [e["message"] for e in entries if e.get("side") == "site" and e["direction"] == "sent"]
    raised = [e["reason"] for e in entries if e.get("side") == "site" and e["direction"] == "raised"]
    return sent, raised


def _coordinator_replies(entries: list[dict]) -> list[dict]:
    return [e["message"] for e in entries if e.get("side") == "coordinator" and e["direction"] == "received"]


def _check_captures(capture: Path, finder, expected_adapter, corpus, site_c: str) -> tuple[list, list]:
    entries = load_records(capture)
    assert any(e.get("side") == "site" for e in entries) and any(e.get("side") == "coordinator" for e in entries)
    # (1) nothing recorded anywhere holds note text: received and sent, sites and coordinator
    _check_no_note_text(finder, entries)
    # (2) what the sites sent, as their ClientApps returned it and as the coordinator got it
    sent, raised = _site_replies_from_captures(entries)
    counts = _check_site_replies(sent, expected_adapter, "site reply")
    assert counts.get("train", 0) == 2 * ROUNDS and counts.get("evaluate.score", 0) == 2 * ROUNDS, counts
    received = _coordinator_replies(entries)
    counts = _check_site_replies(received, expected_adapter, "reply at the coordinator")
    assert counts.get("train error", 0) == ROUNDS, counts
    # (3) site-c failed on its data; what it raised and what the coordinator got name file and line
    assert {e["site"] for e in entries if e.get("direction") == "raised"} == {site_c}
    broken = _broken(corpus)
    _check_error_reasons(raised, broken)
    _check_error_reasons([r["error"]["reason"] for r in received if r["error"]], broken)
    return entries, received


def test_simulation_messages_hold_no_note_text(tmp_path, monkeypatch, tiny_llama, corpus, finder, expected_adapter):
    from fedmedlora.deploy import free_ports
    from fedmedlora.local_run import flwr_run

    capture = tmp_path / "capture"
    monkeypatch.setenv(CAPTURE_ENV, str(capture))
    app = _capture_app(tmp_path)
    http_port, control_port = free_ports(2)
    started = time.monotonic()
    with open(tmp_path / "flwr.log", "w") as log:
        code = flwr_run(app, tmp_path / "flwr-home", _overrides(tiny_llama, corpus, tmp_path / "outputs"),
                        num_supernodes=3, http_port=http_port, control_port=control_port, timeout=900, stdout=log)
    print(f"simulation with capture: {time.monotonic() - started:.1f} s")
    assert code == 0, (tmp_path / "flwr.log").read_text()[-3000:]
    assert (tmp_path / "outputs" / "privacy" / "final").is_dir(), (tmp_path / "flwr.log").read_text()[-3000:]
    _check_captures(capture, finder, expected_adapter, corpus, site_c="partition-2")


def test_deployment_wire_holds_no_note_text(tmp_path, monkeypatch, tiny_llama, corpus, finder, expected_adapter):
    from fedmedlora.deploy import LoopbackDeployment, Site

    class ProxiedDeployment(LoopbackDeployment):
        """SuperNodes reach the SuperLink through `node_address` once it is set (the
        recorder); everything else (health checks, flwr CLI config) uses the SuperLink's."""

        node_address: str | None = None

        @property
        def address(self) -> str:
            return self.node_address or f"127.0.0.1:{self.port}"

    capture = tmp_path / "capture"
    monkeypatch.setenv(CAPTURE_ENV, str(capture))
    app = _capture_app(tmp_path)
    sites = [Site(f"hospital-{x}", corpus / f"site-{x}") for x in "abc"]
    overrides = _overrides(tiny_llama, corpus, tmp_path / "outputs")
    workdir = tmp_path / "deploy"
    started = time.monotonic()
    with ProxiedDeployment(app, sites, workdir) as deployment:
        deployment.start_superlink()
        with WireRecorder(deployment.address) as wire:
            deployment.node_address = wire.address
            for site in sites:
                deployment.start_supernode(site)
            deployment.node_address = None
            deployment.wait_for_supernodes(len(sites), timeout=120)
            code = deployment.run(overrides, timeout=900)
            log = (deployment.processes.log_dir / "flwr-run.log").read_text()
            deployment.stop()
    print(f"deployment with capture: {time.monotonic() - started:.1f} s, {len(wire.exchanges)} HTTP exchanges")
    assert code == 0 and (tmp_path / "outputs" / "privacy" / "final").is_dir(), log[-3000:]
    assert all(f"--superlink {wire.address}" in (workdir / "logs" / f"supernode-{s.name}.log").read_text()
               for s in sites), "a SuperNode bypassed the recorder"
    # Each site's warm worker ran its handlers; what it returned left the site only as recorded here.
    assert all("serving" in (deployment.worker_folder(s.name) / "worker.log").read_text() for s in sites)

    entries, received = _check_captures(capture, finder, expected_adapter, corpus, site_c="hospital-c")
    # The wire: every byte a SuperNode sent, raw (request bodies and headers) ...
    raw = [{"path": ex.path, "headers": ex.request_headers, "body": ex.request_body} for ex in wire.exchanges]
    _check_no_note_text(finder, [{"side": "wire", "direction": "request", **r} for r in raw])
    assert sum(len(r["body"]) for r in raw if r["path"].endswith("/push-object")) > 0
    # ... and rebuilt into the Messages the sites pushed (and the instructions they pulled)
    messages = decode_wire(wire.exchanges)
    pushed = [m for m in messages if m.direction == "site->coordinator"]
    assert not [m for m in pushed if m.missing_objects], [(m.record["metadata"], m.missing_objects)
                                                           for m in pushed if m.missing_objects]
    _check_no_note_text(finder, [{"side": "wire", "direction": m.direction, "message": m.record} for m in messages])
    counts = _check_site_replies([m.record for m in pushed], expected_adapter, "reply on the wire")
    assert counts.get("train", 0) == 2 * ROUNDS and counts.get("train error", 0) == ROUNDS, counts
    _check_error_reasons([m.record["error"]["reason"] for m in pushed if m.record["error"]], _broken(corpus))
    # What the coordinator keeps and shows: its logs and the run's outputs.
    run_dir = tmp_path / "outputs" / "privacy"
    kept = [workdir / "logs" / "superlink.log", workdir / "logs" / "flwr-run.log", *sorted(run_dir.glob("*.json*")),
            *sorted(run_dir.glob("*.log"))]
    assert (run_dir / "metrics.jsonl").is_file()
    _check_no_note_text(finder, [{"side": "coordinator", "direction": p.name, "text": p.read_text(errors="replace")}
                                 for p in kept if p.is_file()])
