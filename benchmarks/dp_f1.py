"""What differential privacy costs in F1: Fed-MedLoRA without DP, at epsilon about 8 and about 1.

Three `flwr run`s on Flower's simulation engine with the protocol's training sites and the
standard profile's training budget (benchmarks/protocol/profiles.py: 3 rounds x 24 steps per site),
differing only in `strategy.dp`:

- `no-dp`: plain Fed-MedLoRA;
- `dp-eps8`, `dp-eps1`: Flower's server-side fixed clipping (`strategy.dp = "server-fixed"`),
  every site sampled every round, the noise multiplier that spends epsilon 8 (resp. 1) at
  delta 1e-5 in 3 rounds towards the largest site: the equal-weight multiplier
  (strategies/dp_budget.py: z = 1.105, 7.008) times sites x the no-DP run's largest site
  weight, since Fed-MedLoRA weighs by size; and a clipping norm equal to the L2 norm of the
  no-DP run's first-round global update (its adapter after round 1 minus its initial
  adapter), so clipping alone leaves an average update untouched. Arms recorded with
  another multiplier than this calibration gives are run again.

Each final adapter is scored on the three in-domain test sets, `--test-instances` per set
(60 by default, half the standard profile's 120: a stated smaller evaluation to keep the
benchmark near 40 minutes on 2 cores), with paired document-level bootstrap differences to
no-DP. Every finished arm is written to `--out` at once and skipped when the command is run
again. `--set rounds=1 --set steps=2` makes a smoke test.

    .venv/bin/python -m benchmarks.dp_f1 --data data --work outputs/dp-f1 --out docs/benchmarks/dp_f1.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks.bootstrap import paired_difference
from benchmarks.protocol.arms import federated_config, run_federated
from benchmarks.protocol.profiles import PROFILES, TRAINING_SITES
from benchmarks.protocol.scoring import score
from benchmarks.protocol.sites import prepare_sites
from benchmarks.protocol.workbench import Workbench
from benchmarks.provenance import REPO, command, machine, repo_relative
from fedmedlora.memorisation import first_update_norm, largest_weight, noise_for

log = logging.getLogger("dp_f1")

TARGETS = {"dp-eps8": 8.0, "dp-eps1": 1.0}
DELTA = 1e-5


def paired(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
    """Mean over the test sets of NER strict F1, a minus b, in points, with the paired
    document-level bootstrap interval (benchmarks/bootstrap.py)."""
    import numpy as np

    pairs = [(np.asarray(a[t]["document-counts"]), np.asarray(b[t]["document-counts"])) for t in TRAINING_SITES]
    diff = paired_difference(pairs, "ner-strict")
    return {"estimate": diff.value, "low": diff.low, "high": diff.high}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder of the prepared site folders")
    parser.add_argument("--work", type=Path, default=REPO / "outputs" / "dp-f1",
                        help="runs, adapters and generated outputs (reused when run again)")
    parser.add_argument("--out", type=Path, required=True, help="the results JSON, written after every arm")
    parser.add_argument("--test-instances", type=int, default=60)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="change a profile field (rounds, steps) for a smoke test")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    profile = replace(PROFILES["standard"], test_instances=args.test_instances)
    for item in args.set:
        field, _, value = item.partition("=")
        if field not in ("rounds", "steps"):
            parser.error(f"--set {item!r}: only rounds and steps can be changed")
        profile = replace(profile, **{field: int(value)})
    work = args.work.resolve()
    settings = {"rounds": profile.rounds, "steps": profile.steps, "test-instances": profile.test_instances,
                "model": profile.model, "delta": DELTA, "data": repo_relative(args.data)}
    results: dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {}
    if results.get("settings") not in (None, settings):
        raise SystemExit(f"{args.out}: made with other settings ({results['settings']}); move it away to start again")
    results["settings"] = settings
    results.setdefault("arms", {})
    results["command"] = command("benchmarks.dp_f1")
    results["machine"] = machine()

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")

    sites = prepare_sites(args.data.resolve(), work, profile.new_site_documents)
    config = {**federated_config(profile, work / "sites", work / "runs"), "strategy.name": "fedmedlora"}
    bench = Workbench(profile)
    for arm in ("no-dp", *TARGETS):
        keys: dict[str, Any] = {}
        if arm in TARGETS:
            # The weighted mean moves by max(w) x C for one site; Flower's noise is z x C / n.
            scale = len(TRAINING_SITES) * results["largest-weight"]
            z = math.ceil(noise_for(TARGETS[arm], profile.rounds, DELTA) * scale * 1000) / 1000
            keys = {"strategy.dp": "server-fixed", "strategy.dp-noise-multiplier": z,
                    "strategy.dp-clipping-norm": results["clipping-norm"],
                    "strategy.dp-num-sampled-sites": len(TRAINING_SITES), "strategy.dp-delta": DELTA}
        recorded = results["arms"].get(arm)
        if recorded is not None and recorded.get("settings") == keys and (arm != "no-dp" or "largest-weight" in results):
            continue
        if recorded is not None and recorded.get("settings") != keys and (work / "runs" / arm).exists():
            log.info("%s: recorded with other DP settings; its run is made again", arm)
            shutil.rmtree(work / "runs" / arm)
        start = time.perf_counter()
        run = run_federated(arm, {**config, **keys}, work / "runs")
        train_seconds = time.perf_counter() - start
        summary = json.loads((run / "summary.json").read_text())
        scores = {test: score(bench, arm, run / "final", test, sites[test], work)
                  for test in TRAINING_SITES}
        results["arms"][arm] = {"settings": keys, "dp": summary.get("dp"), "scores": scores,
                                "run-seconds": round(train_seconds, 1),
                                "seconds": round(time.perf_counter() - start, 1)}
        if arm == "no-dp":
            results["clipping-norm"] = round(first_update_norm(run, bench.initial), 4)
            results["largest-weight"] = round(largest_weight(run), 4)
        save()
        log.info("%s done", arm)
    rows = []
    for arm, entry in results["arms"].items():
        f1 = {t: entry["scores"][t]["scores"]["ner-strict-f1"]["value"] for t in TRAINING_SITES}
        entry["difference-to-no-dp"] = None if arm == "no-dp" else paired(entry["scores"], results["arms"]["no-dp"]["scores"])
        rows.append((arm, entry.get("dp"), f1, entry["difference-to-no-dp"]))
    save()
    for arm, dp, f1, diff in rows:
        eps = "-" if not dp else f"{dp['epsilon']:.2f}"
        cells = " ".join(f"{t}={v:.3f}" for t, v in f1.items())
        change = "" if diff is None else f" diff={diff['estimate']:+.1f} [{diff['low']:+.1f}, {diff['high']:+.1f}]"
        noise = ""
        if dp:  # Gaussian noise per adapter value and over the whole adapter, against the clipping norm
            std = dp["noise-multiplier"] * results["clipping-norm"] / len(TRAINING_SITES)
            norm = std * math.sqrt(sum(v.size for v in bench.initial.values()))
            noise = f" noise-std={std:.2f} noise-norm={norm:.0f} ({norm / results['clipping-norm']:.0f}x the clipping norm)"
        print(f"{arm}: epsilon={eps} {cells}{change}{noise}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
