"""The single-site arms at each site's own training setting, chosen on its validation split by
the learning-rate sweep (benchmarks/lr_sweep.py, phase `singles`). The profile's single-site
arms train at the app's defaults, which the sweep chose for the federation; a hospital alone
would tune its own rate, so "the federation beats the best single site" is also decided
against these (claims: `family = TUNED_PREFIX`).

Opt-in (`--only tuned-singles --sweep-json docs/benchmarks/lr_sweep_float32.json`): new keys
of the profile's arms (`tuned-rate/single-<site>`), trained with the profile's single-site
steps and scored on the same test sentences; only the learning rate and LoRA+ ratio differ.
The sweep file must have been computed in this machine's dtype, as the arms are.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from benchmarks.lr_sweep import best_arm, comparable_arms

from .profiles import EXTERNAL, TRAINING_SITES, TUNED_PREFIX
from .scoring import score
from .store import ArmStore
from .workbench import Workbench

log = logging.getLogger("protocol")


def chosen_settings(sweep_path: Path, dtype: str) -> dict[str, dict[str, Any]]:
    """Per training site, the sweep's best single-site arm on validation, chosen as the sweep
    chooses its federated setting (lr_sweep.best_arm among lr_sweep.comparable_arms):
    {"arm", "learning-rate", "loraplus-lr-ratio", "validation-f1"}."""
    sweep = json.loads(sweep_path.read_text())
    swept_dtype = sweep.get("settings", {}).get("dtype")
    if swept_dtype != dtype:
        raise SystemExit(f"--sweep-json {sweep_path}: its arms were computed in {swept_dtype}, this machine "
                         f"computes in {dtype}; use the sweep file of this dtype")
    chosen = {}
    for site in TRAINING_SITES:
        candidates = comparable_arms(sweep.get("arms", {}), f"single-{site}/")
        if not candidates:
            raise SystemExit(f"--sweep-json {sweep_path}: no single-site arm of {site!r}; run its `singles` phase "
                             "(python -m benchmarks.lr_sweep ... --phases singles)")
        arm, value = best_arm(candidates)
        chosen[site] = {"arm": arm, "learning-rate": value["setting"]["learning-rate"],
                        "loraplus-lr-ratio": value["setting"]["loraplus-lr-ratio"],
                        "validation-f1": value["mean-ner-strict-f1"]}
    return chosen


def run_tuned_singles(bench: Workbench, store: ArmStore, sites: dict[str, Path], out: Path,
                      single_steps: dict[str, int], chosen: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each site alone at its chosen setting, scored on every test set, trained only when its
    scores are not in `store` yet; returns the arms' scores."""
    tests = (*TRAINING_SITES, EXTERNAL)
    scores: dict[str, Any] = {}
    for site in TRAINING_SITES:
        arm = f"{TUNED_PREFIX}single-{site}"
        scores[arm] = store.scores(arm)
        if scores[arm] is None:
            setting = chosen[site]
            log.info("%s: %s (validation F1 %.3f)", arm, setting["arm"], setting["validation-f1"])
            adapter = bench.train(bench.examples(site, sites[site]), single_steps[site], bench.profile.rounds, None,
                                  out / "arms" / arm.replace("/", "-") / "adapter",
                                  learning_rate=setting["learning-rate"],
                                  loraplus_lr_ratio=setting["loraplus-lr-ratio"])
            scores[arm] = store.save(arm, {t: score(bench, arm, adapter, t, sites[t], out) for t in tests})
    return scores
