"""The Docker Compose demo for real: scripts/compose_demo.sh on a Docker engine, plain and with
TLS and SuperNode authentication, 1 round; a failed ServerApp fails the script.

The compose tier: ./scripts/test_compose.sh starts the engine, makes the base image where no
registry answers, and runs this module with FEDMEDLORA_COMPOSE_TEST=1 (skipped otherwise).
The figures it prints (time, peak memory of the containers) are the README's."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest

from support.compose_demo import DEMO_RUN_CONFIG
from support.paths import REPO

pytestmark = [
    pytest.mark.compose,
    pytest.mark.skipif(os.environ.get("FEDMEDLORA_COMPOSE_TEST") != "1",
                       reason="the compose tier: ./scripts/test_compose.sh (needs a Docker engine)"),
]

PROJECT = "fedmedlora"
SITES = ["hospital-a", "hospital-b", "hospital-c"]
_UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "kB": 1e3, "MB": 1e6, "GB": 1e9}


def _docker(*args: str) -> str:
    return subprocess.run(["docker", *args], check=True, capture_output=True, text=True, timeout=120).stdout


def _bytes(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)\s*([A-Za-z]+)", text.strip()).groups()
    return float(number) * _UNITS[unit]


class MemorySampler(threading.Thread):
    """The largest sum of the containers' memory (`docker stats`), sampled every few seconds."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_total = 0.0
        self.peak_each: dict[str, float] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                lines = _docker("stats", "--no-stream", "--format", "{{.Name}}\t{{.MemUsage}}").splitlines()
            except subprocess.SubprocessError:
                lines = []
            # a container being created or removed shows as "--"
            usage = {name: _bytes(mem.split("/")[0]) for name, mem in (line.split("\t") for line in lines if line)
                     if name.startswith(PROJECT)}
            self.peak_total = max(self.peak_total, sum(usage.values()))
            for name, used in usage.items():
                self.peak_each[name] = max(self.peak_each.get(name, 0.0), used)
            self.done.wait(3.0)


def _demo(tls: bool, run_config: list[str], log: Path) -> tuple[int, float, MemorySampler]:
    command = ["bash", "scripts/compose_demo.sh", *(["--tls"] if tls else []), *run_config]
    sampler = MemorySampler()
    sampler.start()
    started = time.monotonic()
    with open(log, "w") as out:
        code = subprocess.run(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, timeout=1800).returncode
    seconds = time.monotonic() - started
    sampler.done.set()
    sampler.join()
    return code, seconds, sampler


def _nothing_left() -> None:
    containers = _docker("ps", "-a", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}").split()
    assert containers == [], f"containers left after the demo: {containers}"
    volumes = _docker("volume", "ls", "-q").split()
    assert [v for v in volumes if v != f"{PROJECT}_model-cache"] == [], f"volumes leaked: {volumes}"
    networks = [n for n in _docker("network", "ls", "--format", "{{.Name}}").split() if n.startswith(PROJECT)]
    assert networks == [], networks


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_compose_demo_trains_every_site_and_writes_a_peft_adapter(tls, tmp_path, capsys):
    run_name = f"compose-{'tls' if tls else 'plain'}-{time.strftime('%Y%m%d-%H%M%S')}"
    log = tmp_path / "demo.log"
    code, seconds, memory = _demo(tls, [*DEMO_RUN_CONFIG, f"run-name={run_name}"], log)
    text = log.read_text(errors="replace")
    assert code == 0, text[-4000:]
    with capsys.disabled():  # the README's figures, shown also when the test passes
        print(f"\ncompose demo ({'TLS' if tls else 'plain'}): {seconds:.0f} s from build to down; peak memory "
              f"{memory.peak_total / 2**30:.1f} GiB in all, per container "
              + ", ".join(f"{n} {b / 2**30:.2f}" for n, b in sorted(memory.peak_each.items())))
        print("\n".join(line for line in text.splitlines() if line.startswith("[compose demo]")))
        print(_docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}} {{.Size}}", "fedmedlora").strip())

    run_dir = REPO / "deploy" / "outputs" / run_name
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from modeling.base import resolve_model_path

    # the adapter names the container's copy of the model; the same embedded model is here
    base = AutoModelForCausalLM.from_pretrained(resolve_model_path("embedded:smollm2-135m-instruct"))
    adapter = PeftModel.from_pretrained(base, run_dir / "final")
    assert adapter.peft_config["default"].r == 16
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [0, 1]
    trained = {s["site"]: s["train"] for s in records[1]["sites"]}
    assert sorted(trained) == SITES, trained
    assert all(t["train-steps"] == 4 and t["train-seconds"] > 0 for t in trained.values()), trained
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary, "summary.json is written"
    _nothing_left()


def test_a_failed_serverapp_fails_the_demo(tmp_path):
    log = tmp_path / "demo.log"
    code, _, _ = _demo(False, [*DEMO_RUN_CONFIG, "data.server-validation='/data/nowhere'"], log)
    text = log.read_text(errors="replace")
    assert code == 1, text[-4000:]
    assert "finished:failed" in text and "/data/nowhere" in text, text[-4000:]
    _nothing_left()
