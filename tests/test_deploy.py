"""A real deployment on loopback: a SuperLink, one SuperNode per site (each with its own
`--node-config`), `flwr run` against it; insecure, and with TLS and SuperNode authentication.
Same tiny model, corpus and run-config overrides as tests/test_simulation.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedmedlora.deploy import (
    LoopbackDeployment,
    ProcessSet,
    Site,
    pin_sites,
    write_flwr_config,
    write_node_keys,
    write_tls_files,
)
from support.deployment import _overrides, _processes_of, _sites
from support.paths import REPO

pytestmark = pytest.mark.e2e  # real Flower runs: the slow tier


def _check_run(run_dir: Path, log: str, rounds: int) -> None:
    from peft import PeftConfig

    final = run_dir / "final"
    assert (final / "adapter_config.json").is_file() and (final / "adapter_model.safetensors").is_file(), log[-3000:]
    assert PeftConfig.from_pretrained(final).r == 4
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == list(range(rounds + 1))
    assert (run_dir / f"round-{rounds}").is_dir()
    for record in records[1:]:
        # the names come from each SuperNode's --node-config (site-name), not from the folders
        assert sorted(s["site"] for s in record["sites"]) == ["hospital-a", "hospital-b", "hospital-c"]
        assert all(s["bytes-up"] > 0 and "strict-f1" in s["evaluate"] for s in record["sites"])


def _deploy(tmp_path, tiny_llama, tiny_corpus, tls: bool, rounds: int, rogue: bool = False,
            isolation: str = "subprocess") -> None:
    workdir = tmp_path / "deploy"
    t0 = time.monotonic()
    overrides = _overrides(tiny_llama, tiny_corpus, tmp_path / "outputs", rounds)
    # as in docker-compose.yml, process isolation pins each site's app and base model (site-exec)
    sites = pin_sites(_sites(tiny_corpus), REPO, overrides) if isolation == "process" else _sites(tiny_corpus)
    with LoopbackDeployment(REPO, sites, workdir, tls=tls, isolation=isolation) as deployment:
        deployment.start()
        assert len(deployment.online_nodes()) == 3
        if rogue:  # a SuperNode whose key was never registered is refused and exits
            private, _ = write_node_keys(workdir / "node-keys", "rogue")
            refused = deployment.start_supernode(Site("rogue", tiny_corpus / "site-a"), private)
            assert refused.process.wait(timeout=90) != 0
            assert "Failed to activate SuperNode" in refused.log_file.read_text()
            del deployment.supernodes["rogue"]  # its exit is expected, not a failure of the run
            assert len(deployment.online_nodes()) == 3
        started = time.monotonic()
        code = deployment.run(overrides, timeout=900)
        log = (deployment.processes.log_dir / "flwr-run.log").read_text()
        print(f"deployment (tls={tls}, isolation={isolation}): start {started - t0:.1f} s, run {time.monotonic() - started:.1f} s")
        assert code == 0, log[-3000:]
        assert deployment.processes.pids(), "the SuperLink and SuperNodes run until stopped"
        for site in deployment.sites:  # one warm worker per site served every message
            assert (deployment.worker_folder(site.name) / "worker.log").read_text().count("serving") == 1
    assert deployment.processes.pids() == [] and _processes_of(workdir) == []
    _check_run(tmp_path / "outputs" / "deploy", log, rounds)
    _check_audit(tmp_path / "outputs" / "deploy", [deployment.audit_log(s.name) for s in deployment.sites], rounds,
                 [tmp_path / "outputs" / "audit.key", *[deployment.audit_key(s.name) for s in deployment.sites]])


def _check_audit(run_dir: Path, site_logs: list[Path], rounds: int, keys: list[Path]) -> None:
    """The coordinator's and the sites' audit trails agree and are sealed (fedmedlora audit-verify)."""
    from fedmedlora.audit_check import verify
    from wire import protocol
    from wire.audit import read_chain

    entries = read_chain(run_dir / "audit.jsonl")
    assert [e["event"] for e in entries if e["event"] != "join"] == ["run-start", "global"] + ["round"] * rounds + [
        "run-end"]
    assert sorted(e["site"] for e in entries if e["event"] == "join") == ["hospital-a", "hospital-b", "hospital-c"]
    joins = [e for e in entries if e["event"] == "join"]
    assert all(e["versions"]["flwr"].startswith("1.42") and len(e["base-sha256"]) == 64 for e in joins), joins
    last = entries[-2]
    assert last["asked"] == last["replied"] == ["hospital-a", "hospital-b", "hospital-c"]
    assert all(len(r["sha256"]) == 64 and r["weight"] > 0 for r in last["received"]), last
    for path in site_logs:
        site = read_chain(path)
        sent = [e for e in site if e["event"] == "sent" and e["message-type"] == "train"]
        assert len(sent) == rounds and site[-1]["event"] == "seal", path
        assert all(protocol.AUDIT_HEAD in e for e in site if e["event"] == "received"), path
    assert verify(run_dir / "audit.jsonl", site_logs, keys) == []
    command = [sys.executable, "-m", "fedmedlora.cli", "audit-verify", str(run_dir / "audit.jsonl"),
               *[f"--site={p}" for p in site_logs], *[f"--key={k}" for k in keys]]
    assert subprocess.run(command, capture_output=True, text=True, timeout=120).returncode == 0


def test_insecure_loopback_deployment_trains_three_sites(tmp_path, tiny_llama, tiny_corpus):
    # two rounds: what carries over between rounds works with a fresh ClientApp process per message
    _deploy(tmp_path, tiny_llama, tiny_corpus, tls=False, rounds=2)


def test_tls_deployment_authenticates_supernodes_and_refuses_an_unregistered_one(tmp_path, tiny_llama, tiny_corpus):
    _deploy(tmp_path, tiny_llama, tiny_corpus, tls=True, rounds=1, rogue=True)
    config = (tmp_path / "deploy" / "flwr-home" / "config.toml").read_text()
    assert "root-certificates" in config and "insecure" not in config
    superlink = (tmp_path / "deploy" / "logs" / "superlink.log").read_text().splitlines()[0]
    assert "--enable-supernode-auth" in superlink and "--ssl-certfile" in superlink


def test_process_isolation_as_in_docker_compose(tmp_path, tiny_llama, tiny_corpus):
    """The layout of docker-compose.yml + docker-compose.tls.yml, as processes: a separate
    flower-superexec beside the SuperLink and a `fedmedlora site-exec` beside each SuperNode
    (which pins its app and base model), TLS on every Runtime API too."""
    _deploy(tmp_path, tiny_llama, tiny_corpus, tls=True, rounds=1, isolation="process")
    logs = tmp_path / "deploy" / "logs"
    assert "--isolation process" in (logs / "superlink.log").read_text().splitlines()[0]
    supernode = (logs / "supernode-hospital-a.log").read_text().splitlines()[0]
    assert "--isolation process" in supernode and "--ssl-certfile" in supernode
    executor = (logs / "superexec-clientapp-hospital-a.log").read_text().splitlines()[0]
    assert "fedmedlora site-exec" in executor and "--root-certificates" in executor
    assert "approved-apps=" in supernode and "base-model=" in supernode
    assert "flower-superexec" in (logs / "superexec-serverapp.log").read_text().splitlines()[0]


def test_ctrl_c_stops_every_process(tmp_path, tiny_llama, tiny_corpus):
    """`fedmedlora deploy` interrupted while the SuperNodes are up leaves nothing running."""
    workdir = tmp_path / "deploy"
    command = [sys.executable, "-m", "fedmedlora.cli", "deploy", "--app", str(REPO), "--workdir", str(workdir),
               *[f"--site={s.name}={s.data_dir}" for s in _sites(tiny_corpus)],
               "--run-config", f"model.name={tiny_llama}", "--run-config", "num-server-rounds=50",
               "--run-config", f"output-dir={tmp_path / 'outputs'}"]
    # A shell starts background jobs with SIGINT ignored, and Python keeps that: give the
    # child Ctrl-C's default, as a terminal would, however this test suite was started.
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while not (workdir / "logs" / "flwr-run.log").exists():  # written once all SuperNodes are online
            assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
            time.sleep(0.5)
        assert _processes_of(workdir)
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=180)[0]  # stopping takes ~20 s; more on a loaded machine
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
            for pid in _processes_of(workdir):  # SIGKILLed, it cannot stop what it started
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    assert process.returncode == 130, output[-3000:]
    assert _processes_of(workdir) == []


def test_tls_files_and_connection_config(tmp_path):
    from cryptography import x509

    files = write_tls_files(tmp_path / "certs")
    cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert oct(files.server_key.stat().st_mode & 0o777) == "0o600"

    private, public = write_node_keys(tmp_path / "keys", "site-a")
    assert public.read_text().startswith("ecdsa-sha2-nistp384 ")
    assert private.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")

    import tomllib

    secure = tomllib.loads(write_flwr_config(tmp_path / "h1", "127.0.0.1:1234", files.ca_cert).read_text())
    assert secure["superlink"] == {"default": "deploy", "deploy": {
        "address": "127.0.0.1:1234", "root-certificates": str(files.ca_cert.resolve())}}
    insecure = tomllib.loads(write_flwr_config(tmp_path / "h2", "127.0.0.1:1234", None).read_text())
    assert insecure["superlink"]["deploy"]["insecure"] is True


def test_site_node_config_is_what_the_client_app_reads(tmp_path):
    from flwr.common.config import parse_config_args

    from client_app.runtime import site_dir

    folder = tmp_path / "a folder with spaces"
    folder.mkdir()
    parsed = parse_config_args([Site("hospital-a", folder).node_config()])
    assert parsed == {"data-dir": str(folder), "site-name": "hospital-a"}
    assert site_dir(parsed, {}) == folder.resolve()
    warm = parse_config_args([Site("hospital-a", folder).node_config(tmp_path / "worker", threads=2)])
    assert warm == {"data-dir": str(folder), "site-name": "hospital-a", "site-worker": str(tmp_path / "worker"),
                    "threads": 2}
    audited = parse_config_args([Site("hospital-a", folder).node_config(audit_log=tmp_path / "trail" / "audit.jsonl",
                                                                         audit_key=tmp_path / "keys" / "a.key")])
    assert audited["audit-log"] == str(tmp_path / "trail" / "audit.jsonl")
    assert audited["audit-key"] == str(tmp_path / "keys" / "a.key")


def test_process_set_stops_orphaned_descendants(tmp_path):
    """A child that outlives its parent (re-parented to init) is still found by the marker."""
    processes = ProcessSet(tmp_path / "logs", dict(os.environ))
    started = processes.start("orphans", ["bash", "-c", "sleep 300 & sleep 300 & exit 0"], cwd=tmp_path)
    started.process.wait(timeout=10)
    deadline = time.monotonic() + 10
    while len(processes.pids()) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    orphans = processes.pids()
    assert len(orphans) == 2
    assert processes.stop(grace=5) == []
    assert not any(Path(f"/proc/{p}").exists() and "sleep" in Path(f"/proc/{p}/cmdline").read_text()
                   for p in orphans)



def test_a_failed_serverapp_fails_the_run_commands(tmp_path, tiny_llama, tiny_corpus):
    # flwr 1.42's `flwr run --stream` exits 0 whatever became of the ServerApp; `fedmedlora
    # deploy` and `fedmedlora run <connection>` ask the SuperLink how the run finished
    # (fedmedlora/deploy/run_status.py). A missing validation folder fails the ServerApp.
    bad = _overrides(tiny_llama, tiny_corpus, tmp_path / "outputs", 1)
    bad["data.server-validation"] = str(tmp_path / "no-such-folder")
    with LoopbackDeployment(REPO, _sites(tiny_corpus), tmp_path / "deploy") as deployment:
        deployment.start()
        code = deployment.run(bad, timeout=600)
        log = (deployment.processes.log_dir / "flwr-run.log").read_text()
        assert code == 1, log[-3000:]
        assert "no-such-folder" in log  # the ServerApp's own error, streamed
        env = {**os.environ, "FLWR_HOME": str(deployment.flwr_home)}
        pairs = [f"--run-config={k}={json.dumps(v)}" for k, v in bad.items()]
        command = [sys.executable, "-m", "fedmedlora.cli", "run", "deploy", "--app", str(REPO), *pairs]
        failed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert failed.returncode == 1, failed.stdout[-3000:] + failed.stderr
        assert "finished:failed" in failed.stderr and "Successfully started run" in failed.stdout
