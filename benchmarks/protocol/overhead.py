"""Federation overhead: wall time of one small configuration, in simulation and as a loopback
deployment (with and without the sites' warm workers), minus the time during which a site
trained or evaluated or the coordinator evaluated (concurrent work counted once); its
figures for docs/benchmarks/overhead.json and its section of RESULTS.md."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.provenance import REPO, machine

from .arms import federated_config, read_rounds, run_federated, write_wall
from .profiles import TRAINING_SITES, Profile


def run_deployed(config: dict[str, Any], sites: dict[str, Path], out: Path, warm: bool = True) -> Path:
    """A loopback deployment of the training sites; `warm=False`: Flower's own behaviour, a
    fresh ClientApp process loading the model for every message, each using every core."""
    from fedmedlora.deploy import Site, deploy

    name = "deployment" if warm else "deployment-cold"
    run = out / name
    if (run / "summary.json").is_file():
        return run
    start, start_time = time.perf_counter(), time.time()
    with open(out / f"{name}.log", "w") as stream:
        code = deploy(REPO, [Site(n, sites[n]) for n in TRAINING_SITES], {**config, "run-name": name},
                      workdir=out / f".{name}", stdout=stream, site_workers=warm, share_cores=warm)
    if code != 0 or not (run / "summary.json").is_file():
        raise RuntimeError(f"loopback deployment failed (exit {code}); see {out / f'{name}.log'}")
    write_wall(run, start, start_time)
    return run


def busy_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end] intervals: time during which something was working."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


# What a site's replies say it spent outside its work, by cause (client_app/timings.py).
CAUSES = {"process start": "site-process-start-seconds", "imports": "site-import-seconds",
          "model load": "site-model-load-seconds", "data load": "site-data-load-seconds"}


def overhead(run: Path) -> dict[str, float | None]:
    """Wall time of the whole command minus the time during which any site was training or
    evaluating or the coordinator was evaluating (what the federation itself costs), split
    into startup (until every site has begun its first work: each site's first message starts
    its process or worker and loads the model, once per run), the gaps between work, and
    shutdown (after the last work).

    Sites of a deployment work at the same time, so their seconds are not summed: each
    phase is placed on the clock by the end time the site reported, and the overlap counts once."""
    wall_file = run / "wall.json"
    timing = json.loads(wall_file.read_text()) if wall_file.is_file() else {}
    wall = timing.get("wall-seconds")
    train = evaluate = coordinator = 0.0
    intervals: list[tuple[float, float]] = []

    first_work: dict[str, float] = {}  # site -> when its first work began

    def phase(metrics: dict[str, float], seconds_key: str, end_key: str, site: str | None = None) -> float:
        seconds = metrics.get(seconds_key, 0.0)
        if seconds:
            if end_key not in metrics:
                raise KeyError(f"{run / 'metrics.jsonl'}: {seconds_key} without {end_key} "
                               f"(a run recorded before sites reported end times; run it again)")
            intervals.append((metrics[end_key] - seconds, metrics[end_key]))
            if site is not None:
                first_work[site] = min(first_work.get(site, float("inf")), metrics[end_key] - seconds)
        return seconds

    rounds = read_rounds(run)
    causes = dict.fromkeys(CAUSES, 0.0)  # per site, summed over the messages in between work
    for record in rounds:
        coordinator += phase(record["coordinator"], "eval-seconds", "eval-end-time")
        sites = record.get("sites", [])
        for site in sites:
            train += phase(site["train"], "train-seconds", "train-end-time", site["site"])
            evaluate += phase(site.get("evaluate") or {}, "eval-seconds", "eval-end-time", site["site"])
            # Round 1's train messages start the sites: what they cost is startup, before any work.
            messages = [site.get("evaluate") or {}] + ([site["train"]] if record["round"] > 1 else [])
            for cause, key in CAUSES.items():
                causes[cause] += sum(m.get(key, 0.0) for m in messages) / len(sites)  # sites run side by side
    busy = busy_seconds(intervals)
    result = {"wall-seconds": wall, "site-train-seconds": train, "site-eval-seconds": evaluate,
              "coordinator-eval-seconds": coordinator, "busy-seconds": busy,
              "overhead-seconds": None if wall is None else wall - busy,
              "overhead-share": None if wall is None else (wall - busy) / wall}
    if "start-time" in timing and intervals:
        # Until every site has begun work, less the work done meanwhile (the coordinator's round-0
        # evaluation, the first sites' training while the others still start).
        ready = max(first_work.values(), default=min(start for start, _ in intervals))
        startup = ready - timing["start-time"] - busy_seconds([(a, min(b, ready)) for a, b in intervals if a < ready])
        shutdown = timing["start-time"] + wall - max(end for _, end in intervals)
        between = wall - busy - startup - shutdown
        federated_rounds = sum(1 for record in rounds if record.get("sites"))
        per_round = {cause: seconds / max(federated_rounds, 1) for cause, seconds in causes.items()}
        per_round["polling and transfer"] = between / max(federated_rounds, 1) - sum(per_round.values())
        result.update({"startup-seconds": startup, "shutdown-seconds": shutdown, "between-work-seconds": between,
                       "between-work-seconds-per-round": between / max(federated_rounds, 1),
                       "between-work-split-per-round": per_round})
    return result


def measure_overheads(profile: Profile, config: dict[str, Any], sites: dict[str, Path], out: Path) -> dict[str, Any]:
    """One small configuration run in simulation and as a loopback deployment. Evaluation is
    kept small: it is work, subtracted from the wall time, and only adds noise here."""
    small = {**config, "num-server-rounds": profile.overhead_rounds, "train.max-steps": profile.overhead_steps,
             "eval.max-instances": 2, "eval.max-new-tokens": 16}
    return {"simulation": overhead(run_federated("overhead-simulation", small, out / "runs")),
            "loopback deployment": overhead(run_deployed(small, sites, out / "runs")),
            COLD_DEPLOYMENT: overhead(run_deployed(small, sites, out / "runs", warm=False))}


COLD_DEPLOYMENT = "loopback deployment, no site workers"
OVERHEAD_RUNS = {"simulation": "overhead-simulation", "loopback deployment": "deployment",
                 COLD_DEPLOYMENT: "deployment-cold"}  # mode -> its run folder under --out/runs


def overhead_summary(measured: dict[str, Any]) -> dict[str, Any]:
    """One mode's figures as docs/benchmarks/overhead.json holds them."""
    return {"wall_seconds": measured["wall-seconds"], "overhead_fraction": measured["overhead-share"],
            "between_work_seconds_per_round": measured.get("between-work-seconds-per-round"),
            "startup_seconds": measured.get("startup-seconds"), "shutdown_seconds": measured.get("shutdown-seconds"),
            "split_per_round": measured.get("between-work-split-per-round")}


def overhead_file(overheads: dict[str, Any], before_simulation: dict[str, Any] | None, command: str,
                  profile: dict[str, Any], previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """Before and after, for docs/benchmarks/overhead.json. `before` is the first measurement
    and is kept from `previous` (the file as it was) once recorded, so later changes are
    measured against where the work started: for deployment, a fresh ClientApp process
    loading the model for every message and adapters sent as one array per tensor; for
    simulation, the quick profile's earlier measurement. `after` is this command's run with
    site workers, `no_site_workers` the same code without them (`--no-site-workers`)."""
    previous = previous or {}

    def kept(mode: str) -> dict[str, Any] | None:
        return (previous.get(mode) or {}).get("before")

    return {
        "command": command,
        "before_note": previous.get("before_note", BEFORE_KEPT),
        "hardware": machine(),
        "settings": {"rounds": profile["overhead_rounds"], "steps": profile["overhead_steps"], "sites": 3},
        "simulation": {"before": kept("simulation") or (overhead_summary(before_simulation) if before_simulation else None),
                       "after": overhead_summary(overheads["simulation"])},
        "deployment": {"before": kept("deployment") or overhead_summary(overheads[COLD_DEPLOYMENT]),
                       "after": overhead_summary(overheads["loopback deployment"]),
                       "no_site_workers": overhead_summary(overheads[COLD_DEPLOYMENT])},
    }


OVERHEAD_ROW = "| federation overhead, "


def overhead_rows(profile: dict[str, Any], overheads: dict[str, dict[str, Any]]) -> list[str]:
    rows = []
    for mode, o in overheads.items():
        if o.get("wall-seconds") is None:
            continue
        split = (f": startup {o['startup-seconds']:.0f} s, between work {o['between-work-seconds']:.0f} s "
                 f"({o['between-work-seconds-per-round']:.1f} s per round), shutdown {o['shutdown-seconds']:.0f} s"
                 if "startup-seconds" in o else "")
        if o.get("between-work-split-per-round"):
            split += " (per round: " + ", ".join(f"{cause} {seconds:.1f} s" for cause, seconds
                                                  in o["between-work-split-per-round"].items()) + ")"
        rows.append(f"{OVERHEAD_ROW}{mode} ({profile['overhead_rounds']} rounds x {profile['overhead_steps']} steps) | "
                    f"{o['overhead-seconds']:.0f} s of {o['wall-seconds']:.0f} s wall ({100 * o['overhead-share']:.0f}%)"
                    f"{split}; busy {o['busy-seconds']:.0f} s (site training {o['site-train-seconds']:.0f} s, site "
                    f"evaluation {o['site-eval-seconds']:.0f} s, coordinator evaluation "
                    f"{o['coordinator-eval-seconds']:.0f} s, summed over sites) |")
    return rows


OVERHEAD_HEADING = "## Federation overhead"
BEFORE_KEPT = ("the first measurement, kept (deployment: a fresh ClientApp process loading the model for every "
               "message, each using every core; simulation: the quick profile's earlier measurement).")


def overhead_table(figures: dict[str, Any]) -> list[str]:
    """docs/benchmarks/overhead.json as a table: before and after, simulation and deployment."""
    modes = [(mode, when.replace("_", " "), figures[mode][when]) for mode in ("simulation", "deployment")
             for when in ("before", "after", "no_site_workers") if figures[mode].get(when)]

    def cell(value: float | None, unit: str = " s") -> str:
        return "-" if value is None else f"{value:.1f}{unit}"

    lines = ["| | " + " | ".join(f"{mode}, {when}" for mode, when, _ in modes) + " |",
             "|---|" + "---:|" * len(modes),
             "| wall | " + " | ".join(cell(f["wall_seconds"]) for *_, f in modes) + " |",
             "| overhead (share of wall) | " + " | ".join(f"{100 * f['overhead_fraction']:.0f}%" for *_, f in modes) + " |",
             "| time between work, per round | " + " | ".join(cell(f["between_work_seconds_per_round"])
                                                         for *_, f in modes) + " |"]
    for cause in (*CAUSES, "polling and transfer"):
        lines.append(f"| - {cause} | " + " | ".join(cell((f.get("split_per_round") or {}).get(cause))
                                                    for *_, f in modes) + " |")
    return lines


def write_overhead_section(results_md: Path, figures: dict[str, Any]) -> None:
    """Put the overhead table into RESULTS.md, replacing the section an earlier run wrote."""
    settings = figures["settings"]
    section = [OVERHEAD_HEADING, "",
               f"{settings['sites']} sites, {settings['rounds']} rounds x {settings['steps']} steps, small evaluations "
               f"({figures['hardware']}); measured by `{figures['command']}`, figures in "
               f"docs/benchmarks/overhead.json. Before: {figures.get('before_note', BEFORE_KEPT)} After: each site's "
               "warm worker, the cores shared, the adapter packed into one array, replies pulled every 0.2 s; no site "
               "workers: the same code without the workers.", "", *overhead_table(figures), ""]
    lines = results_md.read_text().splitlines() if results_md.is_file() else []
    if OVERHEAD_HEADING in lines:
        first = lines.index(OVERHEAD_HEADING)
        last = next((i for i in range(first + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines[first:last] = section
    else:
        lines += ["", *section]
    results_md.write_text("\n".join(lines).rstrip("\n") + "\n")


def only_overhead(args: argparse.Namespace, profile: Profile, out: Path, sites: dict[str, Path], command: str) -> int:
    """`--only overhead`: measure (or with `--report-only` read from `out`'s finished runs)
    the overhead, write docs/benchmarks/overhead.json's figures (`--overhead-json`) and the
    RESULTS.md section (`--results`), and print them."""
    if args.report_only:  # the figures again from --out's finished runs, nothing run
        overheads = {mode: overhead(out / "runs" / name) for mode, name in OVERHEAD_RUNS.items()}
    else:
        overheads = measure_overheads(profile, federated_config(profile, out / "sites", out / "runs"), sites, out)
    (out / "overhead.json").write_text(json.dumps(overheads, indent=2))
    earlier = None  # the simulation's figures from the quick profile's full run, recorded before
    if args.results and (args.results.parent / "results.json").is_file():
        recorded = json.loads((args.results.parent / "results.json").read_text())
        earlier = recorded["profiles"].get("quick", {}).get("results", {}).get("overhead", {}).get("simulation")
    previous = (json.loads(args.overhead_json.read_text())
                if args.overhead_json and args.overhead_json.is_file() else None)
    if args.report_only and previous and previous.get("command"):
        command = previous["command"]  # the figures are still those that command measured
    if args.before_runs:  # `before` recomputed from an earlier measurement's runs
        previous = {"deployment": {"before": overhead_summary(overhead(args.before_runs / "deployment-cold"))},
                    "simulation": {"before": overhead_summary(overhead(args.before_runs / "overhead-simulation"))},
                    "before_note": f"recomputed from the runs in {args.before_runs} (an earlier --only overhead "
                                   "measurement: its deployment without site workers, and its simulation)."}
    figures = overhead_file(overheads, earlier, command, asdict(profile), previous)
    if args.overhead_json:
        args.overhead_json.write_text(json.dumps(figures, indent=2) + "\n")
    if args.results:
        write_overhead_section(args.results, figures)
    print("\n".join(overhead_rows(asdict(profile), overheads) + overhead_table(figures)))
    return 0
