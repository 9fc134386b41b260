"""A real Flower deployment on loopback: one SuperLink, one SuperNode per site, `flwr run`.

This is what the hospitals of a consortium run, started as local processes so that the
deployment path (a fresh `flwr-clientapp` process per message, each site's own
`--node-config`) is exercised on one machine, in CI, with the same app code as the
simulation:

1. `flower-superlink` (the coordinator) on a free port of 127.0.0.1, with runtime
   dependency installation disabled (the app runs in the installed environment);
2. one `flower-supernode` per site, each with its own `--node-config
   "data-dir='...' site-name='...'"` and its own Runtime API port for its ClientApps;
3. `flwr run <app> deploy --stream --run-config ...`, where `deploy` is a connection in a
   private `FLWR_HOME/config.toml` that points at that SuperLink.

With ``tls=True`` it writes a CA and a server certificate for 127.0.0.1/localhost and
starts every component with TLS; with ``auth=True`` (needs TLS) it also writes an EC key
pair per site, registers each public key with `flwr supernode register`, and starts each
SuperNode with its private key: the SuperLink refuses a SuperNode whose key it does not know.

The command line of every component comes from one function each (`superlink_command`,
`supernode_command`, `superexec_command`, `register_command`); `container_commands` applies
them to the container layout of docker-compose.yml and docker-compose.tls.yml (process
isolation: a `flower-superexec` per SuperLink and SuperNode), and
`write_compose_credentials` writes the certificates and keys that overlay mounts.

Every process we start gets its own session and a marker in its environment, which its
children (SuperExec, `flwr-serverapp`, `flwr-clientapp`) inherit; stopping a deployment
signals the process trees of what we started plus every live process carrying the marker,
and checks that none is left. Logs of each process go to ``<workdir>/logs/``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from fedmedlora.local_run import run_config_arg
from fedmedlora.processes import alive, pids_with_env, process_tree, stop_processes

log = logging.getLogger(__name__)

CONNECTION = "deploy"  # the connection name in the private FLWR_HOME/config.toml
MARKER_VARIABLE = "FEDMEDLORA_DEPLOYMENT"  # inherited by every process we start
HOSTS = ("127.0.0.1", "localhost", "::1")


# --------------------------------------------------------------------------- sites


@dataclass(frozen=True)
class Site:
    """One hospital: its name and its data folder (a site folder, see data_loaders.sites)."""

    name: str
    data_dir: Path

    def node_config(self) -> str:
        """The SuperNode's `--node-config`, read by client_app/runtime.py (`data-dir`, `site-name`)."""
        for key, value in (("data-dir", str(self.data_dir)), ("site-name", self.name)):
            if "'" in value:
                raise ValueError(f"site {self.name}: {key} {value!r} may not contain a single quote")
        return f"data-dir='{self.data_dir}' site-name='{self.name}'"


def parse_site(text: str) -> Site:
    """`NAME=FOLDER`, or `FOLDER` (then the name is the folder's name)."""
    name, sep, folder = text.partition("=")
    if not sep:
        name, folder = "", text
    path = Path(folder).expanduser().resolve()
    if not path.is_dir():
        raise FileNotFoundError(f"--site {text!r}: folder {path} does not exist")
    if not (path / "site.json").is_file():
        raise FileNotFoundError(f"--site {text!r}: {path / 'site.json'} not found; a site folder holds a "
                                "site.json (see `fedmedlora prepare` and data_loaders/sites.py)")
    name = name.strip() or path.name
    if not name or any(c.isspace() or c in "'\"/" for c in name):
        raise ValueError(f"--site {text!r}: site name {name!r} must be non-empty, without spaces, quotes or '/'")
    return Site(name, path)


def demo_sites() -> list[Site]:
    """The three sites of the synthetic demo corpus (what the simulation federates by default)."""
    from data_loaders.sites import ensure_demo_corpus

    root = ensure_demo_corpus()
    return [Site(name, root / name) for name in ("site-a", "site-b", "site-c")]


# --------------------------------------------------------------------------- certificates and keys


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    server_cert: Path
    server_key: Path


def write_tls_files(folder: Path, hosts: Sequence[str] = HOSTS, days: int = 30) -> TlsFiles:
    """A self-signed CA and a server certificate it signs, valid for `hosts` (IPs or names)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    until = now + dt.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedmedlora loopback CA")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name).public_key(server_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(until)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    files = TlsFiles(folder / "ca.crt", folder / "server.pem", folder / "server.key")
    files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    _write_private(files.server_key, server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    # The CA's private key is not needed after signing: it is not kept.
    return files


def write_node_keys(folder: Path, name: str) -> tuple[Path, Path]:
    """A SuperNode's EC (P-384) key pair in OpenSSH format, as `ssh-keygen -t ecdsa -b 384`
    writes it: the private key for `--auth-supernode-private-key`, the public key for
    `flwr supernode register`. Returns (private, public)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = folder / name, folder / f"{name}.pub"
    _write_private(private, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                              serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                     serialization.PublicFormat.OpenSSH) + b"\n")
    return private, public


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


# --------------------------------------------------------------------------- flwr configuration


def flwr_config_text(address: str, root_certificates: str | None, connection: str = CONNECTION) -> str:
    """The text of a `config.toml` with one SuperLink connection, `connection`, the default.

    flwr 1.42 reads `[superlink.<name>]` with `address` (the SuperLink's HTTP port: the
    Control API shares it with the Fleet and Runtime APIs), and either `insecure = true` or
    `root-certificates` (an absolute path to the CA that signed the SuperLink's certificate).
    """
    lines = ["[superlink]", f'default = "{connection}"', "", f"[superlink.{connection}]", f'address = "{address}"']
    if root_certificates is None:
        lines.append("insecure = true")
    else:
        lines.append(f'root-certificates = "{root_certificates}"')
    return "\n".join(lines) + "\n"


def write_flwr_config(flwr_home: Path, address: str, root_certificates: Path | None,
                      connection: str = CONNECTION) -> Path:
    """`FLWR_HOME/config.toml` with one SuperLink connection (see :func:`flwr_config_text`);
    `root_certificates` is made absolute."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    path.write_text(flwr_config_text(
        address, None if root_certificates is None else str(root_certificates.resolve()), connection))
    return path


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct ports free on `host` now (the OS picks them; held open together so
    they differ)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


# --------------------------------------------------------------------------- command lines

# The command line of every component, built in one place: the loopback deployment below
# runs them (with absolute executable paths; subprocess isolation unless asked), and
# docker-compose.yml / docker-compose.tls.yml spell out the same lines for containers
# (`container_commands`; tests/test_compose.py checks that the files agree with it).

ISOLATION_MODES = ("subprocess", "process")


def _check_isolation(isolation: str) -> None:
    if isolation not in ISOLATION_MODES:
        raise ValueError(f"isolation {isolation!r}: expected one of {ISOLATION_MODES}")


def superlink_command(host: str, port: int, tls: TlsFiles | None = None, node_auth: bool = False,
                      isolation: str = "subprocess", executable: str = "flower-superlink") -> list[str]:
    """`flower-superlink`: Fleet, Control and Runtime APIs on `host:port` (one HTTP port in
    flwr 1.42), no dependency installation at run time, TLS with `tls` (else `--insecure`),
    SuperNode authentication with `node_auth` (needs TLS). With `isolation="process"` the
    ServerApp runs under a separate `flower-superexec` (:func:`superexec_command`)."""
    _check_isolation(isolation)
    if node_auth and tls is None:
        raise ValueError("SuperNode authentication needs TLS (flwr refuses it on an insecure connection)")
    command = [executable, "--host", host, "--port", str(port), "--disable-runtime-dependency-installation"]
    if isolation != "subprocess":
        command += ["--isolation", isolation]
    if tls is not None:
        command += ["--ssl-ca-certfile", str(tls.ca_cert), "--ssl-certfile", str(tls.server_cert),
                    "--ssl-keyfile", str(tls.server_key)]
    else:
        command.append("--insecure")
    if node_auth:
        command.append("--enable-supernode-auth")
    return command


def supernode_command(superlink: str, node_config: str, host: str, port: int,
                      root_certificates: Path | str | None = None, private_key: Path | str | None = None,
                      isolation: str = "subprocess", runtime_tls: TlsFiles | None = None,
                      executable: str = "flower-supernode") -> list[str]:
    """`flower-supernode` of one site: connects to the SuperLink's `superlink` address (TLS
    verified with `root_certificates`, else `--insecure`), passes `node_config` (see
    :meth:`Site.node_config`) to its ClientApps, serves its Runtime API on `host:port`
    (with TLS if `runtime_tls` is given: needed when a separate `flower-superexec` connects
    with `--root-certificates`), and signs its requests with `private_key` when the SuperLink
    authenticates SuperNodes."""
    _check_isolation(isolation)
    if private_key is not None and root_certificates is None:
        raise ValueError("SuperNode authentication needs TLS (flwr refuses it on an insecure connection)")
    command = [executable, "--superlink", superlink, "--node-config", node_config,
               "--host", host, "--port", str(port)]
    if isolation != "subprocess":
        command += ["--isolation", isolation]
    command += ["--root-certificates", str(root_certificates)] if root_certificates is not None else ["--insecure"]
    if private_key is not None:
        command += ["--auth-supernode-private-key", str(private_key)]
    if runtime_tls is not None:
        command += ["--ssl-ca-certfile", str(runtime_tls.ca_cert), "--ssl-certfile", str(runtime_tls.server_cert),
                    "--ssl-keyfile", str(runtime_tls.server_key)]
    return command


def superexec_command(runtime_api_address: str, root_certificates: Path | str | None = None,
                      executable: str = "flower-superexec") -> list[str]:
    """`flower-superexec` for `--isolation process`: it polls the Runtime API at
    `runtime_api_address` (a SuperLink's: it runs ServerApps; a SuperNode's: ClientApps;
    flwr 1.42 tells which from the API itself) and starts `flwr-serverapp` /
    `flwr-clientapp` processes in its own environment (no dependency installation)."""
    command = [executable, "--runtime-api-address", runtime_api_address]
    command += ["--root-certificates", str(root_certificates)] if root_certificates is not None else ["--insecure"]
    return command


def register_command(public_key: Path | str, connection: str, name: str, executable: str = "flwr") -> list[str]:
    """`flwr supernode register`: tell the SuperLink of `connection` the public key of the
    SuperNode called `name` (run by the coordinator, before that SuperNode starts)."""
    return [executable, "supernode", "register", str(public_key), connection, "--name", name]


# The container layout of docker-compose.yml (and its TLS overlay docker-compose.tls.yml).
SUPERLINK_SERVICE = "superlink"
SUPERLINK_PORT = 9092                 # Fleet, Control and Runtime APIs, published on the host
CONTAINER_DATA_DIR = "/data/site"     # each site's data folder, in its ClientApp executor only
CONTAINER_SECRETS = "/run/secrets"    # where compose mounts `secrets`
COMPOSE_CONNECTION = "compose"        # the connection name in the compose config.toml files
COMPOSE_SITES = {"hospital-a": 9094, "hospital-b": 9095, "hospital-c": 9096}  # site -> Runtime API port


def secret_path(name: str) -> str:
    """Where compose mounts the secret `name` in a container."""
    return f"{CONTAINER_SECRETS}/{name}"


def container_tls(prefix: str) -> TlsFiles:
    """The secrets `<prefix>-ca`, `<prefix>-cert`, `<prefix>-key` as a :class:`TlsFiles`."""
    return TlsFiles(Path(secret_path(f"{prefix}-ca")), Path(secret_path(f"{prefix}-cert")),
                    Path(secret_path(f"{prefix}-key")))


def container_commands(sites: Mapping[str, int] | None = None, tls: bool = False) -> dict[str, list[str]]:
    """The command of every service of the compose deployment, by service name.

    `sites` maps a site name to the port of its SuperNode's Runtime API (default
    :data:`COMPOSE_SITES`). Services: `superlink`, `superexec-serverapp`, and per site
    `supernode-<site>` and `superexec-clientapp-<site>`; with `tls`, also
    `register-<site>` (its public key, registered before its SuperNode starts), and the
    SuperLink authenticates SuperNodes."""
    sites = COMPOSE_SITES if sites is None else sites
    superlink_address = f"{SUPERLINK_SERVICE}:{SUPERLINK_PORT}"
    ca = secret_path("superlink-ca") if tls else None
    commands = {
        SUPERLINK_SERVICE: superlink_command("0.0.0.0", SUPERLINK_PORT, container_tls("superlink") if tls else None,
                                             node_auth=tls, isolation="process"),
        "superexec-serverapp": superexec_command(superlink_address, ca),
    }
    for name, port in sites.items():
        node_config = Site(name, Path(CONTAINER_DATA_DIR)).node_config()
        commands[f"supernode-{name}"] = supernode_command(
            superlink_address, node_config, "0.0.0.0", port, root_certificates=ca,
            private_key=secret_path(f"{name}-node-key") if tls else None, isolation="process",
            runtime_tls=container_tls(f"{name}-runtime") if tls else None)
        commands[f"superexec-clientapp-{name}"] = superexec_command(
            f"supernode-{name}:{port}", secret_path(f"{name}-runtime-ca") if tls else None)
        if tls:
            commands[f"register-{name}"] = register_command(secret_path(f"{name}-node-pub"), COMPOSE_CONNECTION, name)
    return commands


def write_compose_credentials(out: Path, sites: Sequence[str] | None = None,
                              hosts: Sequence[str] = (SUPERLINK_SERVICE, "localhost", "127.0.0.1"),
                              days: int = 365) -> dict[str, Path]:
    """Everything docker-compose.tls.yml mounts as secrets, written under `out`:

    - `ca.crt`, `server.pem`, `server.key`: the consortium CA and the SuperLink's certificate,
      valid for `hosts` (the `superlink` service name, and localhost for `flwr` on the host);
    - `node-keys/<site>`, `node-keys/<site>.pub`: each SuperNode's key pair (the coordinator
      registers the public key; the private key stays with the site);
    - `runtime/<site>/ca.crt`, `server.pem`, `server.key`: each site's own CA and the
      certificate of its SuperNode's Runtime API (`supernode-<site>`), which its ClientApp
      executor verifies;
    - `flwr-home/config.toml`: the connection `compose` for `flwr` on the host
      (127.0.0.1:SUPERLINK_PORT, verified with `ca.crt`).

    Returns the paths by the name of the compose secret that mounts each (plus
    `flwr-config`). Private keys are written with mode 0600."""
    sites = list(COMPOSE_SITES if sites is None else sites)
    out = Path(out)
    tls = write_tls_files(out, hosts, days=days)
    paths = {"superlink-ca": tls.ca_cert, "superlink-cert": tls.server_cert, "superlink-key": tls.server_key}
    for name in sites:
        private, public = write_node_keys(out / "node-keys", name)
        runtime = write_tls_files(out / "runtime" / name, (f"supernode-{name}", "localhost", "127.0.0.1"), days=days)
        paths.update({f"{name}-node-key": private, f"{name}-node-pub": public, f"{name}-runtime-ca": runtime.ca_cert,
                      f"{name}-runtime-cert": runtime.server_cert, f"{name}-runtime-key": runtime.server_key})
    paths["flwr-config"] = write_flwr_config(out / "flwr-home", f"127.0.0.1:{SUPERLINK_PORT}", tls.ca_cert,
                                             COMPOSE_CONNECTION)
    return paths


# --------------------------------------------------------------------------- processes


def _marked_pids(marker: str) -> list[int]:
    """Live processes of ours whose environment carries `MARKER_VARIABLE=marker`."""
    return pids_with_env(MARKER_VARIABLE, marker)


@dataclass
class Started:
    name: str
    process: subprocess.Popen
    log_file: Path


@dataclass
class ProcessSet:
    """The processes of one deployment: started in their own sessions, logged to files,
    tagged through their environment, and all stopped by `stop()`."""

    log_dir: Path
    env: dict[str, str]
    marker: str = field(default_factory=lambda: uuid.uuid4().hex)
    started: list[Started] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = {**self.env, MARKER_VARIABLE: self.marker}

    def start(self, name: str, command: list[str], cwd: Path, env: dict[str, str] | None = None,
              stdout: int | None = None) -> Started:
        log_file = self.log_dir / f"{name}.log"
        with open(log_file, "ab") as handle:
            handle.write(f"$ {' '.join(command)}\n".encode())
            handle.flush()
            process = subprocess.Popen(
                command, cwd=cwd, env={**self.env, **(env or {})}, stdin=subprocess.DEVNULL,
                stdout=handle if stdout is None else stdout,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        started = Started(name, process, log_file)
        self.started.append(started)
        log.info("started %s (pid %d), log: %s", name, process.pid, log_file)
        return started

    def pids(self) -> list[int]:
        """Every live process of this deployment: what we started, its descendants, and
        anything carrying our marker (descendants re-parented after their parent exited)."""
        found: set[int] = set()
        for item in self.started:
            if item.process.poll() is None:
                found.update(process_tree(item.process.pid))
        found.update(_marked_pids(self.marker))
        return sorted(p for p in found if alive(p))

    def stop(self, grace: float = 10.0) -> list[int]:
        """SIGTERM everything, then SIGKILL what is still alive after `grace` seconds.
        Returns the pids still alive afterwards (should be none)."""
        left = stop_processes(
            self.pids, ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)), reap=self._reap,
            on_escalate=lambda pids: log.warning("still running after SIGTERM: %s; sending SIGKILL", pids))
        for item in self.started:
            try:
                item.process.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
        return [p for p in left + self.pids() if alive(p)]

    def _reap(self) -> None:
        for item in self.started:
            item.process.poll()  # reap our direct children


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --------------------------------------------------------------------------- the deployment


class DeploymentError(RuntimeError):
    """A component did not start, or stopped during the run (its log is named)."""


class LoopbackDeployment:
    """A SuperLink and one SuperNode per site on 127.0.0.1; use as a context manager so that
    every process is stopped on the way out (also on errors and Ctrl-C).

        with LoopbackDeployment(app_dir, sites, workdir, tls=True) as deployment:
            deployment.start()
            code = deployment.run({"num-server-rounds": 2})

    With ``isolation="process"`` it runs the layout of docker-compose.yml as processes: the
    SuperLink and each SuperNode get a separate `flower-superexec` (started here, as a
    container would be), and with TLS each SuperNode serves its Runtime API over TLS with a
    certificate of its own CA (``runtime/<site>/``) that its executor verifies.
    """

    def __init__(self, app_dir: Path, sites: Sequence[Site], workdir: Path, tls: bool = False,
                 auth: bool | None = None, startup_timeout: float = 60.0, isolation: str = "subprocess") -> None:
        _check_isolation(isolation)
        self.isolation = isolation
        self.app_dir = Path(app_dir).resolve()
        self.sites = list(sites)
        names = [s.name for s in self.sites]
        if len(set(names)) != len(names):
            raise ValueError(f"site names must be distinct, got {names}")
        self.workdir = Path(workdir).resolve()
        self.tls = tls
        self.auth = tls if auth is None else auth
        if self.auth and not self.tls:
            raise ValueError("SuperNode authentication needs TLS (flwr refuses it on an insecure connection)")
        self.startup_timeout = startup_timeout
        self.flwr_home = self.workdir / "flwr-home"
        self.bin = Path(sys.executable).parent
        env = dict(os.environ)
        env.update({
            # Flower starts flower-superexec, flwr-serverapp, flwr-clientapp by name: ours first.
            "PATH": os.pathsep.join([str(self.bin), env.get("PATH", "")]),
            "FLWR_HOME": str(self.flwr_home),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "PYTHONUNBUFFERED": "1",
        })
        self.processes = ProcessSet(self.workdir / "logs", env)
        self.superlink: Started | None = None
        self.supernodes: dict[str, Started] = {}
        self.executors: dict[str, Started] = {}  # isolation="process": the flower-superexec processes
        self.port = 0
        self.tls_files: TlsFiles | None = None
        self.node_keys: dict[str, tuple[Path, Path]] = {}

    # -- context manager: whatever happens, stop everything
    def __enter__(self) -> LoopbackDeployment:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _flwr(self) -> str:
        return str(self.bin / "flwr")

    # -- components
    def start_superlink(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.port,) = free_ports(1)
        if self.tls:
            self.tls_files = write_tls_files(self.workdir / "certificates")
        command = superlink_command("127.0.0.1", self.port, self.tls_files, node_auth=self.auth,
                                    isolation=self.isolation, executable=str(self.bin / "flower-superlink"))
        write_flwr_config(self.flwr_home, self.address, self.tls_files.ca_cert if self.tls_files else None)
        # cwd = the app folder, as for `flwr run .` in simulation (relative run-config paths).
        self.superlink = self.processes.start("superlink", command, cwd=self.app_dir)
        self._wait_for_health()
        if self.isolation == "process":  # the ServerApp executor: same working directory (outputs)
            self.executors["serverapp"] = self.processes.start(
                "superexec-serverapp",
                superexec_command(self.address, self.tls_files.ca_cert if self.tls_files else None,
                                  executable=str(self.bin / "flower-superexec")),
                cwd=self.app_dir, env={"FLWR_HOME": str(self.workdir / "superexec-serverapp")})

    def _wait_for_health(self) -> None:
        import httpx

        scheme = "https" if self.tls else "http"
        verify: bool | ssl.SSLContext = (ssl.create_default_context(cafile=str(self.tls_files.ca_cert))
                                         if self.tls_files else False)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.superlink.process.poll() is not None:
                raise DeploymentError(f"flower-superlink exited with code {self.superlink.process.returncode}; "
                                      f"log {self.superlink.log_file}:\n{_tail(self.superlink.log_file)}")
            try:
                if httpx.get(f"{scheme}://{self.address}/health", verify=verify, timeout=1.0).is_success:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise DeploymentError(f"flower-superlink did not answer on {self.address} within "
                              f"{self.startup_timeout:.0f} s; log {self.superlink.log_file}")

    def register(self, site_name: str) -> tuple[Path, Path]:
        """Write a key pair for `site_name` and register its public key (`flwr supernode register`)."""
        private, public = write_node_keys(self.workdir / "node-keys", site_name)
        self._cli("register-" + site_name, register_command(public, CONNECTION, site_name, self._flwr()))
        self.node_keys[site_name] = (private, public)
        return private, public

    def _cli(self, name: str, command: list[str], timeout: float = 120.0) -> str:
        """Run a `flwr` command against our connection; its output goes to logs/<name>.log."""
        log_file = self.processes.log_dir / f"{name}.log"
        result = subprocess.run(command, cwd=self.workdir, env=self.processes.env, capture_output=True,
                                text=True, timeout=timeout)
        log_file.write_text(f"$ {' '.join(command)}\n{result.stdout}{result.stderr}")
        if result.returncode != 0:
            raise DeploymentError(f"`{' '.join(command)}` failed ({result.returncode}); log {log_file}:\n"
                                  f"{_tail(log_file)}")
        return result.stdout

    def start_supernode(self, site: Site, private_key: Path | None = None) -> Started:
        """One hospital's SuperNode: `--node-config` names its folder; `private_key`, when
        authentication is on, is the key it signs its requests with."""
        (runtime_port,) = free_ports(1)
        home = self.workdir / "sites" / site.name
        home.mkdir(parents=True, exist_ok=True)
        runtime_tls = None
        if self.isolation == "process" and self.tls_files:
            runtime_tls = write_tls_files(self.workdir / "runtime" / site.name)
        command = supernode_command(self.address, site.node_config(), "127.0.0.1", runtime_port,
                                    root_certificates=self.tls_files.ca_cert if self.tls_files else None,
                                    private_key=private_key, isolation=self.isolation, runtime_tls=runtime_tls,
                                    executable=str(self.bin / "flower-supernode"))
        # Each site keeps its own FLWR_HOME (installed app bundles), as on its own machine.
        started = self.processes.start(f"supernode-{site.name}", command, cwd=home,
                                       env={"FLWR_HOME": str(home / "flwr-home")})
        self.supernodes[site.name] = started
        if self.isolation == "process":  # the site's ClientApp executor, with its own FLWR_HOME
            self.executors[site.name] = self.processes.start(
                f"superexec-clientapp-{site.name}",
                superexec_command(f"127.0.0.1:{runtime_port}", runtime_tls.ca_cert if runtime_tls else None,
                                  executable=str(self.bin / "flower-superexec")),
                cwd=home, env={"FLWR_HOME": str(home / "superexec-home")})
        return started

    def online_nodes(self) -> list[dict]:
        """`flwr supernode list --format json`: the SuperNodes the SuperLink knows."""
        out = self._cli("supernode-list", [self._flwr(), "supernode", "list", CONNECTION, "--format", "json"])
        data = json.loads(out[out.index("{"):])
        return [n for n in data.get("nodes", []) if str(n.get("status", "")).lower() == "online"]

    def wait_for_supernodes(self, count: int, timeout: float | None = None) -> None:
        """Until `count` SuperNodes are online at the SuperLink. Each `flwr` call costs
        seconds, so first wait (cheaply) for every SuperNode to log the node id it got."""
        deadline = time.monotonic() + (timeout or self.startup_timeout)
        online = 0
        while True:
            self.check_alive()
            if all("SuperNode ID:" in s.log_file.read_text(errors="replace") for s in self.supernodes.values()):
                online = len(self.online_nodes())
                if online >= count:
                    return
            if time.monotonic() > deadline:
                raise DeploymentError(f"{online} of {count} SuperNodes connected within "
                                      f"{timeout or self.startup_timeout:.0f} s; logs in {self.processes.log_dir}")
            time.sleep(0.5)

    def kill_supernode(self, site_name: str) -> list[int]:
        """SIGKILL one site's SuperNode and everything below it (the ClientApp it is running;
        with process isolation its executor too), as a crash or power cut at that hospital
        would. The deployment stops watching it, so a `run` in progress goes on without it
        (the coordinator notices the site missing). For fault tests; returns the pids killed."""
        victims = [self.supernodes[site_name]]
        # One assignment each: `run` may be reading these in another thread.
        self.supernodes = {name: s for name, s in self.supernodes.items() if name != site_name}
        if site_name in self.executors:
            victims.append(self.executors[site_name])
            self.executors = {name: s for name, s in self.executors.items() if name != site_name}
        return _kill_now(victims)

    def kill_superlink(self) -> list[int]:
        """SIGKILL the SuperLink and everything below it (the ServerApp it runs; with process
        isolation the ServerApp's executor too), as a crash of the coordinator would. A `run`
        in progress then stops with DeploymentError. For fault tests; returns the pids killed."""
        if self.superlink is None:
            raise DeploymentError("no SuperLink was started")
        victims = [self.superlink]
        if "serverapp" in self.executors:
            victims.append(self.executors["serverapp"])
        return _kill_now(victims)

    def check_alive(self) -> None:
        """Raise if the SuperLink, a SuperNode or an executor has exited."""
        for started in [self.superlink, *self.supernodes.values(), *self.executors.values()]:
            if started is not None and started.process.poll() is not None:
                raise DeploymentError(f"{started.name} exited with code {started.process.returncode}; "
                                      f"log {started.log_file}:\n{_tail(started.log_file)}")

    def start(self) -> None:
        """The SuperLink, then (after registering their keys) every site's SuperNode, and
        wait until all SuperNodes are online."""
        self.start_superlink()
        if self.auth:  # each `flwr supernode register` takes seconds: run them side by side
            errors: list[BaseException] = []

            def register(name: str) -> None:
                try:
                    self.register(name)
                except BaseException as error:  # noqa: BLE001 - re-raised below
                    errors.append(error)

            threads = [threading.Thread(target=register, args=(s.name,)) for s in self.sites]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            if errors:
                raise errors[0]
        for site in self.sites:
            self.start_supernode(site, self.node_keys[site.name][0] if self.auth else None)
        self.wait_for_supernodes(len(self.sites))

    def run(self, overrides: dict | None = None, timeout: float | None = None,
            stdout: IO[str] | None = None) -> int:
        """`flwr run <app> deploy --stream --run-config ...`; returns flwr's exit code.

        flwr's output goes to logs/flwr-run.log and, if given, to `stdout`. Stops early
        (code 1) if the SuperLink or a SuperNode exits during the run."""
        command = [self._flwr(), "run", str(self.app_dir), CONNECTION, "--stream"]
        if overrides:
            command += ["--run-config", run_config_arg(overrides)]
        started = self.processes.start("flwr-run", command, cwd=self.app_dir, stdout=subprocess.PIPE)
        copier = threading.Thread(target=_copy_lines, args=(started.process.stdout, started.log_file, stdout),
                                  daemon=True)
        copier.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while started.process.poll() is None:
                self.check_alive()
                if deadline is not None and time.monotonic() > deadline:
                    raise DeploymentError(f"the run did not finish within {timeout:.0f} s; "
                                          f"logs in {self.processes.log_dir}")
                time.sleep(0.5)
        finally:
            if started.process.poll() is not None:
                copier.join(timeout=5)
        if started.process.returncode != 0:
            # flwr can notice a dead SuperLink before the loop above does: name the cause.
            self.check_alive()
        return started.process.returncode

    def stop(self, grace: float = 10.0) -> None:
        """Stop every process of the deployment; a second Ctrl-C does not interrupt this."""
        in_main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main else None
        try:
            left = self.processes.stop(grace)
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        if left:
            raise DeploymentError(f"processes still running after SIGKILL: {left}")
        log.info("deployment stopped; logs in %s", self.processes.log_dir)


def _kill_now(victims: Sequence[Started], wait: float = 60.0) -> list[int]:
    """SIGKILL the process trees of `victims` (found before any dies, so no child escapes by
    being re-parented) and wait until they are gone; returns the pids signalled."""
    pids = sorted({pid for item in victims if item.process.poll() is None for pid in process_tree(item.process.pid)})
    deadline = time.monotonic() + wait

    def reap() -> None:
        for item in victims:
            item.process.poll()  # reap our direct children

    stop_processes(lambda: pids, ((signal.SIGKILL, wait),), reap=reap)
    # /proc shows a killed process's main thread as a zombie while its other threads are
    # still exiting, and waitpid reports it only once they are gone: wait for that, so
    # `returncode` is set on return.
    for item in victims:
        try:
            item.process.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    return pids


def _copy_lines(source: IO[bytes], log_file: Path, sink: IO[str] | None) -> None:
    with open(log_file, "ab") as handle:
        for line in iter(source.readline, b""):
            handle.write(line)
            handle.flush()
            if sink is not None:
                sink.write(line.decode(errors="replace"))
                sink.flush()


def _raise_on_sigterm(signum, frame):  # pragma: no cover - signal handler
    raise KeyboardInterrupt(f"signal {signum}")


def deploy(app_dir: Path, sites: Sequence[Site], overrides: dict | None = None, workdir: Path | None = None,
           tls: bool = False, auth: bool | None = None, timeout: float | None = None,
           stdout: IO[str] | None = None, isolation: str = "subprocess") -> int:
    """Start a loopback deployment, run the app once, stop every process; flwr's exit code.

    `strategy.min-sites` defaults to the number of sites (the run waits for that many)."""
    app_dir = Path(app_dir).resolve()
    overrides = dict(overrides or {})
    overrides.setdefault("strategy.min-sites", len(sites))
    workdir = Path(workdir) if workdir else app_dir / ".deploy" / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        with LoopbackDeployment(app_dir, sites, workdir, tls=tls, auth=auth, isolation=isolation) as deployment:
            deployment.start()
            return deployment.run(overrides, timeout=timeout, stdout=stdout)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


__all__ = [
    "Site", "parse_site", "demo_sites", "write_tls_files", "write_node_keys", "flwr_config_text",
    "write_flwr_config", "free_ports", "superlink_command", "supernode_command", "superexec_command",
    "register_command", "container_commands", "write_compose_credentials", "ProcessSet",
    "LoopbackDeployment", "DeploymentError", "deploy",
]
