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
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Sequence

from fedmedlora.local_run import _alive, process_tree, run_config_arg

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
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
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


def write_flwr_config(flwr_home: Path, address: str, root_certificates: Path | None) -> Path:
    """`FLWR_HOME/config.toml` with one SuperLink connection, `deploy`, the default.

    flwr 1.42 reads `[superlink.<name>]` with `address` (the SuperLink's HTTP port: the
    Control API shares it with the Fleet and Runtime APIs), and either `insecure = true` or
    `root-certificates` (an absolute path to the CA that signed the SuperLink's certificate).
    """
    flwr_home.mkdir(parents=True, exist_ok=True)
    lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]", f'address = "{address}"']
    if root_certificates is None:
        lines.append("insecure = true")
    else:
        lines.append(f'root-certificates = "{root_certificates.resolve()}"')
    path = flwr_home / "config.toml"
    path.write_text("\n".join(lines) + "\n")
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


# --------------------------------------------------------------------------- processes


def _marked_pids(marker: str) -> list[int]:
    """Live processes of ours whose environment carries `MARKER_VARIABLE=marker`."""
    needle = f"{MARKER_VARIABLE}={marker}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone, or not ours
            continue
        if needle in environ.split(b"\0") and _alive(int(entry.name)):
            pids.append(int(entry.name))
    return pids


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
        return sorted(p for p in found if _alive(p))

    def stop(self, grace: float = 10.0) -> list[int]:
        """SIGTERM everything, then SIGKILL what is still alive after `grace` seconds.
        Returns the pids still alive afterwards (should be none)."""
        pids = self.pids()
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                for item in self.started:
                    item.process.poll()  # reap our direct children
                pids = [p for p in sorted(set(pids) | set(self.pids())) if _alive(p)]
                if not pids:
                    break
                time.sleep(0.2)
            if not pids:
                break
            log.warning("still running after SIGTERM: %s; sending SIGKILL", pids)
        for item in self.started:
            try:
                item.process.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
        return [p for p in self.pids() if _alive(p)]


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
    """

    def __init__(self, app_dir: Path, sites: Sequence[Site], workdir: Path, tls: bool = False,
                 auth: bool | None = None, startup_timeout: float = 60.0) -> None:
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
        self.port = 0
        self.tls_files: TlsFiles | None = None
        self.node_keys: dict[str, tuple[Path, Path]] = {}

    # -- context manager: whatever happens, stop everything
    def __enter__(self) -> "LoopbackDeployment":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _flwr(self, *args: str) -> list[str]:
        return [str(self.bin / "flwr"), *args]

    # -- components
    def start_superlink(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.port,) = free_ports(1)
        command = [str(self.bin / "flower-superlink"), "--host", "127.0.0.1", "--port", str(self.port),
                   "--disable-runtime-dependency-installation"]
        if self.tls:
            self.tls_files = write_tls_files(self.workdir / "certificates")
            command += ["--ssl-ca-certfile", str(self.tls_files.ca_cert),
                        "--ssl-certfile", str(self.tls_files.server_cert),
                        "--ssl-keyfile", str(self.tls_files.server_key)]
        else:
            command.append("--insecure")
        if self.auth:
            command.append("--enable-supernode-auth")
        write_flwr_config(self.flwr_home, self.address, self.tls_files.ca_cert if self.tls_files else None)
        # cwd = the app folder, as for `flwr run .` in simulation (relative run-config paths).
        self.superlink = self.processes.start("superlink", command, cwd=self.app_dir)
        self._wait_for_health()

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
        self._cli("register-" + site_name, "supernode", "register", str(public), CONNECTION, "--name", site_name)
        self.node_keys[site_name] = (private, public)
        return private, public

    def _cli(self, name: str, *args: str, timeout: float = 120.0) -> str:
        """Run a `flwr` command against our connection; its output goes to logs/<name>.log."""
        log_file = self.processes.log_dir / f"{name}.log"
        command = self._flwr(*args)
        result = subprocess.run(command, cwd=self.workdir, env=self.processes.env, capture_output=True,
                                text=True, timeout=timeout)
        log_file.write_text(f"$ {' '.join(command)}\n{result.stdout}{result.stderr}")
        if result.returncode != 0:
            raise DeploymentError(f"`flwr {' '.join(args)}` failed ({result.returncode}); log {log_file}:\n"
                                  f"{_tail(log_file)}")
        return result.stdout

    def start_supernode(self, site: Site, private_key: Path | None = None) -> Started:
        """One hospital's SuperNode: `--node-config` names its folder; `private_key`, when
        authentication is on, is the key it signs its requests with."""
        (runtime_port,) = free_ports(1)
        home = self.workdir / "sites" / site.name
        home.mkdir(parents=True, exist_ok=True)
        command = [str(self.bin / "flower-supernode"), "--superlink", self.address,
                   "--node-config", site.node_config(),
                   "--host", "127.0.0.1", "--port", str(runtime_port)]
        command += ["--root-certificates", str(self.tls_files.ca_cert)] if self.tls_files else ["--insecure"]
        if private_key is not None:
            command += ["--auth-supernode-private-key", str(private_key)]
        # Each site keeps its own FLWR_HOME (installed app bundles), as on its own machine.
        started = self.processes.start(f"supernode-{site.name}", command, cwd=home,
                                       env={"FLWR_HOME": str(home / "flwr-home")})
        self.supernodes[site.name] = started
        return started

    def online_nodes(self) -> list[dict]:
        """`flwr supernode list --format json`: the SuperNodes the SuperLink knows."""
        out = self._cli("supernode-list", "supernode", "list", CONNECTION, "--format", "json")
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

    def check_alive(self) -> None:
        """Raise if the SuperLink or a SuperNode has exited."""
        for started in [self.superlink, *self.supernodes.values()]:
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
        command = self._flwr("run", str(self.app_dir), CONNECTION, "--stream")
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
           stdout: IO[str] | None = None) -> int:
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
        with LoopbackDeployment(app_dir, sites, workdir, tls=tls, auth=auth) as deployment:
            deployment.start()
            return deployment.run(overrides, timeout=timeout, stdout=stdout)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


__all__ = [
    "Site", "parse_site", "demo_sites", "write_tls_files", "write_node_keys", "write_flwr_config",
    "free_ports", "ProcessSet", "LoopbackDeployment", "DeploymentError", "deploy",
]
