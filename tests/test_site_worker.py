"""The warm site worker (client_app/worker.py): the same replies as in-process handling, warm
caches across messages, access control, and recovery when the worker dies."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
import time

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, Metadata, RecordDict
from flwr.common import MessageType

from support.capture import logged_under, site_error_id
from wire import protocol

pytestmark = pytest.mark.unit


def instruction(message_type: str, content: RecordDict) -> Message:
    """A message as a SuperNode receives it (with the SuperLink's metadata)."""
    metadata = Metadata(run_id=1, message_id="ins-1", src_node_id=0, dst_node_id=1, reply_to_message_id="",
                        group_id="1", created_at=time.time(), ttl=3600.0, message_type=message_type)
    return Message(content=content, metadata=metadata)


@pytest.fixture(scope="module")
def site_corpus(tmp_path_factory):
    from data_loaders.synthetic import generate_corpus

    root = tmp_path_factory.mktemp("corpus")
    generate_corpus(root, seed=3, docs_per_site=24, coordinator_docs=4)
    return root


@pytest.fixture(scope="module")
def site(tiny_llama, site_corpus):
    """The run config, the round's config record and the initial adapter of a tiny site."""
    from client_app.runtime import model_runtime
    from modeling.adapter_io import get_adapter_state
    from settings.config import validate

    cfg = validate({"model.name": str(tiny_llama), "lora.r": 4, "lora.alpha": 8, "train.max-steps": 2,
                    "train.batch-size": 2, "eval.max-instances": 3, "data.root": str(site_corpus),
                    # float32 and no dropout: the same message trains the same update in any process
                    "model.dtype": "float32", "lora.dropout": 0.0})
    runtime = model_runtime(cfg)
    config = {**protocol.base_config(runtime.identity, cfg.lora_settings(), 2), "server-round": 1}
    return cfg, config, get_adapter_state(runtime.model)


@pytest.fixture()
def worker_folder(tmp_path):
    from client_app.worker import stop_worker

    folder = tmp_path / "worker"
    yield folder
    stop_worker(folder)  # the test process owns no SuperNode: stop what it started


def _train(site, node_config: dict, steps: int | None = None) -> Message:
    from client_app.app import app
    from wire.arrays import to_arrayrecord

    cfg, config, initial = site
    run_config = {**cfg.as_dict(), "train.max-steps": steps} if steps else cfg.as_dict()
    context = Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config=run_config)
    return app(instruction(MessageType.TRAIN, RecordDict({
        protocol.ARRAYS: to_arrayrecord(initial), protocol.CONFIG: ConfigRecord(dict(config))})), context)


def test_the_worker_gives_the_in_process_reply_and_stays_warm(site, worker_folder):
    from client_app.worker import worker_pid
    from wire.arrays import from_arrayrecord
    from wire.transport import decode_content  # replies leave the ClientApp packed

    initial = site[2]
    local = _train(site, {"partition-id": 0})
    first = _train(site, {"partition-id": 0, "site-worker": str(worker_folder)})
    pid = worker_pid(worker_folder)
    assert pid is not None and pid != os.getpid()
    second = _train(site, {"partition-id": 0, "site-worker": str(worker_folder)})
    assert worker_pid(worker_folder) == pid  # the same process served both messages

    for reply in (first, second):
        assert reply.metadata.reply_to_message_id == "ins-1"
        assert reply.content[protocol.SITE]["name"] == "site-a"
        ours, theirs = (from_arrayrecord(decode_content(m.content)[protocol.ARRAYS]) for m in (local, reply))
        assert sorted(ours) == sorted(theirs) == sorted(initial)
        # Adam turns float rounding in near-zero gradients into steps of about the learning
        # rate, so the two runs agree as updates, not bit for bit.
        update = np.concatenate([(ours[k] - initial[k]).ravel() for k in ours])
        gap = np.concatenate([(theirs[k] - ours[k]).ravel() for k in ours])
        assert np.linalg.norm(update) > 0 and np.linalg.norm(gap) < 0.01 * np.linalg.norm(update)
    cold, warm = first.content[protocol.METRICS], second.content[protocol.METRICS]
    assert cold["site-model-load-seconds"] > 0 and cold["site-data-load-seconds"] > 0
    assert cold["site-process-start-seconds"] > 0  # the wait for the fresh worker
    assert warm["site-model-load-seconds"] == 0 and warm["site-data-load-seconds"] == 0
    assert warm["site-process-start-seconds"] == 0
    assert cold["train-loss"] == pytest.approx(local.content[protocol.METRICS]["train-loss"], rel=1e-4)


def test_the_worker_folder_socket_and_token_are_private(site, worker_folder):
    from client_app.worker import WorkerFolder

    _train(site, {"partition-id": 0, "site-worker": str(worker_folder)})
    where = WorkerFolder(worker_folder)
    assert stat.S_IMODE(worker_folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(where.socket.stat().st_mode) == 0o600
    assert stat.S_IMODE(where.token.stat().st_mode) == 0o600


def _raw_request(where, token: bytes, app_dir: str) -> dict:
    from client_app import worker

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(where.socket))
        try:
            worker._send(sock, token, json.dumps({"app-dir": app_dir}).encode(), b"", b"")
        except (BrokenPipeError, ConnectionResetError):
            pass  # a refused caller's rest is not read; the worker's answer is, as the ClientApp reads it
        return json.loads(worker._recv(sock))


def test_the_worker_refuses_a_caller_without_its_token(site, worker_folder, tmp_path):
    from client_app import worker

    _train(site, {"partition-id": 0, "site-worker": str(worker_folder)})
    where = worker.WorkerFolder(worker_folder)
    assert _raw_request(where, b"0" * 64, str(worker.APP_DIR)) == {"status": "refused", "reason": "wrong token"}
    # Another SuperNode's ClientApp holds its own folder's token, which this worker refuses.
    other = tmp_path / "other-site-worker"
    try:
        _train(site, {"partition-id": 1, "site-worker": str(other)})
        other_token = worker.WorkerFolder(other).token.read_bytes()
        assert other_token != where.token.read_bytes()
        assert _raw_request(where, other_token, str(worker.APP_DIR))["status"] == "refused"
    finally:
        worker.stop_worker(other)
    assert "refused a caller: wrong token" in where.log.read_text()
    assert worker.worker_pid(worker_folder) is not None  # a refusal does not stop the worker


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_another_user_cannot_reach_the_socket(site, worker_folder):
    from client_app.worker import WorkerFolder

    _train(site, {"partition-id": 0, "site-worker": str(worker_folder)})
    path = str(WorkerFolder(worker_folder).socket)
    child = os.fork()
    if child == 0:  # the child becomes `nobody` and tries the socket
        code = 3
        try:
            os.setgid(65534)
            os.setuid(65534)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.connect(path)
            code = 0  # connected: access control failed
        except PermissionError:
            code = 1
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.WEXITSTATUS(status) == 1


def test_a_message_from_another_app_version_stops_the_worker(site, worker_folder):
    from client_app import worker

    _train(site, {"partition-id": 0, "site-worker": str(worker_folder)})
    where = worker.WorkerFolder(worker_folder)
    pid = worker.worker_pid(worker_folder)
    assert _raw_request(where, where.token.read_bytes(), "/elsewhere/app") == {"status": "stale"}
    deadline = time.monotonic() + 30
    while worker._alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not worker._alive(pid) and not where.socket.exists()
    # The next message of this app version starts a fresh worker.
    _train(site, {"partition-id": 0, "site-worker": str(worker_folder)})
    assert worker.worker_pid(worker_folder) not in (None, pid)


def test_a_worker_killed_mid_message_fails_that_message_by_site_and_the_next_starts_fresh(site, worker_folder,
                                                                                          site_log):
    from client_app.app import SiteFailure
    from client_app.worker import worker_pid

    node_config = {"partition-id": 0, "site-worker": str(worker_folder)}
    _train(site, node_config)  # warm: the next message goes straight to training
    pid = worker_pid(worker_folder)
    errors: list[BaseException] = []

    def long_train() -> None:
        try:
            _train(site, node_config, steps=10_000)
        except BaseException as err:  # noqa: BLE001 - checked below
            errors.append(err)

    thread = threading.Thread(target=long_train)
    thread.start()
    time.sleep(2.0)
    os.kill(pid, 9)
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], SiteFailure)
    # The reason names what failed; the folder and the worker's log, in the site's log under its id
    reason = str(errors[0])
    assert "site worker stopped before replying" in reason and str(worker_folder) not in reason
    assert str(worker_folder) in logged_under(site_log.getvalue(), site_error_id(reason))
    reply = _train(site, node_config)
    assert reply.content[protocol.METRICS]["train-steps"] == 2
    assert worker_pid(worker_folder) not in (None, pid)


def test_a_worker_that_dies_while_starting_fails_the_message_at_once(site, worker_folder, monkeypatch, site_log):
    """A fresh worker killed before the ClientApp connects (or one that cannot start) is
    reported as stopped when it dies, not after the whole start-up timeout."""
    from client_app import worker
    from client_app.app import SiteFailure

    monkeypatch.setattr(worker.sys, "executable", "/bin/false")  # the worker process exits at once
    started = time.monotonic()
    with pytest.raises(SiteFailure, match="stopped before replying") as caught:
        _train(site, {"partition-id": 0, "site-worker": str(worker_folder)})
    assert time.monotonic() - started < worker.START_TIMEOUT / 2
    assert str(worker_folder) not in str(caught.value)
    assert str(worker_folder) in logged_under(site_log.getvalue(), site_error_id(str(caught.value)))


def test_a_handler_error_in_the_worker_reaches_the_coordinator_as_the_same_safe_report(site, worker_folder):
    from client_app.app import SiteFailure, app

    cfg, config, _ = site
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 0, "site-worker": str(worker_folder)},
                      state=RecordDict(), run_config=cfg.as_dict())
    no_candidates = instruction(protocol.SCORE_MESSAGE_TYPE, RecordDict({protocol.CONFIG: ConfigRecord(dict(config))}))
    with pytest.raises(SiteFailure, match="MalformedMessage: scoring message"):
        app(no_candidates, context)
