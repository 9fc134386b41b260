"""The protocol benchmark's command line (`python -m benchmarks.protocol`) and the profile
driver: it checks `--out` and the recorded settings, then runs one of the modes (a whole
profile, `--only overhead`, `--report-only`, `--refresh-counts`, `--claims-so-far`)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from benchmarks import protocol as package  # its docstring describes the protocol
from benchmarks.provenance import REPO, command, machine, repo_relative
from modeling.training import TrainSettings

from .arms import federated_config, run_arms
from .overhead import measure_overheads, only_overhead
from .profiles import BUDGETS, ENCODING_ARMS, FEDERATED_ARMS, PROFILES, TRAINING_SITES, Profile, single_site_steps
from .report import add_claims, claims_so_far, federated_gap, plot_curves, token_arms_table, write_report
from .scoring import refresh_counts, scored, test_instances
from .sites import prepare_sites
from .store import ArmStore, compact_json
from .workbench import Workbench, steps_per_round

COMMAND = "benchmarks.protocol"  # what results record as their command: python -m benchmarks.protocol ...


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.protocol",
                                     description=package.__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument("--data", type=Path, required=True, help="folder of the prepared site folders")
    parser.add_argument("--model", help="model.name (default: the profile's)")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "protocol")
    parser.add_argument("--results", type=Path,
                        help="also write RESULTS.md here (e.g. docs/RESULTS.md), results.json and plots/ beside it")
    parser.add_argument("--before-runs", type=Path, default=None,
                        help="with --only overhead: the runs folder of an earlier --only overhead measurement; "
                             "`before` is recomputed from its runs without site workers and in simulation")
    parser.add_argument("--overhead-json", type=Path, default=None,
                        help="with --only overhead: write before/after figures here (docs/benchmarks/overhead.json)")
    parser.add_argument("--only", choices=["overhead", "token-classification", "lora-strategies", "tuned-singles"],
                        help="overhead: measure only the federation overhead, before and after the warm site; with "
                             "--results, write its section there. token-classification: train and score only the "
                             "token-classification arms (kept in --results' profile beside the others), then print "
                             "them and the claims the recorded arms decide. lora-strategies: the federated-LoRA "
                             "strategies side by side (ffa-lora, rolora, fedsa-lora, fedsvd beside fedmedlora, "
                             "fedmedlora-plus and exact; kept in --results' profile), then their paired differences "
                             "against fedmedlora (with --strategies-json, written there). tuned-singles: each "
                             "single site at its own validation-chosen setting from --sweep-json (kept in --results' "
                             "profile), then the claims the recorded arms decide")
    parser.add_argument("--strategies-json", type=Path, default=None,
                        help="with --only lora-strategies: write the side-by-side summary into this JSON under "
                             "'<profile>-budget' (docs/benchmarks/strategies.json), keeping its other keys")
    parser.add_argument("--sweep-json", type=Path, default=None,
                        help="with --only tuned-singles: the learning-rate sweep whose single-site arms choose each "
                             "site's setting (docs/benchmarks/lr_sweep_float32.json), computed in this machine's dtype")
    parser.add_argument("--token-classification", action="store_true",
                        help="also the token-classification arms (single sites, centralized, Fed-MedLoRA; "
                             "docs/token-classification.md): new arms, so a profile recorded without them is unchanged")
    parser.add_argument("--report-only", action="store_true",
                        help="train and generate nothing: rebuild the report (claims included) from --out's "
                             "results.json and its cached outputs; with --only overhead, the overhead figures from "
                             "--out's finished runs")
    parser.add_argument("--restart-profile", action="store_true",
                        help="with --results: drop the profile's arms recorded there (made under other settings, "
                             "e.g. older training defaults) and start it afresh in a new --out; other profiles are kept")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="change a profile field (e.g. steps=2); for smoke tests")
    parser.add_argument("--refresh-counts", action="store_true",
                        help="with --results: recompute the recorded arms' derived counts (unaligned, dropped, "
                             "malformed, per type) from --out's cached outputs, nothing trained; while the "
                             "profile is not running")
    parser.add_argument("--claims-so-far", type=Path, nargs="?", const=Path("-"), metavar="JSON",
                        help="with --results: print the claims the arms recorded there decide so far (a profile "
                             "still running, or stopped to continue later) and each arm's NER strict F1, and write "
                             "them to JSON if given; nothing is trained")
    return parser


def chosen_profile(cli: argparse.ArgumentParser, args: argparse.Namespace) -> Profile:
    """`--profile` with `--model` and every `--set FIELD=VALUE` applied."""
    profile = PROFILES[args.profile]
    if args.model:
        profile = replace(profile, model=args.model)
    for item in args.set:
        field, sep, value = item.partition("=")
        if not sep or field not in Profile.__dataclass_fields__:
            cli.error(f"--set {item!r}: expected FIELD=VALUE with FIELD one of {list(Profile.__dataclass_fields__)}")
        current = getattr(profile, field)
        if isinstance(current, bool):
            if value.lower() not in ("true", "false"):
                cli.error(f"--set {item!r}: {field} takes true or false")
            parsed: Any = value.lower() == "true"
        elif isinstance(current, tuple):
            parsed = tuple(v.strip() for v in value.split(",") if v.strip())
            unknown = [v for v in parsed if field == "federated_arms" and v not in FEDERATED_ARMS]
            if unknown:
                cli.error(f"--set {item!r}: unknown federated arm(s) {unknown}; known: {list(FEDERATED_ARMS)}")
        else:
            parsed = type(current)(value)
        profile = replace(profile, **{field: parsed})
    if profile.budget not in BUDGETS:
        cli.error(f"--set budget={profile.budget}: expected one of {list(BUDGETS)}")
    return profile


def main(argv: Sequence[str] | None = None) -> int:
    cli = parser()
    args = cli.parse_args(argv)
    if args.claims_so_far:
        if args.results is None:
            cli.error("--claims-so-far needs --results (the results.json beside it holds the arms)")
        text, record = claims_so_far(args.results.parent / "results.json", args.profile)
        print(text)
        if args.claims_so_far != Path("-"):
            record["command"] = command(COMMAND, argv)
            args.claims_so_far.write_text(compact_json(record) + "\n")
        return 0
    # SIGTERM unwinds like Ctrl-C, so a running `flwr run` and its SuperLink are stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    profile = chosen_profile(cli, args)
    trained = [*(args.out / "runs").glob("*/summary.json"), *(args.out / "arms").glob("*/adapter/adapter_model.safetensors")]
    if args.restart_profile and trained:
        # Finished runs and adapters in --out are reused by name: a restart there would score the old ones.
        cli.error(f"--restart-profile: {args.out} holds trained arms that would be reused ({trained[0].parent}); "
                  "pass a new --out (or remove that folder)")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    # What is kept under --out is reused; it must have been made with the same settings.
    # As JSON gives them back (lists, not tuples), to compare with what is recorded.
    # The training defaults are part of the settings: arms trained under other defaults never mix.
    settings = json.loads(json.dumps({"profile": asdict(profile), "data": repo_relative(args.data),
                                      "train": asdict(TrainSettings())}))
    recorded = out / "settings.json"
    if recorded.is_file() and json.loads(recorded.read_text()) != settings:
        cli.error(f"--out {out} holds results made with other settings ({recorded}); "
                  "use another --out, or delete that folder to start again")
    recorded.write_text(json.dumps(settings, indent=2))
    started = time.perf_counter()

    sites = prepare_sites(args.data.resolve(), out, profile.new_site_documents)
    if args.refresh_counts:
        if args.results is None:
            cli.error("--refresh-counts needs --results (the results.json beside it holds the arms)")
        done = refresh_counts(args.results.parent / "results.json", args.profile, out, sites, profile.test_limit)
        print(f"refreshed the counts of {len(done)} arm(s): {', '.join(done)}")
        return 0
    if args.report_only and args.only != "overhead":
        return report_only(out, sites, profile, args.profile, args.results, settings)
    if args.before_runs and (args.only != "overhead" or not all(
            (args.before_runs / run / "metrics.jsonl").is_file() for run in ("deployment-cold", "overhead-simulation"))):
        cli.error(f"--before-runs {args.before_runs}: needs --only overhead and a runs folder of an earlier "
                  "--only overhead measurement (deployment-cold/ and overhead-simulation/ with their metrics.jsonl)")
    if args.only == "overhead":
        return only_overhead(args, profile, out, sites, command(COMMAND, argv))
    if args.only == "token-classification":
        return only_token_classification(args, profile, out, sites, settings)
    if args.only == "lora-strategies":
        return only_lora_strategies(args, profile, out, sites, settings, command(COMMAND, argv))
    if args.strategies_json is not None:
        cli.error("--strategies-json goes with --only lora-strategies")
    if args.only == "tuned-singles":
        if args.sweep_json is None or not args.sweep_json.is_file():
            cli.error(f"--only tuned-singles needs --sweep-json, an existing sweep file (got {args.sweep_json})")
        return only_tuned_singles(args, profile, out, sites, settings)
    if args.sweep_json is not None:
        cli.error("--sweep-json goes with --only tuned-singles")
    return run_profile(args, profile, out, sites, settings, command(COMMAND, argv), started)


def budget(bench: Workbench, profile: Profile, sites: dict[str, Path]) -> tuple[int, dict[str, int]]:
    """The federation's steps per round (centralized trains them) and each single site's."""
    site_steps = {n: bench.settings(profile.steps).steps_per_round(len(bench.examples(n, sites[n])))
                  for n in TRAINING_SITES}  # what each site trains per round in the federation
    return steps_per_round(bench, sites), single_site_steps(profile, site_steps)


def only_token_classification(args: argparse.Namespace, profile: Profile, out: Path, sites: dict[str, Path],
                              settings: dict[str, Any]) -> int:
    """The token-classification arms alone, in the generative arms' budget; then each arm's NER
    strict F1 and the claims decided by every arm recorded (with --results: the profile's)."""

    from .token_arms import run_token_arms

    # Opt-in arms beside the profile: their own seconds are in their entries, and the
    # profile's wall time (the invocations that trained its arms) does not count them.
    store = ArmStore(args.results.parent / "results.json" if args.results else None, args.profile, settings,
                     timed=False)
    bench = Workbench(profile)
    store.record_dtype(bench.dtype)
    per_round, single_steps = budget(bench, profile, sites)
    scores = run_token_arms(profile, store, sites, out, federated_config(profile, out / "sites", out / "runs"),
                            per_round, single_steps)
    print(token_arms_table(scores))
    print_recorded_claims(store, args.profile)
    return 0


def print_recorded_claims(store: ArmStore, profile: str) -> None:
    """The claims that the arms recorded in `store`'s profile decide (the opt-in invocations)."""
    from benchmarks import claims

    recorded = {a: v for a, v in store.data["profiles"][profile]["arms"].items()
                if not a.startswith(("run/", "new-site/"))}
    decided = claims.evaluate_claims(recorded, TRAINING_SITES, profile)
    print(f"\nClaims whose arms are recorded ({len(decided)} of {len(claims.CLAIMS)}):")
    print("\n".join(claims.sentence(c) for c in decided) or "none (the generative arms are not recorded here)")


def only_tuned_singles(args: argparse.Namespace, profile: Profile, out: Path, sites: dict[str, Path],
                       settings: dict[str, Any]) -> int:
    """The single sites at their own validation-chosen settings, then the claims the recorded
    arms decide (benchmarks/protocol/tuned_singles.py)."""
    from benchmarks import claims

    from .tuned_singles import chosen_settings, run_tuned_singles

    store = ArmStore(args.results.parent / "results.json" if args.results else None, args.profile, settings,
                     timed=False)  # opt-in arms: not the profile's wall time (as above)
    bench = Workbench(profile)
    store.record_dtype(bench.dtype)
    chosen = chosen_settings(args.sweep_json, bench.dtype)
    _, single_steps = budget(bench, profile, sites)
    scores = run_tuned_singles(bench, store, sites, out, single_steps, chosen)
    for arm, per_test in scores.items():
        print(f"{arm}: " + ", ".join(f"{t} {claims.point(scores, arm, t):.3f}" for t in per_test))
    print_recorded_claims(store, args.profile)
    return 0


def only_lora_strategies(args: argparse.Namespace, profile: Profile, out: Path, sites: dict[str, Path],
                         settings: dict[str, Any], command_line: str) -> int:
    """The federated-LoRA strategies side by side at the profile's budget, then per arm its NER
    strict F1 and paired difference against fedmedlora (docs/strategies.md)."""
    from .strategy_arms import run_strategy_arms, summary, table

    store = ArmStore(args.results.parent / "results.json" if args.results else None, args.profile, settings,
                     timed=False)  # opt-in arms: not the profile's wall time (as above)
    bench = Workbench(profile)
    store.record_dtype(bench.dtype)
    scores = run_strategy_arms(bench, store, sites, out, federated_config(profile, out / "sites", out / "runs"))
    arms = summary(scores, store)
    print(table(arms))
    if args.strategies_json is not None:
        path = args.strategies_json
        data = json.loads(path.read_text()) if path.is_file() else {}
        data[f"{args.profile}-budget"] = {"command": command_line, "machine": machine(), "profile": settings,
                                         "dtype": bench.dtype, "measure": "ner-strict-f1", "arms": arms}
        path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        print(f"written to {path} under {args.profile}-budget")
    return 0


def run_profile(args: argparse.Namespace, profile: Profile, out: Path, sites: dict[str, Path],
                settings: dict[str, Any], command_line: str, started: float) -> int:
    """Every arm of the profile (those recorded in `--results` skipped), speed, communication
    and overhead, then the report."""
    store = ArmStore(args.results.parent / "results.json" if args.results else None, args.profile, settings,
                     restart=args.restart_profile)
    bench = Workbench(profile)
    store.record_dtype(bench.dtype)
    per_round, single_steps = budget(bench, profile, sites)
    batch = TrainSettings().batch_size
    logging.getLogger("protocol").info(
        "budget (%s): federation and centralized %d rounds x %d steps of %d = %d instances; single sites "
        "%s steps per round", profile.budget, profile.rounds, per_round, batch, profile.rounds * per_round * batch,
        single_steps)
    config = federated_config(profile, out / "sites", out / "runs")
    scores, new_site, federated_runs = run_arms(bench, store, sites, args.data.resolve(), out, config, per_round,
                                                single_steps)
    if args.token_classification:
        from .token_arms import run_token_arms

        scores.update(run_token_arms(profile, store, sites, out, config, per_round, single_steps))

    # Speed and communication.
    from benchmarks import train_speed

    loop = train_speed.measure(profile.model, bench.examples("maccrobat", sites["maccrobat"]),
                               quantization=profile.quantization, dtype="auto", steps=8, warmup=1, repeats=3, probe=4,
                               batch_size=TrainSettings().batch_size,
                               arms=("clientapp", "peft")) if profile.measure_speed else None
    communication = federated_runs["fedmedlora"]["communication"]
    encodings = {}
    for encoding, arm in ENCODING_ARMS.items():
        if not set(ENCODING_ARMS.values()) <= set(federated_runs):  # the quick profile's arms
            break
        sent = federated_runs[arm]["communication"]
        encodings[encoding] = {"arm": arm, "adapter-bytes": sent["adapter-bytes"],
                               "upload-ratio-to-full-model": sent["upload-ratio-to-full-model"],
                               **{m: statistics.fmean(scores[arm][t]["scores"][f"{m}-f1"]["value"] for t in TRAINING_SITES)
                                  for m in ("ner-strict", "re-strict")}}
    overheads = measure_overheads(profile, config, sites, out) if profile.measure_speed else {}

    curve_data = {arm: run["curve"] for arm, run in federated_runs.items()}
    plots = plot_curves(curve_data, out / "plots")
    results = {
        "command": command_line,
        "hardware": machine(),
        "profile": asdict(profile),
        "budget": {"shape": profile.budget, "steps-per-round": per_round, "total-steps": per_round * profile.rounds,
                   "batch-size": batch, "instances-seen": per_round * profile.rounds * batch,
                   "single-site-steps-per-round": single_steps, "dtype": bench.dtype},
        "scores": scores,
        "gap": federated_gap(scores),  # claims and half-widths: add_claims below
        "new-site": new_site,
        "curves": curve_data,
        "plots": [repo_relative(Path(plot)) for plot in plots],
        "speed": {"loop": None if loop is None else {
                      "fedmedlora": loop["clientapp"]["tokens_per_second"],
                      "peft-loop": loop["peft"]["tokens_per_second"], "ratio": loop["ratios"]["clientapp/peft"],
                      "runs": loop["clientapp"]["per_repeat"] + loop["peft"]["per_repeat"]},
                  "sites": federated_runs["fedmedlora"]["site-speed"]},
        "communication": communication,
        "encodings": encodings,
        "overhead": overheads,
        "seconds": time.perf_counter() - started,
    }
    add_claims(results, args.profile)
    results["profile-time"] = store.profile_time()
    store.finish(results)
    return write_report(results, out, args.results, plots)


def report_only(out: Path, sites: dict[str, Path], profile: Profile, name: str, target: Path | None,
                settings: dict[str, Any]) -> int:
    """Rebuild the report from `out`'s results.json: per-document counts from the cached
    outputs (for results written before they were kept), then the claims. Without one, from
    the profile's results in the committed file beside `target` (docs/results.json): it keeps
    every count, so no cached output is needed, and the round plots are redrawn from its curves."""
    path = out / "results.json"
    committed = target.parent / "results.json" if target else None
    recorded = (json.loads(committed.read_text())["profiles"].get(name, {}).get("results")
                if committed and committed.is_file() else None)
    if path.is_file():
        results = json.loads(path.read_text())
    elif recorded is not None:
        results = recorded
        out.mkdir(parents=True, exist_ok=True)
        results["plots"] = [repo_relative(Path(plot)) for plot in plot_curves(results["curves"], out / "plots")]
    else:
        raise SystemExit(f"--report-only: neither {path} nor the {name!r} profile's results in "
                         f"{committed or '--results'} exist; run the profile first")
    for arm, per_test in results["scores"].items():
        for test, entry in per_test.items():
            if "document-counts" in entry:
                continue
            instances, score_by = test_instances(sites[test], test, profile.test_limit(test))
            cache = out / "outputs" / arm / f"{test}.json"
            if not cache.is_file():
                raise SystemExit(f"--report-only: {cache} is missing; rerun without --report-only")
            fresh = scored(instances, json.loads(cache.read_text())["outputs"], score_by)
            if fresh["scores"] != entry["scores"]:
                raise SystemExit(f"--report-only: {cache} does not give the scores in {path} for {arm} on {test}")
            per_test[test] = fresh
    add_claims(results, name)
    results["report-command"] = command(COMMAND)
    store = ArmStore(target.parent / "results.json" if target else None, name, settings, timed=False)
    results["profile-time"] = store.profile_time() or results.get("profile-time")
    store.finish(results)
    return write_report(results, out, target, results.get("plots", []))
