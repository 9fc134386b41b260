"""The loopback deployment: start, run `flwr run`, inject faults, stop; and `deploy`, which does it all."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import IO

from fedmedlora.app_pin import app_digest
from fedmedlora.local_run import run_config_arg
from fedmedlora.processes import process_tree, stop_processes

from .commands import (
    _check_isolation,
    register_command,
    site_exec_command,
    superexec_command,
    superlink_command,
    supernode_command,
)
from .flwr_config import CONNECTION, free_ports, write_flwr_config
from .pki import TlsFiles, write_node_keys, write_tls_files
from .run_status import RunNotCompleted, check_completed, run_id_in
from .sites import Site
from .supervision import ProcessSet, Started, _tail

log = logging.getLogger(__name__)


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

    Each site keeps its model warm in a site worker (``sites/<site>/worker``, see
    client_app/worker.py) unless ``site_workers=False``, and with ``share_cores`` the sites
    split this machine's cores (the node config's `threads`) instead of each using all of them.

    A site that pins its apps (``Site.approved_apps``) runs its SuperNode with process
    isolation whatever ``isolation`` says, and `fedmedlora site-exec` as its executor: in
    subprocess isolation its SuperNode would start Flower's own, which checks nothing.
    """

    def __init__(self, app_dir: Path, sites: Sequence[Site], workdir: Path, tls: bool = False,
                 auth: bool | None = None, startup_timeout: float = 60.0, isolation: str = "subprocess",
                 site_workers: bool = True, share_cores: bool = True) -> None:
        _check_isolation(isolation)
        self.site_workers = site_workers
        self.threads = max(1, len(os.sched_getaffinity(0)) // max(1, len(sites))) if share_cores else 0
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
        pinned = site.approved_apps is not None
        isolation = "process" if pinned else self.isolation
        runtime_tls = None
        if isolation == "process" and self.tls_files:
            runtime_tls = write_tls_files(self.workdir / "runtime" / site.name)
        node_config = site.node_config(self.worker_folder(site.name) if self.site_workers else None, self.threads,
                                       audit_log=self.audit_log(site.name), audit_key=self.audit_key(site.name))
        command = supernode_command(self.address, node_config, "127.0.0.1", runtime_port,
                                    root_certificates=self.tls_files.ca_cert if self.tls_files else None,
                                    private_key=private_key, isolation=isolation, runtime_tls=runtime_tls,
                                    executable=str(self.bin / "flower-supernode"))
        # Each site keeps its own FLWR_HOME (installed app bundles), as on its own machine.
        started = self.processes.start(f"supernode-{site.name}", command, cwd=home,
                                       env={"FLWR_HOME": str(home / "flwr-home")})
        self.supernodes[site.name] = started
        if isolation == "process":  # the site's ClientApp executor, with its own FLWR_HOME
            address, ca = f"127.0.0.1:{runtime_port}", runtime_tls.ca_cert if runtime_tls else None
            executor = (site_exec_command(address, ca, executable=str(self.bin / "fedmedlora")) if pinned else
                        superexec_command(address, ca, executable=str(self.bin / "flower-superexec")))
            self.executors[site.name] = self.processes.start(
                f"superexec-clientapp-{site.name}", executor, cwd=home,
                env={"FLWR_HOME": str(home / "superexec-home")})
        return started

    def audit_log(self, site_name: str) -> Path:
        """The site's own audit trail (client_app/audit_log.py), beside its SuperNode's files."""
        return (self.workdir / "sites" / site_name / "audit.jsonl").resolve()

    def audit_key(self, site_name: str) -> Path:
        """The key that seals the site's trail, outside the trail's folder (created by the site)."""
        return (self.workdir / "audit-keys" / f"{site_name}.key").resolve()

    def worker_folder(self, site_name: str) -> Path:
        """The folder of the site's warm worker (its socket, token, pid and log)."""
        return self.workdir / "sites" / site_name / "worker"

    def kill_site_worker(self, site_name: str) -> int | None:
        """SIGKILL the site's warm worker, as a crash would (for fault tests); returns its pid.
        The site's next message starts a fresh one."""
        from client_app.worker import worker_pid

        pid = worker_pid(self.worker_folder(site_name))
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        return pid

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
            stdout: IO[str] | None = None, app_dir: Path | None = None) -> int:
        """`flwr run <app> deploy --stream --run-config ...`; returns flwr's exit code.

        `app_dir` submits another app folder than the deployment's. flwr's output goes to
        logs/flwr-run.log and, if given, to `stdout`. Stops early (code 1) if the SuperLink
        or a SuperNode exits during the run."""
        app = Path(app_dir).resolve() if app_dir is not None else self.app_dir
        command = [self._flwr(), "run", str(app), CONNECTION, "--stream"]
        if overrides:
            command += ["--run-config", run_config_arg(overrides)]
        started = self.processes.start("flwr-run", command, cwd=app, stdout=subprocess.PIPE)
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
        # flwr exits 0 whatever became of the ServerApp: ask the SuperLink (run_status.py).
        ids = [i for i in map(run_id_in, started.log_file.read_text(errors="replace").splitlines()) if i is not None]
        run_id = ids[-1] if ids else None
        try:
            check_completed(self._flwr(), run_id, CONNECTION, cwd=self.workdir, env=self.processes.env)
        except RunNotCompleted as err:
            log.error("%s", err)
            if stdout is not None:
                stdout.write(f"error: {err}\n")
            return 1
        return 0

    def stop(self, grace: float = 10.0) -> None:
        """Stop every process of the deployment; a second Ctrl-C does not interrupt this."""
        in_main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main else None
        try:
            left = self.processes.stop(grace)
            # A worker stops by itself once its SuperNode is gone; stop it now rather than wait.
            from client_app.worker import stop_worker, worker_pid

            for site in self.sites:
                stop_worker(self.worker_folder(site.name), grace)
                pid = worker_pid(self.worker_folder(site.name))
                if pid is not None:
                    left.append(pid)
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


def pin_sites(sites: Sequence[Site], app_dir: Path, overrides: dict) -> list[Site]:
    """`sites`, each pinning the digest of `app_dir`'s app and the run's model.name (the
    override, else the app's default) unless it pins one already: the loopback deployment
    plays every hospital, and a hospital pins what it reviewed (docs/howto/hospitals.md)."""
    digest = app_digest(app_dir)
    model = overrides.get("model.name")
    if model is None:
        config = tomllib.loads((app_dir / "pyproject.toml").read_text(encoding="utf-8"))
        model = config["tool"]["flwr"]["app"]["config"]["model"]["name"]
    return [replace(site, approved_apps=(digest,) if site.approved_apps is None else site.approved_apps,
                    base_model=str(model) if site.base_model is None else site.base_model) for site in sites]


def _raise_on_sigterm(signum, frame):  # pragma: no cover - signal handler
    raise KeyboardInterrupt(f"signal {signum}")


def deploy(app_dir: Path, sites: Sequence[Site], overrides: dict | None = None, workdir: Path | None = None,
           tls: bool = False, auth: bool | None = None, timeout: float | None = None,
           stdout: IO[str] | None = None, isolation: str = "subprocess", site_workers: bool = True,
           share_cores: bool = True) -> int:
    """Start a loopback deployment, run the app once, stop every process; flwr's exit code.

    `strategy.min-sites` defaults to the number of sites (the run waits for that many). A
    site that pins nothing pins what this run uses: the app's digest and its model.name."""
    app_dir = Path(app_dir).resolve()
    overrides = dict(overrides or {})
    overrides.setdefault("strategy.min-sites", len(sites))
    sites = pin_sites(sites, app_dir, overrides)
    workdir = Path(workdir) if workdir else app_dir / ".deploy" / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        with LoopbackDeployment(app_dir, sites, workdir, tls=tls, auth=auth, isolation=isolation,
                                site_workers=site_workers, share_cores=share_cores) as deployment:
            deployment.start()
            return deployment.run(overrides, timeout=timeout, stdout=stdout)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)

