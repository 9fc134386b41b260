"""The site worker's socket against a caller or a listener that is not the site's own
(client_app/worker.py): the ClientApp hands its token and message only to a worker in a
private folder of its own user, running as that user; the worker reads nothing large and
waits for no one before a caller has shown the token."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
import time
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Message, Metadata, RecordDict
from flwr.common import MessageType

pytestmark = pytest.mark.unit

NOBODY = 65534
WAIT = 30.0  # seconds a test waits for the worker before it calls it stuck
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")


def _message() -> tuple[Message, Context]:
    metadata = Metadata(run_id=1, message_id="ins-1", src_node_id=0, dst_node_id=1, reply_to_message_id="",
                        group_id="1", created_at=time.time(), ttl=3600.0, message_type=MessageType.TRAIN)
    message = Message(content=RecordDict({"config": ConfigRecord({"server-round": 1})}), metadata=metadata)
    return message, Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})


class Planted:
    """A listener on a worker folder's socket path, with a token beside it, that keeps
    every byte a caller sends it: what another user could plant."""

    def __init__(self, folder: Path) -> None:
        from client_app.worker import WorkerFolder

        where = WorkerFolder(folder)
        where.token.write_bytes(b"0" * 64)
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(where.socket))
        self.server.listen(1)
        self.server.settimeout(0.2)
        self.received = bytearray()
        self.connected = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            self.connected = True
            with conn:
                conn.settimeout(2.0)  # then close: a caller waiting for an answer gets none
                try:
                    while chunk := conn.recv(1 << 16):
                        self.received += chunk
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.server.close()


@pytest.fixture()
def folder(tmp_path):
    from client_app.worker import stop_worker

    path = tmp_path / "worker"
    path.mkdir(mode=0o700)
    os.chmod(path, 0o700)
    yield path
    stop_worker(path)  # in case a check let a worker start


def _forward_to_planted(folder: Path) -> tuple[BaseException, Planted]:
    """Forward a message through the planted listener's folder; the error and the listener."""
    from client_app.worker import WorkerError, forward

    planted = Planted(folder)
    message, context = _message()
    try:
        with pytest.raises(WorkerError) as caught:
            forward(folder, message, context, owner_pid=os.getpid())
    finally:
        planted.close()
    return caught.value, planted


def test_a_socket_in_a_folder_others_can_enter_is_never_sent_the_token(folder):
    os.chmod(folder, 0o755)
    error, planted = _forward_to_planted(folder)
    assert not planted.received, f"the ClientApp sent {len(planted.received)} bytes to the planted socket"
    assert f"{folder}: site-worker folder has mode 0o755, not 0o700" in str(error)


@as_root
def test_a_socket_in_a_folder_of_another_owner_is_never_sent_the_token(folder):
    os.chown(folder, NOBODY, NOBODY)  # 0700, but nobody's: nobody planted the socket and the token
    error, planted = _forward_to_planted(folder)
    assert not planted.received, f"the ClientApp sent {len(planted.received)} bytes to the planted socket"
    assert f"{folder}: site-worker folder has owner uid {NOBODY}, not this user's uid 0" in str(error)


def test_the_folder_check_names_another_owner_and_group_or_other_bits(folder):
    """Any user: the owner the check expects is injected (only root can chown)."""
    from client_app.worker import WorkerUntrusted, check_private_folder

    check_private_folder(folder)  # ours, 0700
    with pytest.raises(WorkerUntrusted, match=f"owner uid {os.getuid()}, not this user's uid {os.getuid() + 1}"):
        check_private_folder(folder, uid=os.getuid() + 1)
    os.chmod(folder, 0o710)
    with pytest.raises(WorkerUntrusted, match=r"mode 0o710, not 0o700 \(no group or other bits\)"):
        check_private_folder(folder)


def test_the_worker_refuses_an_existing_folder_others_can_enter_and_creates_its_own_0700(tmp_path):
    from client_app.worker import WorkerError, WorkerFolder

    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o755)
    with pytest.raises(WorkerError, match=f"{shared}: site-worker folder has mode 0o755"):
        WorkerFolder(shared).prepare()
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755  # refused as found, not quietly tightened
    old_umask = os.umask(0)
    try:
        WorkerFolder(tmp_path / "new" / "worker").prepare()
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE((tmp_path / "new" / "worker").stat().st_mode) == 0o700


@as_root
def test_a_listener_running_as_another_user_is_never_sent_the_token(folder):
    """The real kernel credential: a listener that binds the worker's socket in our own
    private folder, then becomes `nobody` before it listens (SO_PEERCRED reports the
    listener's uid at listen())."""
    from client_app.worker import WorkerError, WorkerFolder, forward

    where = WorkerFolder(folder)
    ready, report = os.pipe()
    child = os.fork()
    if child == 0:  # the impostor: reports how many bytes it was sent
        code = 3
        try:
            os.close(ready)
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.bind(str(where.socket))
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            server.listen(1)
            os.write(report, b"L")
            server.settimeout(30)
            conn, _ = server.accept()
            conn.settimeout(2.0)
            got = 0
            try:
                while chunk := conn.recv(1 << 16):
                    got += len(chunk)
            except OSError:
                pass
            os.write(report, str(got).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(report)
    try:
        assert os.read(ready, 1) == b"L"
        where.token.write_bytes(b"0" * 64)
        message, context = _message()
        with pytest.raises(WorkerError) as caught:
            forward(folder, message, context, owner_pid=os.getpid())
        sent = b""
        while chunk := os.read(ready, 64):
            sent += chunk
    finally:
        os.close(ready)
        _, status = os.waitpid(child, 0)
    assert os.WEXITSTATUS(status) == 0
    assert sent == b"0", f"the impostor running as uid {NOBODY} was sent {sent.decode()} bytes"
    assert f"{where.socket}: the process listening runs as uid {NOBODY}, not as this user (uid 0)" in str(caught.value)


def test_the_peer_check_reads_the_kernel_credential():
    """Any user: a socketpair's peer is this process; another expected uid is refused."""
    from client_app.worker import WorkerUntrusted, check_peer

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        check_peer(a, Path("pair"))
        with pytest.raises(WorkerUntrusted, match=f"runs as uid {os.getuid()}, not as this user"):
            check_peer(a, Path("pair"), uid=os.getuid() + 1)


# --- the worker against callers that never show the token


@pytest.fixture()
def running_worker(tmp_path):
    """A worker serving its socket (no message yet: no model loaded), as the first message starts it."""
    from client_app.worker import START_TIMEOUT, WorkerFolder, start_worker, stop_worker, worker_pid

    folder = tmp_path / "worker"
    pid = start_worker(folder, owner_pid=os.getpid())
    where = WorkerFolder(folder)
    deadline = time.monotonic() + START_TIMEOUT
    while worker_pid(folder) != pid or not where.socket.exists():
        assert time.monotonic() < deadline, where.log.read_text() if where.log.exists() else "no log"
        time.sleep(0.1)
    yield where, pid
    stop_worker(folder)


def _peak_rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))


def _answer(where, token: bytes, app_dir: str, timeout: float) -> dict:
    """A request as the ClientApp sends one; the worker's status answer."""
    from client_app import worker

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(where.socket))
        worker._send(sock, token, json.dumps({"app-dir": app_dir}).encode(), b"", b"")
        return json.loads(worker._recv(sock))


def test_a_caller_announcing_a_2gib_token_is_dropped_at_once_without_the_worker_reading_it(running_worker):
    from client_app import worker

    where, pid = running_worker
    peak = _peak_rss_kib(pid)
    flood, chunk = 64 << 20, bytes(1 << 20)
    sent, closed = 0, False
    started = time.monotonic()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(WAIT)
        sock.connect(str(where.socket))
        try:
            sock.sendall(worker._HEADER.pack(2**31))  # "my token is 2 GiB long", then the bytes
            while sent < flood:
                sock.sendall(chunk)
                sent += len(chunk)
            closed = sock.recv(1) == b""
        except (BrokenPipeError, ConnectionResetError):
            closed = True
        except TimeoutError:
            closed = False
    elapsed = time.monotonic() - started
    assert closed, f"the worker kept reading: {sent >> 20} MiB taken, connection still open"
    assert elapsed < worker.AUTH_TIMEOUT, f"dropped after {elapsed:.1f} s: by the timeout, not by the length"
    assert _peak_rss_kib(pid) - peak < 16 << 10, "the worker's memory grew with what the caller sent"
    assert f"a frame of {2**31} bytes, over the limit of {worker.MAX_TOKEN_FRAME}" in where.log.read_text()
    # ... and it serves the next caller
    assert _answer(where, b"0" * 64, str(worker.APP_DIR), timeout=WAIT) == {"status": "refused",
                                                                         "reason": "wrong token"}


def test_a_silent_caller_times_out_and_the_next_caller_is_served(running_worker):
    from client_app import worker

    where, pid = running_worker
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
        silent.settimeout(WAIT)
        silent.connect(str(where.socket))
        time.sleep(0.5)  # the worker has taken it and waits for its token
        started = time.monotonic()
        # The site's own ClientApp, with the token (of another app version: the worker answers and stops)
        answer = _answer(where, where.token.read_bytes(), "/elsewhere/app", timeout=WAIT)
        waited = time.monotonic() - started
        assert silent.recv(1) == b""  # the worker closed the silent connection
    assert answer == {"status": "stale"}
    assert waited < worker.AUTH_TIMEOUT + 20
    assert "dropped a caller before it showed the token: timed out" in where.log.read_text()


def test_a_pid_planted_in_the_worker_folder_gets_no_other_process_signalled(tmp_path):
    """`stop_worker` signals the pid its folder's pid file names; a pid written there by
    someone else (here: of an unrelated process) is not believed."""
    import subprocess

    from client_app.worker import WorkerFolder, stop_worker, worker_pid

    where = WorkerFolder(tmp_path / "worker")
    where.prepare()
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        where.pid.write_text(str(bystander.pid))
        assert worker_pid(where.path) is None
        assert stop_worker(where.path, grace=1) is None
        assert bystander.poll() is None  # still running
    finally:
        bystander.kill()
        bystander.wait()
