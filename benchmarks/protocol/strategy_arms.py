"""The federated-LoRA strategies side by side at a profile's budget (docs/strategies.md,
"Strategies side by side"): `ffa-lora`, `rolora`, `fedsa-lora` and `fedsvd`, beside
`fedmedlora`, `fedmedlora-plus` and `exact`, each one real federated run of the profile's
config (the same sites, steps, seed and training defaults), scored on the same test
sentences. FedSA-LoRA is scored twice: its returned adapter (the shared A with the averaged B,
what a new site gets) and, as `fedsa-lora/own-b`, each site's own adapter on that site's test set.

Opt-in (`--only lora-strategies`): the arms are keys of the profile's arms in results.json,
so a profile recorded without them is unchanged, and `fedmedlora` and `fedmedlora-plus` are
the profile's own runs when it recorded them. The summary (`summary`) holds per arm its NER
strict F1 per test set, the paired difference against `fedmedlora` over the in-domain test
sets, the bytes per round and the aggregation error of every round.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from benchmarks.bootstrap import paired_difference

from .arms import aggregation_errors, record_run, run_federated
from .profiles import EXTERNAL, FEDERATED_ARMS, TRAINING_SITES
from .scoring import score
from .store import ArmStore
from .workbench import Workbench

log = logging.getLogger("protocol")

LORA_LITERATURE_ARMS: dict[str, dict[str, Any]] = {
    name: {"strategy.name": name} for name in ("ffa-lora", "rolora", "fedsa-lora", "fedsvd")
}
STRATEGY_ARMS: dict[str, dict[str, Any]] = {
    **{name: FEDERATED_ARMS[name] for name in ("fedmedlora", "fedmedlora-plus", "exact")},
    **LORA_LITERATURE_ARMS,
}
OWN_B = "fedsa-lora/own-b"
BASELINE = "fedmedlora"
MEASURE = "ner-strict"


def own_adapter(run: Path, site: str) -> Path:
    """FedSA-LoRA's adapter of `site` (the shared A with the site's own B), as the run saved it."""
    folder = run / "final" / "sites" / site
    if not (folder / "adapter_config.json").is_file():
        found = sorted(p.name for p in (run / "final" / "sites").glob("*")) if (run / "final" / "sites").is_dir() else []
        raise RuntimeError(f"{run}: no adapter of site {site!r} under final/sites/ (found: {found or 'none'})")
    return folder


def run_strategy_arms(bench: Workbench, store: ArmStore, sites: dict[str, Path], out: Path,
                      config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Path]]:
    """Every strategy arm scored on the profile's test sets, each trained only when its scores
    are not in `store` yet. Returns the arms' scores and the run folders of those trained or
    found under `out`."""
    tests = (*TRAINING_SITES, EXTERNAL)
    scores: dict[str, Any] = {}
    runs: dict[str, Path] = {}
    for arm, keys in STRATEGY_ARMS.items():
        scores[arm] = store.scores(arm)
        if scores[arm] is None:
            runs[arm] = run_federated(arm, {**config, **keys}, out / "runs")
            record_run(store, arm, runs[arm])
            scores[arm] = store.save(arm, {t: score(bench, arm, runs[arm] / "final", t, sites[t], out) for t in tests})
        elif (out / "runs" / arm / "summary.json").is_file():
            runs[arm] = out / "runs" / arm
    scores[OWN_B] = store.scores(OWN_B)
    if scores[OWN_B] is None:
        run = runs.get("fedsa-lora") or run_federated("fedsa-lora", {**config, **STRATEGY_ARMS["fedsa-lora"]},
                                                      out / "runs")
        runs["fedsa-lora"] = run
        scores[OWN_B] = store.save(OWN_B, {t: score(bench, OWN_B, own_adapter(run, t), t, sites[t], out)
                                           for t in TRAINING_SITES})
    for arm in scores:
        log.info("%s: NER strict F1 %s", arm, ", ".join(
            f"{t} {_value(scores[arm][t])['value']:.3f}" for t in tests if t in scores[arm]))
    return scores, runs


def _value(per_test: dict[str, Any]) -> dict[str, float]:
    measured = per_test["scores"]
    return measured.get(f"{MEASURE}-f1", measured.get(f"{MEASURE}-recall"))


def summary(scores: dict[str, Any], store: ArmStore, runs: dict[str, Path], resamples: int = 1000) -> dict[str, Any]:
    """Per arm: NER strict F1 (value, low, high) per test set; the paired difference against
    `fedmedlora` over the in-domain sets (F1 points, 95% interval); bytes per round; and the
    aggregation error of every round (as the run was recorded, else from the run under --out)."""
    out: dict[str, Any] = {}
    for arm, per_test in scores.items():
        entry: dict[str, Any] = {"ner-strict-f1": {t: _value(per_test[t]) for t in per_test}}
        if arm != BASELINE and all("document-counts" in per_test.get(t, {}) and
                                   "document-counts" in scores[BASELINE].get(t, {}) for t in TRAINING_SITES):
            diff = paired_difference([(_counts(per_test[t]), _counts(scores[BASELINE][t])) for t in TRAINING_SITES],
                                     MEASURE, resamples=resamples)
            entry[f"minus-{BASELINE}"] = {"estimate": diff.value, "low": diff.low, "high": diff.high,
                                          "tests": list(TRAINING_SITES)}
        run_record = store.scores(f"run/{arm}") or {}
        if "communication" in run_record:
            entry["bytes-per-round"] = run_record["communication"]["bytes-per-round"]
        if "aggregation-error" in run_record:
            entry["aggregation-error"] = run_record["aggregation-error"]
        elif arm in runs:  # recorded before runs kept it
            entry["aggregation-error"] = aggregation_errors(runs[arm])
        out[arm] = entry
    return out


def table(arms: dict[str, Any]) -> str:
    """The summary as a markdown table: NER strict F1 per test set, the paired difference
    against fedmedlora and MB per round."""
    tests = (*TRAINING_SITES, EXTERNAL)
    lines = [f"| arm | {' | '.join(tests)} | minus {BASELINE}, in-domain (points) | MB per round |",
             "|---|" + "---:|" * (len(tests) + 2)]
    for arm, entry in arms.items():
        f1 = [f"{entry['ner-strict-f1'][t]['value']:.3f}" if t in entry["ner-strict-f1"] else "-" for t in tests]
        diff = entry.get(f"minus-{BASELINE}")
        paired = f"{diff['estimate']:+.1f} [{diff['low']:+.1f}, {diff['high']:+.1f}]" if diff else "-"
        size = f"{entry['bytes-per-round'] / 1e6:.1f}" if "bytes-per-round" in entry else "-"
        lines.append(f"| {arm} | {' | '.join(f1)} | {paired} | {size} |")
    return "\n".join(lines)


def _counts(per_test: dict[str, Any]):
    import numpy as np

    return np.asarray(per_test["document-counts"], dtype=np.int64)
