"""Strict/lenient F1 per round of every aggregation strategy on the same federated run.

Each arm is one real `flwr run` (Flower's simulation engine, as `fedmedlora simulate`
starts it) with the same sites, data, seed and training budget; only the strategy keys
differ. After the runs the script reads each run's `metrics.jsonl` and prints, per strategy
and round, the F1 of the global adapter on the coordinator's validation instances and on
every site's validation instances (mean over sites), for entities and relations.

    .venv/bin/python -m benchmarks.strategies_f1 --data data --sites maccrobat,chia,ddi \\
        --server-validation data/maccrobat

A finished run is not run again (its `summary.json` exists): rerun the same command after
an interruption and only the missing arms run, an interrupted one continued from its last
finished round (`resume = true`; its wall time is then not reported). `--only` picks arms; `--set key=value`
adds run-config keys to every arm. Writes `strategies.md` and `strategies.json` into the
output folder.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks.provenance import REPO, command, machine
from fedmedlora.cli import _parse_value
from fedmedlora.local_run import flwr_run
from server_app.checkpoint import existing_round
from settings.config import validate

# Arm name -> run-config keys. A default that would make an arm identical to plain FedAvg
# is changed to the value its paper uses (FedProx mu 0.01); the server optimisers run at
# their defaults, which the sweep below chose.
# The order is the order they run in: the paper's strategies first.
ARMS: dict[str, dict[str, Any]] = {
    "fedmedlora": {"strategy.name": "fedmedlora"},
    # The coordinator scores each candidate on as many instances as the sites score in total.
    "fedmedlora-plus": {"strategy.name": "fedmedlora-plus", "strategy.validation-instances": 48},
    "fedmedlora-plus-sites": {"strategy.name": "fedmedlora-plus", "strategy.validation": "sites"},
    "exact": {"strategy.name": "exact"},
    "fedprox": {"strategy.name": "fedprox", "strategy.proximal-mu": 0.01},
    "fedadam": {"strategy.name": "fedadam"},
    "krum": {"strategy.name": "krum"},
    "fedmedian": {"strategy.name": "fedmedian"},
    "fedavgm": {"strategy.name": "fedavgm"},
    "fedyogi": {"strategy.name": "fedyogi"},
    "fedtrimmedavg": {"strategy.name": "fedtrimmedavg"},
}

# The sweep that chose the server-optimizer defaults (docs/strategies.md, "Server-optimizer
# defaults"): each value around the default, at the same budget as ARMS. Run them with
# `--only` (they are not part of the default list); the arms above use the chosen defaults.
SERVER_OPTIMIZER_SWEEP: dict[str, dict[str, Any]] = {
    **{f"fedadam-eta-{eta:g}": {"strategy.name": "fedadam", "strategy.server-learning-rate": eta}
       for eta in (1e-3, 3e-3, 5e-3, 1e-2)},
    **{f"fedyogi-eta-{eta:g}": {"strategy.name": "fedyogi", "strategy.server-learning-rate": eta}
       for eta in (1e-3, 3e-3, 5e-3, 1e-2)},
    **{f"fedavgm-lr-{lr:g}-momentum-{m:g}": {"strategy.name": "fedavgm", "strategy.server-learning-rate": lr,
                                            "strategy.server-momentum": m}
       for lr, m in ((1.0, 0.9), (0.5, 0.9), (1.0, 0.5))},
}
KNOWN_ARMS = {**ARMS, **SERVER_OPTIMIZER_SWEEP}

F1_KEYS = ("strict-f1", "lenient-f1", "re-strict-f1", "re-lenient-f1")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder of prepared site folders")
    parser.add_argument("--sites", default="maccrobat,chia,ddi")
    parser.add_argument("--server-validation", type=Path, required=True, help="coordinator's validation folder")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8, help="train.max-steps per site and round")
    parser.add_argument("--eval-instances", type=int, default=16, help="eval.max-instances per site and round")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--only", default="", help="comma-separated arms (default: all of " + ",".join(ARMS)
                        + "; the sweep arms are " + ",".join(SERVER_OPTIMIZER_SWEEP) + ")")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="run-config key for every arm")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "strategies")
    parser.add_argument("--results", type=Path, default=None,
                        help="a committed JSON of finished arms (docs/benchmarks/strategies.json): each arm is "
                             "recorded there as it finishes, and an arm recorded with the same config is not run again")
    args = parser.parse_args()

    arms = [a.strip() for a in args.only.split(",") if a.strip()] or list(ARMS)
    unknown = [a for a in arms if a not in KNOWN_ARMS]
    if unknown:
        parser.error(f"--only: unknown arm(s) {unknown}; known: {list(KNOWN_ARMS)}")
    common: dict[str, Any] = {
        "data.root": str(args.data.resolve()),
        "data.sites": args.sites,
        "data.server-validation": str(args.server_validation.resolve()),
        "num-server-rounds": args.rounds,
        "train.max-steps": args.steps,
        "train.max-length": args.max_length,
        "eval.max-instances": args.eval_instances,
        "output-dir": str(args.out.resolve()),
    }
    for pair in args.set:
        key, sep, value = pair.partition("=")
        if not sep:
            parser.error(f"--set {pair!r}: expected key=value")
        common[key.strip()] = _parse_value(value.strip())
    for arm in arms:
        validate({**common, **KNOWN_ARMS[arm]})  # every arm's config is checked before any runs

    args.out.mkdir(parents=True, exist_ok=True)
    walls: dict[str, float | None] = {}
    runs: dict[str, Path] = {}
    recorded = json.loads(args.results.read_text()) if args.results and args.results.is_file() else {}

    def record(arm: str) -> None:
        """A finished arm goes to the results file at once, so a later run (another checkout) goes on."""
        result = read_run(runs[arm])
        if args.results and result is not None:
            recorded[arm] = {"config": portable_config(arm, common), "wall-seconds": walls[arm], "result": result}
            args.results.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")

    for arm in arms:
        run = runs[arm] = args.out / arm
        if recorded.get(arm, {}).get("config") == portable_config(arm, common):
            print(f"{arm}: recorded in {args.results}, not run again", flush=True)
            walls[arm] = recorded[arm]["wall-seconds"]
            continue
        twin = same_run_config(arm, common, args.out)
        if not (run / "summary.json").exists() and twin is not None:
            print(f"{arm}: the same run config as {twin} (defaults filled in), reusing {args.out / twin}", flush=True)
            runs[arm], walls[arm] = args.out / twin, None
            record(arm)
            continue
        if (run / "summary.json").exists():
            print(f"{arm}: finished earlier, reusing {run}", flush=True)
            walls[arm] = None
            record(arm)
            continue
        done = existing_round(run)  # an interrupted run continues from its checkpoint
        resume = {"resume": True} if done is not None else {}
        print(f"{arm}: {'resuming after round ' + str(done) if resume else 'running'} ({run})", flush=True)
        start = time.perf_counter()
        with open(args.out / f"{arm}.log", "a" if resume else "w") as log:
            code = flwr_run(REPO, args.out / ".flwr-home", {**common, **KNOWN_ARMS[arm], "run-name": arm, **resume},
                            num_supernodes=len(args.sites.split(",")), stdout=log)
        wall = time.perf_counter() - start
        walls[arm] = None if resume else wall  # a continued run's wall is not the whole run's
        status = "ok" if code == 0 and (run / "summary.json").exists() else f"FAILED (exit {code})"
        print(f"{arm}: {status} in {wall:.0f} s; log {args.out / f'{arm}.log'}", flush=True)
        record(arm)

    results = {arm: recorded[arm]["result"] if arm in recorded else read_run(runs[arm]) for arm in arms}
    command_line = command("benchmarks.strategies_f1")
    table = markdown(results, command_line, common)
    (args.out / "strategies.md").write_text(table)
    (args.out / "strategies.json").write_text(json.dumps(
        {"command": command_line, "machine": machine(), "run-config": common, "arms": {a: KNOWN_ARMS[a] for a in arms}, "wall-seconds": walls, "results": results},
        indent=2, sort_keys=True))
    print(table)
    return 0 if all(r is not None for r in results.values()) else 1


def effective_config(keys: dict[str, Any], common: dict[str, Any]) -> dict[str, Any]:
    """An arm's full run config with every default filled in, the server step resolved."""
    from strategies.flower import DEFAULT_SERVER_LR

    values = validate({**common, **keys}).as_dict()
    name = values["strategy.name"]
    if name in DEFAULT_SERVER_LR and not values["strategy.server-learning-rate"]:
        values["strategy.server-learning-rate"] = DEFAULT_SERVER_LR[name]
    return values


def portable_config(arm: str, common: dict[str, Any]) -> dict[str, Any]:
    """`arm`'s effective config without this checkout's paths: what a recorded arm must match."""
    return {k: v for k, v in effective_config(KNOWN_ARMS[arm], common).items()
            if k not in ("data.root", "data.server-validation", "output-dir")}


def same_run_config(arm: str, common: dict[str, Any], out: Path) -> str | None:
    """Another arm with a finished run in `out` whose effective config equals `arm`'s: a
    strategy at its default is the sweep arm at the same values, and is not run twice."""
    mine = effective_config(KNOWN_ARMS[arm], common)
    for other, keys in KNOWN_ARMS.items():
        if other != arm and (out / other / "summary.json").exists() and effective_config(keys, common) == mine:
            return other
    return None


def read_run(run: Path) -> dict[str, Any] | None:
    """Per round: coordinator F1, mean site F1, validation loss, elapsed seconds."""
    path = run / "metrics.jsonl"
    if not (run / "summary.json").exists() or not path.exists():
        return None
    rounds = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        sites = [s["evaluate"] for s in record.get("sites", []) if s.get("evaluate")]
        rounds.append({
            "round": record["round"],
            "coordinator": {k: record["coordinator"][k] for k in (*F1_KEYS, "val-loss")},
            "sites-mean": {k: statistics.fmean(s[k] for s in sites) for k in (*F1_KEYS, "val-loss")} if sites else None,
            "weights": {s["site"]: s["weight"] for s in record.get("sites", [])},
            "rejected": record.get("rejected", []),
            "elapsed-seconds": record["elapsed-seconds"],
        })
    return {"rounds": rounds}


def last_round_table(results: dict[str, Any]) -> list[str]:
    """One row per arm: the global adapter after the last round, the figures a sweep compares."""
    lines = [
        "After the last round:",
        "",
        "| strategy | sites val-loss | sites NER strict / lenient | coordinator NER strict / lenient | elapsed s |",
        "|---|---:|---|---|---:|",
    ]
    for arm, result in results.items():
        if result is None:
            lines.append(f"| {arm} | run missing or failed | | | |")
            continue
        last = result["rounds"][-1]
        cells = _cells(last)
        lines.append(f"| {arm} | {cells['loss']} | {cells['sites']} | {cells['coordinator']} "
                     f"| {last['elapsed-seconds']:.0f} |")
    return lines


def _cells(r: dict[str, Any]) -> dict[str, str]:
    """One round's F1 and loss, formatted for the tables."""
    c, s = r["coordinator"], r["sites-mean"]
    return {"coordinator": f"{c['strict-f1']:.3f} / {c['lenient-f1']:.3f}",
            "sites": f"{s['strict-f1']:.3f} / {s['lenient-f1']:.3f}" if s else "-",
            "sites-re": f"{s['re-strict-f1']:.3f} / {s['re-lenient-f1']:.3f}" if s else "-",
            "loss": f"{s['val-loss']:.3f}" if s else "-"}


def markdown(results: dict[str, Any], command_line: str, common: dict[str, Any]) -> str:
    lines = [
        "# Strategies side by side",
        "",
        f"Command: `{command_line}`",
        f"Machine: {machine()}",
        f"Budget per arm: {common['num-server-rounds']} rounds x {common['train.max-steps']} steps per site; "
        f"F1 on {common['eval.max-instances']} validation instances per site and at the coordinator each round.",
        "",
        *last_round_table(results),
        "",
        "Every round:",
        "",
        "| strategy | round | coordinator NER strict / lenient | sites NER strict / lenient | sites RE strict / lenient | sites val-loss | weights | elapsed s |",
        "|---|---:|---|---|---|---:|---|---:|",
    ]
    for arm, result in results.items():
        if result is None:
            lines.append(f"| {arm} | - | run missing or failed | | | | | |")
            continue
        for r in result["rounds"]:
            cells = _cells(r)
            weights = ", ".join(f"{k} {v:.2f}" for k, v in sorted(r["weights"].items())) or "-"
            lines.append(f"| {arm} | {r['round']} | {cells['coordinator']} | {cells['sites']} | {cells['sites-re']} "
                         f"| {cells['loss']} | {weights} | {r['elapsed-seconds']:.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
