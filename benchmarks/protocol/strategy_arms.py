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

from benchmarks import claims

from .arms import record_run, run_federated
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


def own_adapter(run: Path, site: str) -> Path:
    """FedSA-LoRA's adapter of `site` (the shared A with the site's own B), as the run saved it."""
    folder = run / "final" / "sites" / site
    if not (folder / "adapter_config.json").is_file():
        found = sorted(p.name for p in (run / "final" / "sites").glob("*")) if (run / "final" / "sites").is_dir() else []
        raise RuntimeError(f"{run}: no adapter of site {site!r} under final/sites/ (found: {found or 'none'})")
    return folder


def run_strategy_arms(bench: Workbench, store: ArmStore, sites: dict[str, Path], out: Path,
                      config: dict[str, Any]) -> dict[str, Any]:
    """Every strategy arm scored on the profile's test sets, each trained only when its scores
    are not in `store` yet; returns the arms' scores."""
    tests = (*TRAINING_SITES, EXTERNAL)
    scores: dict[str, Any] = {}

    def federated(arm: str) -> Path:  # the finished run under --out, or a new (or continued) one
        run = run_federated(arm, {**config, **STRATEGY_ARMS[arm]}, out / "runs")
        record_run(store, arm, run)
        return run

    for arm in STRATEGY_ARMS:
        scores[arm] = store.scores(arm)
        if scores[arm] is None:
            final = federated(arm) / "final"
            scores[arm] = store.save(arm, {t: score(bench, arm, final, t, sites[t], out) for t in tests})
    scores[OWN_B] = store.scores(OWN_B)
    if scores[OWN_B] is None:
        run = federated("fedsa-lora")
        scores[OWN_B] = store.save(OWN_B, {t: score(bench, OWN_B, own_adapter(run, t), t, sites[t], out)
                                           for t in TRAINING_SITES})
    for arm in scores:
        log.info("%s: NER strict F1 %s", arm, ", ".join(
            f"{t} {_value(scores[arm][t])['value']:.3f}" for t in tests if t in scores[arm]))
    return scores


def _value(per_test: dict[str, Any]) -> dict[str, float]:
    measured = per_test["scores"]
    return measured.get(f"{claims.MEASURE}-f1", measured.get(f"{claims.MEASURE}-recall"))


def summary(scores: dict[str, Any], store: ArmStore, resamples: int = 1000) -> dict[str, Any]:
    """Per arm: NER strict F1 (value, low, high) per test set; the paired difference against
    `fedmedlora` over the in-domain sets (F1 points, 95% interval, verdict; as the claims are
    decided); bytes per round; and the aggregation error of every round, as its run recorded them."""
    specs = [claims.ClaimSpec("{a} beats {b}", arm, BASELINE, 0.0, False) for arm in scores if arm != BASELINE]
    paired = {c["a"]: c for c in claims.evaluate_claims(scores, TRAINING_SITES, "", specs, resamples=resamples)}
    out: dict[str, Any] = {}
    for arm, per_test in scores.items():
        entry: dict[str, Any] = {"ner-strict-f1": {t: _value(per_test[t]) for t in per_test}}
        if arm in paired:
            entry[f"minus-{BASELINE}"] = {k: paired[arm][k] for k in ("estimate", "low", "high", "verdict")}
            entry[f"minus-{BASELINE}"]["tests"] = list(TRAINING_SITES)
        run_record = store.scores(f"run/{arm}") or {}
        if "communication" in run_record:
            entry["bytes-per-round"] = run_record["communication"]["bytes-per-round"]
        if "aggregation-error" in run_record:
            entry["aggregation-error"] = run_record["aggregation-error"]
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
