"""The arms: local ones trained by the Workbench, federated ones as real `flwr run`s on
Flower's simulation engine, each scored on its test splits and kept in the ArmStore as soon
as it is scored; and the new low-resource site's arms."""

from __future__ import annotations

import functools
import json
import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.provenance import REPO

from .profiles import EXTERNAL, FEDERATED_ARMS, NEW_SITE, NEW_SITE_ARMS, SKEW_ARMS, TRAINING_SITES, Profile
from .scoring import score
from .sites import SKEW_SITES, prepare_label_skew_sites
from .store import ArmStore
from .workbench import Workbench

log = logging.getLogger("protocol")


def federated_config(profile: Profile, sites_root: Path, out: Path) -> dict[str, Any]:
    return {
        "model.name": profile.model,
        "quantization": profile.quantization,
        "eval.constrained": profile.constrained,
        "data.root": str(sites_root.resolve()),
        "data.sites": ",".join(TRAINING_SITES),
        "data.server-validation": str((sites_root / "maccrobat").resolve()),
        "num-server-rounds": profile.rounds,
        "train.max-steps": profile.steps,
        "train.max-length": profile.max_length,
        "eval.max-instances": profile.round_eval_instances,
        "eval.max-new-tokens": profile.max_new_tokens,
        "output-dir": str(out.resolve()),
    }


def write_wall(run: Path, start: float, start_time: float) -> None:
    """The command's wall time, and its start on the clock the sites' end times use."""
    wall = time.perf_counter() - start
    (run / "wall.json").write_text(json.dumps({"wall-seconds": wall, "start-time": start_time}))


def run_federated(arm: str, config: dict[str, Any], out: Path) -> Path:
    """One federated arm as a real `flwr run` (its SuperLink on free ports: never another run's),
    continued from its last finished round when one exists; returns the run folder."""
    from fedmedlora.local_run import flwr_run
    from server_app.checkpoint import existing_round
    from settings.config import validate

    run = out / arm
    if (run / "summary.json").is_file():
        return run
    out.mkdir(parents=True, exist_ok=True)
    done = existing_round(run)
    overrides = {**config, "run-name": arm, **({"resume": True} if done is not None else {})}
    validate(overrides)
    log.info("%s: %s", arm, f"resuming after round {done}" if done is not None else "running")
    start, start_time = time.perf_counter(), time.time()
    with open(out / f"{arm}.log", "a") as stream:
        code = flwr_run(REPO, out / ".flwr-home", overrides, num_supernodes=len(TRAINING_SITES),
                        stdout=stream)
    if code != 0 or not (run / "summary.json").is_file():
        raise RuntimeError(f"{arm}: flwr run failed (exit {code}); see {out / f'{arm}.log'}")
    if done is None:
        write_wall(run, start, start_time)
    return run


def read_rounds(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def site_speed(run: Path) -> dict[str, float]:
    tokens: dict[str, float] = {}
    seconds: dict[str, float] = {}
    for record in read_rounds(run):
        for site in record.get("sites", []):
            tokens[site["site"]] = tokens.get(site["site"], 0) + site["train"]["train-tokens"]
            seconds[site["site"]] = seconds.get(site["site"], 0) + site["train"]["train-seconds"]
    return {name: tokens[name] / seconds[name] for name in tokens if seconds[name] > 0}


def curves(runs: dict[str, Path]) -> dict[str, list[dict[str, Any]]]:
    keys = ("strict-f1", "lenient-f1", "re-strict-f1", "re-lenient-f1", "val-loss")
    result = {}
    for arm, run in runs.items():
        rows = []
        for record in read_rounds(run):
            sites = [s["evaluate"] for s in record.get("sites", []) if s.get("evaluate")]
            rows.append({"round": record["round"],
                         "coordinator": {k: record["coordinator"][k] for k in keys},
                         "sites": {k: statistics.fmean(s[k] for s in sites) for k in keys} if sites else None})
        result[arm] = rows
    return result


def record_run(store: ArmStore, arm: str, run: Path) -> None:
    """What the report needs from a federated run itself (`run/<arm>`): its per-round curve,
    communication and the sites' training speed; kept once."""
    if store.scores(f"run/{arm}") is not None:
        return
    summary = json.loads((run / "summary.json").read_text())
    communication = dict(summary["communication"])
    communication["bytes-per-round"] = (communication["bytes-up-total"]
                                        + communication["bytes-down-total"]) / summary["rounds"]
    store.save(f"run/{arm}", {"curve": curves({arm: run})[arm], "communication": communication,
                              "site-speed": site_speed(run), "aggregation-error": aggregation_errors(run)})


def aggregation_errors(run: Path) -> list[float | None]:
    """The `aggregation-error` overall of every training round of a run (metrics.jsonl), None
    where a round did not record one."""
    errors = []
    for record in read_rounds(run):
        if record.get("round", 0) == 0:
            continue
        error = (record.get("strategy") or {}).get("aggregation-error")
        errors.append(error.get("overall") if isinstance(error, dict) else None)
    return errors


def run_arms(bench: Workbench, store: ArmStore, sites: dict[str, Path], data: Path, out: Path,
             config: dict[str, Any], per_round: int,
             single_steps: dict[str, int]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Every arm of `bench.profile` scored on its test sets, each trained only when its
    scores are not recorded in `store` yet; then the new site's arms. Returns the arms'
    scores, the new site's, and what each federated run recorded (`run/<arm>`)."""
    profile = bench.profile
    tests = (*TRAINING_SITES, EXTERNAL)
    runs: dict[str, Path] = {}

    def federated(arm: str, keys: dict[str, Any]) -> Path:
        run = runs[arm] = run_federated(arm, {**config, **keys}, out / "runs")
        record_run(store, arm, run)
        return run / "final"

    def pooled() -> list:
        return [e for name in TRAINING_SITES for e in bench.examples(name, sites[name])]

    def single(name: str, steps: int, arm: str) -> Path:
        return bench.train(bench.examples(name, sites[name]), steps, profile.rounds, None,
                           out / "arms" / arm.replace("/", "-") / "adapter")

    arms: dict[str, tuple[Callable[[], Path | None], tuple[str, ...]]] = {"zero-shot": (lambda: None, tests)}
    for name in TRAINING_SITES:
        arms[f"single-{name}"] = (functools.partial(single, name, single_steps[name], f"single-{name}"), tests)
    arms["centralized"] = (lambda: bench.train(pooled(), per_round, profile.rounds, None,
                                               out / "arms" / "centralized" / "adapter"), tests)
    for arm in profile.federated_arms:
        arms[arm] = (functools.partial(federated, arm, FEDERATED_ARMS[arm]), tests)
    if profile.equal_instances_arms and profile.budget == "equal-local-steps":
        for name in TRAINING_SITES:
            arm = f"equal-instances/single-{name}"
            arms[arm] = (functools.partial(single, name, per_round, arm), tests)
    if profile.label_skew:
        prepare_label_skew_sites(data, out)
        for arm, keys in SKEW_ARMS.items():
            arms[arm] = (functools.partial(federated, arm, {**keys, "data.sites": ",".join(SKEW_SITES)}), ("maccrobat",))
    scores: dict[str, dict[str, Any]] = {}
    for arm, (train, arm_tests) in arms.items():
        scores[arm] = store.scores(arm)
        if scores[arm] is None:
            adapter = train()
            scores[arm] = store.save(arm, {test: score(bench, arm, adapter, test, sites[test], out)
                                           for test in arm_tests})

    # New low-resource site: the global adapter comes from the Fed-MedLoRA run (rerun if it
    # is recorded but not under --out).
    from modeling.adapter_io import load_peft_folder

    few = bench.examples(NEW_SITE, sites[NEW_SITE])

    def new_site_training(arm: str, from_global: bool) -> Path:
        start = load_peft_folder(federated("fedmedlora", FEDERATED_ARMS["fedmedlora"])) if from_global else None
        overrides = {"loraplus_lr_ratio": 0.0} if arm.endswith("/plain-lora") else {}
        return bench.train(few, profile.new_site_steps, 1, start,
                           out / "arms" / arm.replace("/", "-") / "adapter", **overrides)

    new_site_adapters: dict[str, Callable[[], Path | None]] = {
        "zero-shot": lambda: None,
        "fedmedlora": lambda: federated("fedmedlora", FEDERATED_ARMS["fedmedlora"]),
        **{arm: functools.partial(new_site_training, arm, arm.startswith("new-site-from-global"))
           for arm in NEW_SITE_ARMS if arm.startswith("new-site-")},
    }
    new_site = {arm: store.scores(f"new-site/{arm}") or store.save(
        f"new-site/{arm}", score(bench, arm, new_site_adapters[arm](), NEW_SITE, sites[NEW_SITE], out))
        for arm in NEW_SITE_ARMS}
    federated_runs = {arm: store.scores(f"run/{arm}") for arm in scores if arm in {**FEDERATED_ARMS, **SKEW_ARMS}}
    return scores, new_site, federated_runs
