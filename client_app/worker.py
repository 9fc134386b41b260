"""The warm site: a long-lived worker that keeps one site's model, tokenizer and encoded data
loaded across messages and rounds of a deployment.

Flower starts a fresh ClientApp process for every message. With `site-worker = "<folder>"`
in the SuperNode's `--node-config`, that process only forwards the message to this worker
over a Unix socket in the folder and returns the worker's reply; the worker runs the same
ClientApp handlers in its own process, where `client_app.runtime` caches persist. The
design (channel, access control, recovery) is in docs/architecture.md, "Warm sites".

Access: the folder is created 0700 (an existing one must be the user's own, with no group or
other bits) and the socket 0600, so only the site's own user can connect; the worker checks
the caller's uid with SO_PEERCRED; and every request carries the token the worker wrote
(0600) into the folder when it started, compared in constant time. Before it sends the
token, the ClientApp checks the same of the folder and the worker's uid, so a socket planted
by another user is never handed the token or a message. Until a caller has shown the token,
the worker reads one small frame with a timeout: a caller that sends a huge length or
nothing is dropped and cannot hold the worker. One folder serves one SuperNode: another
SuperNode's ClientApp, with another folder, holds another token and is refused.

Lifetime: the first message starts the worker when none answers (started detached, so it
outlives the ClientApp process), and so does the next message after a worker died; the
worker stops when the process that owns it (the SuperNode, or the executor that starts
ClientApps in process isolation) is gone, and when a message comes from another version
of the app than the one it imported.
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
import secrets
import socket
import stat
import struct
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from flwr.app import Context, Message

NODE_CONFIG_KEY = "site-worker"  # --node-config key naming the worker's folder
APP_DIR = Path(__file__).resolve().parents[1]  # the app version this process runs
_HEADER = struct.Struct("!Q")
START_TIMEOUT = 60.0  # seconds for a fresh worker to open its socket
AUTH_TIMEOUT = 5.0  # seconds a caller has to send its token; the worker serves one caller at a time
MAX_TOKEN_FRAME = 4096  # the token is 64 hex characters: nothing larger is read before it is checked
MAX_FRAME = 2**31 - 1  # after the token: a serialized protobuf (Flower's Message, Context) is below 2 GiB


class WorkerError(RuntimeError):
    """The worker could not be reached, refused the request, or stopped mid-message."""

    category = "site worker unavailable"  # what the coordinator is told; the message stays in the site's log


class WorkerStopped(WorkerError):
    """The worker exited before it replied."""

    category = "site worker stopped before replying"


class WorkerRefused(WorkerError):
    """The worker rejected the caller (wrong token or uid)."""

    category = "site worker refused this ClientApp"


class WorkerUntrusted(WorkerError):
    """The folder or the process behind the socket is not this user's own: nothing was sent."""

    category = "site worker folder or process failed the access checks"


@dataclass(frozen=True)
class WorkerFolder:
    """The files one site's worker keeps in its folder."""

    path: Path

    @property
    def socket(self) -> Path:
        return self.path / "worker.sock"

    @property
    def token(self) -> Path:
        return self.path / "token"

    @property
    def pid(self) -> Path:
        return self.path / "worker.pid"

    @property
    def log(self) -> Path:
        return self.path / "worker.log"

    def prepare(self) -> None:
        """Create the folder 0700, or check that an existing one is ours and private."""
        try:
            self.path.mkdir(mode=0o700, parents=True)
        except FileExistsError:
            pass  # never loosened or taken over: checked below as found
        else:
            os.chmod(self.path, 0o700)  # mkdir's mode is narrowed by the umask
        check_private_folder(self.path)


def check_private_folder(path: Path, uid: int | None = None) -> None:
    """Raise WorkerUntrusted unless `path` belongs to `uid` (default: this process's) and has
    no group or other permission bits: only then is a socket or token in it the worker's."""
    uid = os.getuid() if uid is None else uid
    info = path.stat()
    mode = stat.S_IMODE(info.st_mode)
    problems = []
    if info.st_uid != uid:
        problems.append(f"owner uid {info.st_uid}, not this user's uid {uid}")
    if mode & 0o077:
        problems.append(f"mode {mode:#o}, not 0o700 (no group or other bits)")
    if problems:
        raise WorkerUntrusted(f"{path}: site-worker folder has {' and '.join(problems)}; refused: give "
                              f"each site's user a folder of its own, created 0700")


def check_peer(sock: socket.socket, path: Path, uid: int | None = None) -> None:
    """Raise WorkerUntrusted unless the process at the other end of `sock` runs as `uid`
    (default: this process's), as the kernel recorded it (SO_PEERCRED)."""
    uid = os.getuid() if uid is None else uid
    peer = _peer_uid(sock)
    if peer != uid:
        raise WorkerUntrusted(f"{path}: the process listening runs as uid {peer}, not as this user "
                              f"(uid {uid}); refused: nothing was sent to it")


# -- framing: each part is an 8-byte length and the bytes
def _send(sock: socket.socket, *parts: bytes) -> None:
    for part in parts:
        sock.sendall(_HEADER.pack(len(part)) + part)


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks, remaining = [], size
    while remaining:
        chunk = sock.recv(min(remaining, 1 << 20))
        if not chunk:
            raise EOFError("connection closed")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _recv(sock: socket.socket, limit: int = MAX_FRAME) -> bytes:
    (size,) = _HEADER.unpack(_recv_exact(sock, _HEADER.size))
    if size > limit:  # refused before a byte of it is read or allocated
        raise ValueError(f"a frame of {size} bytes, over the limit of {limit}")
    return _recv_exact(sock, size)


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


# -- the ClientApp side
def forward(folder: Path, message: Message, context: Context,
            owner_pid: int | None = None) -> tuple[Message, float | None]:
    """Send `message` to the site's worker and return its reply; start a worker if none answers.

    Also returns `time.perf_counter()` at the moment a freshly started worker answered
    (None when one was already running): the caller counts the wait as process start. A
    worker started here stops when `owner_pid` is gone (default: this process's parent, the
    SuperNode or the executor that started the ClientApp).
    Raises WorkerError (naming the folder and the worker's log) when the worker refuses
    the request or stops before replying; the handler's own errors come back as what they
    were (`RemoteHandlerError` with the handler's safe message)."""
    from strategies.flower_compat import context_to_bytes, message_to_bytes

    where = WorkerFolder(folder)
    request = json.dumps({"app-dir": str(APP_DIR)}).encode()
    payload = (request, message_to_bytes(message), context_to_bytes(context))
    owner_pid = owner_pid or os.getppid()
    status, reply, fresh = _exchange(where, payload, context, owner_pid)
    if status["status"] == "stale":  # a worker of another app version stops itself: start a fresh one once
        _wait_gone(where)
        status, reply, restarted = _exchange(where, payload, context, owner_pid)
        fresh = restarted or fresh
    if status["status"] == "ok":
        return reply, fresh
    if status["status"] == "refused":
        raise WorkerRefused(f"site worker in {folder} refused this ClientApp: {status['reason']}")
    if status["status"] == "error":
        raise RemoteHandlerError(status["type"], status["reason"])
    raise WorkerError(f"site worker in {folder}: unexpected answer {status}")


def _exchange(where: WorkerFolder, payload: tuple[bytes, bytes, bytes], context: Context,
              owner_pid: int) -> tuple[dict, Message | None, float | None]:
    """One request to the worker (started if none answers): its status, its reply, and when a fresh
    worker answered (None if one was running). Updates `context.state` from an "ok" reply."""
    from strategies.flower_compat import context_from_bytes, message_from_bytes

    sock, ready = _connect(where, owner_pid=owner_pid)
    with sock:
        try:
            _send(sock, where.token.read_bytes(), *payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # a worker that refuses the token closes without reading the rest: its answer is read below
        try:
            status = json.loads(_recv(sock))
            if status["status"] != "ok":
                return status, None, ready
            reply = message_from_bytes(_recv(sock))
            context.state = context_from_bytes(_recv(sock)).state
            return status, reply, ready
        except (EOFError, ConnectionError) as err:
            raise WorkerStopped(f"site worker in {where.path} stopped before replying ({err}); a fresh worker "
                                f"starts with the next message; its log: {where.log}") from None


class RemoteHandlerError(RuntimeError):
    """A handler's error inside the worker, re-raised in the ClientApp with its safe message."""

    def __init__(self, type_name: str, reason: str) -> None:
        super().__init__(reason)
        self.type_name = type_name


def _connect(where: WorkerFolder, owner_pid: int) -> tuple[socket.socket, float | None]:
    """A connection to the folder's worker, starting one first if none answers; with the
    perf_counter time at which a fresh worker answered (None if one was running)."""
    sock = _try_connect(where)
    if sock is not None:
        return sock, None
    pid = start_worker(where.path, owner_pid)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        sock = _try_connect(where)
        if sock is not None:
            return sock, time.perf_counter()
        if not _alive(pid):  # died starting, or killed before this process could connect
            raise WorkerStopped(f"site worker in {where.path} stopped before replying (it exited while "
                                f"starting); a fresh worker starts with the next message; its log: {where.log}")
        time.sleep(0.05)
    raise WorkerError(f"site worker in {where.path} did not open {where.socket.name} within "
                      f"{START_TIMEOUT:.0f} s; its log: {where.log}")


def _try_connect(where: WorkerFolder) -> socket.socket | None:
    """A connection to the worker's socket, checked to be this user's own; None if none answers."""
    if not where.path.exists():
        return None  # the first message: start_worker creates the folder
    check_private_folder(where.path)  # else the socket and the token may be another user's plant
    if not where.socket.exists() or not where.token.exists():
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(where.socket))
        check_peer(sock, where.socket)
    except (ConnectionRefusedError, FileNotFoundError):  # a dead worker's socket file
        sock.close()
        return None
    except WorkerUntrusted:
        sock.close()
        raise
    return sock


def _wait_gone(where: WorkerFolder, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while where.socket.exists() and time.monotonic() < deadline:
        time.sleep(0.1)


def start_worker(folder: Path, owner_pid: int) -> int:
    """Start a detached worker for `folder` that stops when `owner_pid` is gone; returns its pid."""
    where = WorkerFolder(folder)
    where.prepare()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(APP_DIR), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    # Absolute: the worker runs in APP_DIR, and `worker_pid` matches its command line.
    command = [sys.executable, "-m", "client_app.worker", "--folder", str(Path(folder).resolve()),
               "--owner-pid", str(owner_pid)]
    with open(where.log, "a") as log:
        process = subprocess.Popen(command, cwd=APP_DIR, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    return process.pid


def worker_pid(folder: Path) -> int | None:
    """The pid of the folder's running worker, if any. The pid file is only believed for a
    process that is this folder's worker (its command line says so): a pid planted there
    must not get another process signalled by `stop_worker`."""
    try:
        pid = int(WorkerFolder(folder).pid.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return pid if _alive(pid) and _is_worker_of(pid, folder) else None


def _is_worker_of(pid: int, folder: Path) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    named = argv[argv.index(b"--folder") + 1] if b"--folder" in argv[:-1] else None
    return b"client_app.worker" in argv and named == os.fsencode(str(Path(folder).resolve()))


def stop_worker(folder: Path, grace: float = 10.0) -> int | None:
    """Stop the folder's worker (SIGTERM, then SIGKILL after `grace` s); returns its pid."""
    import signal

    pid = worker_pid(folder)
    if pid is None:
        return None
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, grace)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return pid
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _alive(pid):
                return pid
            time.sleep(0.05)
    return pid


# -- the worker side
def _alive(pid: int) -> bool:
    """Running (a zombie, exited but not yet reaped by its parent, is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def serve(folder: Path, owner_pid: int) -> int:
    """Serve the folder's socket until the owner process is gone; one request at a time."""
    where = WorkerFolder(folder)
    where.prepare()
    from . import timings
    from .app import app  # the handlers, with their heavy imports, load on the first message

    timings.started_as_worker()  # this process's start is the ClientApp's wait for it

    where.socket.unlink(missing_ok=True)
    token = secrets.token_hex(32).encode()
    staged = where.token.with_suffix(".tmp")
    staged.unlink(missing_ok=True)
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(token)
    os.replace(staged, where.token)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # the socket file is created 0600
    try:
        server.bind(str(where.socket))
    finally:
        os.umask(old_umask)
    server.listen(4)
    server.settimeout(1.0)
    where.pid.write_text(str(os.getpid()))
    print(f"site worker {os.getpid()} serving {where.socket} for owner {owner_pid}", flush=True)
    try:
        while _alive(owner_pid):
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(AUTH_TIMEOUT)  # until the caller has shown the token (_handle)
                try:
                    outcome = _handle(conn, token, app)
                except OSError as err:  # the caller went away mid-exchange: serve the next one
                    print(f"lost a caller: {err}", flush=True)
                    continue
                if outcome == "stale":
                    break
    finally:
        server.close()
        where.socket.unlink(missing_ok=True)
        where.pid.unlink(missing_ok=True)
    print(f"site worker {os.getpid()} stopped", flush=True)
    return 0


def _refuse(conn: socket.socket, reason: str) -> str:
    print(f"refused a caller: {reason}", flush=True)
    _send(conn, json.dumps({"status": "refused", "reason": reason}).encode())
    return "refused"


def _authenticate(conn: socket.socket, token: bytes) -> str | None:
    """Check the caller's uid, then read and check its token: one bounded frame, under the
    connection's timeout. None when the caller may go on, else what happened to it."""
    uid = _peer_uid(conn)
    if uid != os.getuid():
        return _refuse(conn, f"uid {uid} is not uid {os.getuid()}")
    try:
        offered = _recv(conn, MAX_TOKEN_FRAME)
    except (EOFError, OSError, ValueError) as err:  # OSError: TimeoutError, a reset connection
        print(f"dropped a caller before it showed the token: {err or type(err).__name__}", flush=True)
        return "dropped"
    if not hmac.compare_digest(offered, token):
        return _refuse(conn, "wrong token")
    return None


def _handle(conn, token, app) -> str:
    """One request: check the caller, run the ClientApp handler, send the reply."""
    from strategies.flower_compat import context_from_bytes, context_to_bytes, message_from_bytes, message_to_bytes

    turned_away = _authenticate(conn, token)
    if turned_away is not None:
        return turned_away
    conn.settimeout(None)  # the site's own ClientApp: its message may be large, its reply waits on training
    try:
        request = json.loads(_recv(conn))
        message_bytes, context_bytes = _recv(conn), _recv(conn)
    except (EOFError, ConnectionError, ValueError) as err:
        print(f"dropped a malformed request: {err}", flush=True)
        return "dropped"
    if request.get("app-dir") != str(APP_DIR):
        # The SuperNode installed another version of the app: stop, and let the ClientApp start one
        # that imports it (code is never reloaded in place).
        print(f"app {request.get('app-dir')} is not {APP_DIR}: stopping for a fresh worker", flush=True)
        _send(conn, json.dumps({"status": "stale"}).encode())
        return "stale"
    message = message_from_bytes(message_bytes)
    context = context_from_bytes(context_bytes)
    context.node_config = {k: v for k, v in context.node_config.items() if k != NODE_CONFIG_KEY}  # run here
    try:
        reply = app(message, context)
    except Exception as err:  # noqa: BLE001 - the ClientApp re-raises it; the traceback stays in this log
        traceback.print_exc()
        _send(conn, json.dumps({"status": "error", "type": type(err).__name__, "reason": str(err)}).encode())
        return "error"
    _send(conn, json.dumps({"status": "ok"}).encode(), message_to_bytes(reply), context_to_bytes(context))
    return "ok"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one site's warm worker (started by its ClientApp)")
    parser.add_argument("--folder", type=Path, required=True, help="the SuperNode's site-worker folder")
    parser.add_argument("--owner-pid", type=int, required=True, help="stop when this process is gone")
    args = parser.parse_args(argv)
    return serve(args.folder.resolve(), args.owner_pid)


if __name__ == "__main__":
    raise SystemExit(main())
