"""A hospital runs only what it reviewed: the app versions listed in its node config's
`approved-apps` (checked by `fedmedlora site-exec` before any of the app's code runs; a real
loopback deployment), and the base model of its `base-model` (checked before anything the run
names is loaded)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, MessageType, RecordDict

from fedmedlora.deploy import LoopbackDeployment, Site
from support.deployment import _overrides, _processes_of, copy_app
from support.messages import instruction
from support.paths import REPO
from wire import protocol

MARKER = "changed-app-ran"
_FUTURE = "from __future__ import annotations\n"
# Added to the changed copy's ClientApp module: importing it leaves a file in the process's
# working directory, the site's folder.
_MARKER_CODE = f'\nimport pathlib\n\npathlib.Path("{MARKER}").write_text("the changed ClientApp was imported here\\n")\n'


@pytest.mark.e2e
def test_a_site_refuses_an_app_it_did_not_approve_before_its_code_runs(tmp_path, tiny_llama, tiny_corpus):
    from fedmedlora.app_pin import app_digest

    approved = copy_app(tmp_path / "approved" / "app")
    changed = copy_app(tmp_path / "changed" / "app")
    module = changed / "client_app" / "app.py"
    module.write_text(module.read_text().replace(_FUTURE, _FUTURE + _MARKER_CODE, 1))
    digest, changed_digest = app_digest(approved), app_digest(changed)
    assert changed_digest != digest
    # hospital-a reviewed `approved` and pins it, and the model it trains; hospital-b pins nothing
    sites = [Site("hospital-a", tiny_corpus / "site-a", approved_apps=(digest,), base_model=str(tiny_llama)),
             Site("hospital-b", tiny_corpus / "site-b")]
    overrides = {**_overrides(tiny_llama, tiny_corpus, tmp_path / "outputs", 1), "strategy.min-sites": 2}
    workdir = tmp_path / "deploy"
    with LoopbackDeployment(approved, sites, workdir) as deployment:
        deployment.start()
        run_log = deployment.processes.log_dir / "flwr-run.log"
        code = deployment.run({**overrides, "run-name": "changed"}, timeout=600, app_dir=changed)
        log = run_log.read_text(errors="replace")
        assert code == 1, log[-3000:]
        # the coordinator sees the refusal, with the digest the site received
        assert f"site hospital-a refuses app sha256 {changed_digest}" in log, log[-3000:]
        assert not (workdir / "sites" / "hospital-a" / MARKER).exists(), "the changed app's code ran at hospital-a"
        assert (workdir / "sites" / "hospital-b" / MARKER).exists(), "where nothing is pinned, the changed app runs"

        seen = len(log)
        code = deployment.run({**overrides, "run-name": "approved"}, timeout=600)
        log = run_log.read_text(errors="replace")[seen:]
        assert code == 0, log[-3000:]
        executor = (deployment.processes.log_dir / "superexec-clientapp-hospital-a.log").read_text()
        assert executor.splitlines()[0].split()[2:4] == ["site-exec", "--runtime-api-address"]
        # Flower installs a FAB under its digest's first 8 digits: hospital-a never installed the changed one
        installed = [p.name for p in (workdir / "sites" / "hospital-a" / "superexec-home" / "apps").iterdir()]
        assert [name.rsplit(".", 1)[1] for name in installed] == [digest[:8]], installed
    assert deployment.processes.pids() == [] and _processes_of(workdir) == []
    records = [json.loads(line) for line in (tmp_path / "outputs" / "approved" / "metrics.jsonl").read_text().splitlines()]
    assert sorted(s["site"] for s in records[1]["sites"]) == ["hospital-a", "hospital-b"]


def test_a_site_that_pins_its_base_model_refuses_another_before_loading_it(tiny_llama, tiny_qwen2, tiny_corpus):
    from client_app import runtime
    from client_app.app import SiteFailure, app
    from modeling.adapter_io import get_adapter_state
    from settings.config import validate
    from wire.arrays import to_arrayrecord

    # a well-formed round 1 of a run on tiny_qwen2, which a site without a pin trains
    cfg = validate({"model.name": str(tiny_qwen2), "lora.r": 4, "lora.alpha": 8, "train.max-steps": 2,
                    "train.batch-size": 2, "eval.max-instances": 3, "data.root": str(tiny_corpus)})
    theirs = runtime.model_runtime(cfg)
    content = RecordDict({protocol.ARRAYS: to_arrayrecord(get_adapter_state(theirs.model)),
                          protocol.CONFIG: ConfigRecord({**protocol.base_config(theirs.identity, cfg.lora_settings(), 1),
                                                         "server-round": 1})})
    runtime._models.clear()  # the loader's cache: filled again only if the model is loaded

    pinned = {"partition-id": 0, "base-model": str(tiny_llama)}
    context = Context(run_id=1, node_id=1, node_config=pinned, state=RecordDict(), run_config=cfg.as_dict())
    with pytest.raises(SiteFailure, match=f"BaseModelMismatch: .*pins base-model '{tiny_llama}'.*{tiny_qwen2}"):
        app(instruction(1, MessageType.TRAIN, content), context)
    assert runtime._models == {}, "the model the run named was loaded"

    # the same path spelt another way is the same model
    context.node_config = {"partition-id": 0, "base-model": f"{tiny_qwen2}/."}
    reply = app(instruction(1, MessageType.TRAIN, content), context)
    assert reply.has_content() and list(runtime._models) and next(iter(runtime._models))[0] == str(tiny_qwen2)


def test_a_pinned_site_without_site_exec_refuses_to_run(monkeypatch):
    """approved-apps with Flower's own executor would check nothing: the app says so."""
    from client_app.app import SiteFailure, app

    monkeypatch.delenv("FEDMEDLORA_APPROVED_APP", raising=False)
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 0, "approved-apps": "0" * 64},
                      state=RecordDict(), run_config={})
    with pytest.raises(SiteFailure, match="not started by `fedmedlora site-exec`"):
        app(instruction(1, MessageType.TRAIN), context)


def test_check_app_approves_listed_digests_only():
    from fedmedlora.app_pin import AppNotApproved, check_app

    content = b"a FAB's bytes"
    digest = hashlib.sha256(content).hexdigest()
    assert check_app(content, {"approved-apps": f"{'0' * 64}, {digest.upper()}"}) == digest
    with pytest.raises(AppNotApproved, match=f"site hospital-a refuses app sha256 {digest}"):
        check_app(content, {"approved-apps": "0" * 64, "site-name": "hospital-a"})
    with pytest.raises(AppNotApproved, match="0 approved"):
        check_app(content, {"approved-apps": ""})
    with pytest.raises(AppNotApproved, match="node config has no approved-apps"):
        check_app(content, {"site-name": "hospital-a"})
    with pytest.raises(AppNotApproved, match="approved-apps: 'abc' is not a SHA-256 digest"):
        check_app(content, {"approved-apps": "abc"})
    with pytest.raises(ValueError, match="approved-apps: 'abc' is not a SHA-256 digest"):
        Site("hospital-a", REPO, approved_apps=("abc",))


def test_app_digest_is_the_digest_of_flwr_builds_fab(tmp_path):
    """The FAB `flwr build` (and `flwr run`, the same function) makes of a folder is
    byte-identical to the one `fedmedlora app-digest` hashes."""
    flwr = Path(sys.executable).parent / "flwr"
    built = subprocess.run([str(flwr), "build", "--app", str(REPO)], cwd=tmp_path, capture_output=True, text=True,
                           timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    (fab,) = tmp_path.glob("*.fab")
    digest = hashlib.sha256(fab.read_bytes()).hexdigest()
    assert fab.name.split(".")[-2] == digest[:8]
    command = [sys.executable, "-m", "fedmedlora.cli", "app-digest"]
    for target in (REPO, fab):
        printed = subprocess.run([*command, str(target)], capture_output=True, text=True, timeout=300)
        assert printed.returncode == 0 and printed.stdout.strip() == digest, printed.stdout + printed.stderr


def test_deploy_pins_the_app_it_runs_and_its_model(tiny_corpus):
    from fedmedlora.app_pin import app_digest
    from fedmedlora.deploy import pin_sites

    sites = [Site("hospital-a", tiny_corpus / "site-a"),
             Site("hospital-b", tiny_corpus / "site-b", approved_apps=("0" * 64,), base_model="/models/own")]
    ours, theirs = pin_sites(sites, REPO, {})
    assert ours.approved_apps == (app_digest(REPO),) and ours.base_model == "embedded:smollm2-135m-instruct"
    assert theirs == sites[1]  # a site's own pins stand
    assert pin_sites(sites, REPO, {"model.name": "/models/x"})[0].base_model == "/models/x"
