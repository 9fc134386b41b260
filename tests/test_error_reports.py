"""What leaves a site when it fails (client_app/handlers.py, client_app/app.py): the error
reply the coordinator receives says what kind of thing failed and gives a site error id;
the path, the line and the document id, which may hold an MRN or a patient's name, stay in
the site's own log under that id.

A site whose notes are named by MRN and surname, or whose documents.jsonl uses an MRN as a
document id, is given a malformed file; its ClientApp handles a real train instruction,
in process (as in simulation) and through the site's warm worker (as in a deployment), and
the reply is built as Flower builds it for a ClientApp that raised, then serialized as it
travels."""

from __future__ import annotations

import json
import time

import pytest
from flwr.app import ConfigRecord, Context, Error, Message, Metadata, RecordDict
from flwr.common import MessageType
from flwr.common.constant import ErrorCode

from support.bad_inputs import ANN, TEXT, site
from support.capture import flower_error_reason, logged_under, site_error_id
from wire import protocol

pytestmark = pytest.mark.unit

MRN_NOTE = "MRN-0012345_SMITH"  # a note exported under the patient's MRN and surname
MRN_ID = "MRN0012345"  # a document id the JSONL reader quotes in its errors (it looks like an id)


def _note_named_by_mrn(root):
    """A BRAT site whose note MRN-0012345_SMITH has a malformed annotation line (line 4)."""
    folder = site(root, {f"{MRN_NOTE}.txt": TEXT, f"{MRN_NOTE}.ann": ANN + "garbage\n"}, name="notes")
    return folder, f"{folder / MRN_NOTE}.ann:4: expected an annotation line", ("0012345", "SMITH")


def _document_id_an_mrn(root):
    """A JSON Lines site whose document id MRN0012345 is used twice (line 2)."""
    doc = {"id": MRN_ID, "text": TEXT, "entities": [], "relations": []}
    folder = site(root, {"documents.jsonl": f"{json.dumps(doc)}\n{json.dumps(doc)}\n"}, name="notes")
    return folder, f"{folder}/documents.jsonl:2: key 'id': document id '{MRN_ID}' is already used", ("0012345",)


@pytest.fixture(scope="module")
def tiny_run(tiny_llama):
    """The run config, the round's config record and the initial adapter of a tiny run."""
    from client_app.runtime import model_runtime
    from modeling.adapter_io import get_adapter_state
    from settings.config import validate

    cfg = validate({"model.name": str(tiny_llama), "lora.r": 4, "lora.alpha": 8, "train.max-steps": 1,
                    "model.dtype": "float32"})
    runtime = model_runtime(cfg)
    config = {**protocol.base_config(runtime.identity, cfg.lora_settings(), 2), "server-round": 1}
    return cfg, config, get_adapter_state(runtime.model)


def _train_instruction(config: dict, adapter: dict) -> Message:
    """A train instruction as a SuperNode receives it."""
    from wire.arrays import to_arrayrecord

    metadata = Metadata(run_id=1, message_id="ins-1", src_node_id=0, dst_node_id=1, reply_to_message_id="",
                        group_id="1", created_at=time.time(), ttl=3600.0, message_type=MessageType.TRAIN)
    return Message(content=RecordDict({protocol.ARRAYS: to_arrayrecord(adapter),
                                       protocol.CONFIG: ConfigRecord(dict(config))}), metadata=metadata)


@pytest.mark.parametrize("broken", [_note_named_by_mrn, _document_id_an_mrn], ids=["note-named-by-mrn", "mrn-doc-id"])
@pytest.mark.parametrize("where", ["in-process", "site-worker"])
def test_an_error_reply_names_no_file_path_or_document_id_and_the_site_log_does(
        broken, where, tiny_run, tmp_path, site_log):
    from flwr.common.serde import message_to_proto

    from client_app.app import SiteFailure, app
    from client_app.worker import WorkerFolder, stop_worker

    folder, detail, fragments = broken(tmp_path / "data")
    cfg, config, adapter = tiny_run
    node_config = {"data-dir": str(folder), "site-name": "hospital-x"}
    if where == "site-worker":
        node_config["site-worker"] = str(tmp_path / "worker")
    msg = _train_instruction(config, adapter)
    try:
        with pytest.raises(SiteFailure) as caught:
            app(msg, Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config=cfg.as_dict()))
        worker_log = WorkerFolder(tmp_path / "worker").log
        local_log = worker_log.read_text() if where == "site-worker" else site_log.getvalue()
    finally:
        stop_worker(tmp_path / "worker")

    # The reply the coordinator receives, as Flower builds it and as it travels
    reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=flower_error_reason(caught.value)),
                    reply_to=msg)
    wire = message_to_proto(reply).SerializeToString()
    for secret in (str(tmp_path), str(folder), MRN_NOTE, MRN_ID, *fragments, "documents.jsonl", ".ann"):
        assert secret.encode() not in wire, f"{secret!r} left the site in {reply.error.reason!r}"
    assert "malformed site data: AnnotationError (site error " in reply.error.reason
    # ... and the site's IT staff find the file, the line and the document id under its id
    assert detail in logged_under(local_log, site_error_id(reply.error.reason))
