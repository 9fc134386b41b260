"""Local training settings chosen on validation splits: the learning rate, LoRA+, the
site's optimizer state across rounds, and rounds against local steps at one budget.

Every arm trains at the standard profile's budget in the paper's shape (each site 3 rounds
x 24 steps of batch 4; a single site the same steps alone) and is scored on the
*validation* splits (never test): NER and relation strict/lenient F1 of generated answers
on `--validation-instances` instances per set (chosen by hash), and the mean answer-token
loss. Federated arms are real `flwr run`s of Fed-MedLoRA on Flower's simulation engine
(MACCROBAT, CHIA, DDI-DrugBank); single-site arms are the site's own loop
(`modeling.training.train_round`, round after round) on one corpus, scored on its own
validation set. Each finished arm is written to `--json` at once, and a rerun skips it.

    python -m benchmarks.lr_sweep --data data --out outputs/lr-sweep --json docs/benchmarks/lr_sweep.json

The phases run in the order `--phases` gives (default: all, in this order): `rates` (the
learning rate, federated), `loraplus` (LoRA+ at half the two best rates), `optimizer` (the
optimizer restarted every round against kept, at the best setting), `singles` (each single
site at the best setting, then plain LoRA at every rate) and `shapes` (6 x 12 and 12 x 6
against 3 x 24 rounds x steps, at the best setting). The best setting is the highest mean NER
strict F1 over the three validation sets of the federated arms (ties: lower validation loss);
in a file without federated arms (one made on a machine of another dtype,
docs/benchmarks/lr_sweep_float32.json) it is the app's defaults. A file's arms share one
dtype; each file has its own table in --markdown.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.bootstrap import document_counts, paired_difference
from benchmarks.protocol.arms import federated_config, run_federated
from benchmarks.protocol.profiles import PROFILES, TRAINING_SITES
from benchmarks.protocol.scoring import scored
from benchmarks.protocol.sites import prepare_sites
from benchmarks.protocol.store import compact_json
from benchmarks.protocol.workbench import Workbench
from benchmarks.provenance import command, machine, repo_relative
from clinical_ie.evaluate import site_instances, stable_subset, training_pairs
from clinical_ie.prompt import PREFIX_END
from data_loaders.sites import load_site
from modeling.adapter_io import load_peft_folder, set_adapter_state
from modeling.base import resolve_dtype
from modeling.training import TrainSettings, encode_all, mean_answer_loss

log = logging.getLogger("lr_sweep")

RATES = (2e-4, 5e-4, 1e-3, 2e-3)
LORAPLUS_RATIO = 16.0  # the LoRA+ paper's default ratio
SHAPES = ((3, 24), (6, 12), (12, 6))  # rounds x local steps, the same 72 steps per site
# Each batch's summed answer-token loss divided by a constant (modeling.training.loss_scale).
# An arm recorded with "per-batch" predates that: each batch divided by its own token count.
LOSS = "constant"
PHASES = ("rates", "loraplus", "optimizer", "singles", "shapes")


def arm_name(kind: str, lr: float, ratio: float = 0.0, keep: bool = True, rounds: int = 3, steps: int = 24) -> str:
    name = f"{kind}/lr={lr:g}"
    if ratio:
        name += f",loraplus={ratio:g}"
    if not keep:
        name += ",fresh-optimizer"
    if (rounds, steps) != (3, 24):
        name += f",{rounds}x{steps}"
    return name


def run_name(arm: str) -> str:
    """A folder and Flower run name: letters, digits, dots and dashes only."""
    return arm.replace("/", "-").replace("=", "").replace(",", "-")


def mean_ner(scores: dict[str, Any]) -> float:
    return statistics.fmean(s["scores"]["ner-strict-f1"]["value"] for s in scores.values())


def comparable_arms(arms: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The arms named `prefix`... that a best setting is chosen among: optimizer state kept,
    3 rounds, the current loss weighting."""
    return {a: v for a, v in arms.items() if a.startswith(prefix) and v["setting"]["keep-optimizer-state"]
            and v["setting"]["rounds"] == 3 and v["setting"].get("loss", LOSS) == LOSS}


def best_arm(arms: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The arm with the highest mean validation NER strict F1 (ties: lower mean validation loss)."""
    return max(arms.items(), key=lambda kv: (kv[1]["mean-ner-strict-f1"],
                                             -statistics.fmean(s["val-loss"] for s in kv[1]["scores"].values())))


def validation_scored(bench: Workbench, arm: str, adapter: Path, name: str, folder: Path, limit: int,
                      out: Path) -> dict[str, Any]:
    site = load_site(folder, name=name)
    instances = stable_subset(site_instances(site, "validation"), limit)
    outputs = bench.outputs(adapter, instances, out / "outputs" / arm / f"{name}.json", f"{arm} on {name}")
    result = scored(instances, outputs, site.score_by)  # document counts kept: paired comparisons
    set_adapter_state(bench.model, load_peft_folder(adapter))
    encoded, _ = encode_all(bench.tokenizer, training_pairs(instances), bench.profile.max_length, PREFIX_END)
    result["val-loss"] = mean_answer_loss(bench.model, encoded, bench.tokenizer.pad_token_id)
    return result


def add_missing_counts(data: dict[str, Any], out: Path, sites: dict[str, Path], limit: int) -> None:
    """Per-document counts for arms recorded without them, from their cached answers under `out`."""
    for arm, value in data["arms"].items():
        for name, scores in value["scores"].items():
            cache = out / "outputs" / arm / f"{name}.json"
            if "document-counts" in scores or not cache.is_file():
                continue
            site = load_site(sites[name], name=name)
            instances = stable_subset(site_instances(site, "validation"), limit)
            scores["document-counts"] = document_counts(instances, json.loads(cache.read_text())["outputs"],
                                                        site.score_by)[1].tolist()


def paired_against(data: dict[str, Any], arm: str, reference: str) -> str:
    """NER strict F1 of `arm` minus `reference` in points, mean over their common sets, with
    the 95% paired bootstrap interval (the same resampled documents score both)."""
    import numpy as np

    a, b = data["arms"][arm]["scores"], data["arms"][reference]["scores"]
    sets = [t for t in a if t in b and "document-counts" in a[t] and "document-counts" in b[t]]
    if not sets or arm == reference:
        return "-"
    diff = paired_difference([(np.asarray(a[t]["document-counts"]), np.asarray(b[t]["document-counts"]))
                              for t in sets], "ner-strict")
    return f"{diff.value:+.1f} [{diff.low:+.1f}, {diff.high:+.1f}]"


def reference_arm(data: dict[str, Any], arm: str) -> str | None:
    """What an arm is compared with: a fresh-optimizer arm with the same setting kept; any
    other federated arm with the best federated arm; a single site with its own best rate."""
    arms = data["arms"]
    if "fresh-optimizer" in arm:
        kept = arm.replace(",fresh-optimizer", "")
        return kept if kept in arms else None
    kind = arm.split("/")[0]
    same = [a for a, v in arms.items() if a.split("/")[0] == kind and v["setting"]["keep-optimizer-state"]
            and v["setting"].get("loss", LOSS) == LOSS and v["setting"]["rounds"] == 3]
    return max(same, key=lambda a: arms[a]["mean-ner-strict-f1"]) if same else None


DEFAULT_JSON = "docs/benchmarks/lr_sweep.json"


def table_markers(json_path: str) -> tuple[str, str]:
    """The comments around one results file's table: each file has a table of its own."""
    return (f"<!-- lr sweep: generated by `python -m benchmarks.lr_sweep --report-only` from {json_path} -->",
            f"<!-- end of lr sweep: {json_path} -->")


def markdown_table(data: dict[str, Any], json_path: str = DEFAULT_JSON) -> str:
    """The sweep's arms as a table: validation NER strict F1 per set, mean, validation loss."""
    sets = list(TRAINING_SITES)
    start, end = table_markers(json_path)
    lines = [start, "",
             "| arm | lr | LoRA+ ratio | optimizer | loss per batch divided by | rounds x steps | " + " | ".join(sets)
             + " | mean NER strict F1 | against | difference, points [95% paired interval] | mean val loss | wall |",
             "|---|---:|---:|---|---|---|" + "---:|" * len(sets) + "---:|---|---|---:|---:|"]
    for arm, value in data.get("arms", {}).items():
        setting, scores = value["setting"], value["scores"]
        reference = reference_arm(data, arm)
        cells = [f"{scores[t]['scores']['ner-strict-f1']['value']:.3f}" if t in scores else "-" for t in sets]
        loss = statistics.fmean(s["val-loss"] for s in scores.values())
        wall = value.get("wall-seconds") or value.get("seconds")
        lines.append(f"| {arm} | {setting['learning-rate']:g} | {setting['loraplus-lr-ratio']:g} | "
                     f"{'kept' if setting['keep-optimizer-state'] else 'fresh each round'} | "
                     f"{'a constant' if setting.get('loss', LOSS) == LOSS else 'its own token count'} | "
                     f"{setting['rounds']} x {setting['steps']} | " + " | ".join(cells)
                     + f" | {value['mean-ner-strict-f1']:.3f} | {reference or '-'} | "
                     f"{paired_against(data, arm, reference) if reference else '-'} | {loss:.3f} | {wall / 60:.0f} min |")
    best = data.get("best")
    if best:
        lines += ["", f"Best federated setting on validation: `{best['arm']}`."]
    return "\n".join(lines + ["", end])


def write_markdown(page: Path, data: dict[str, Any], json_path: str = DEFAULT_JSON) -> None:
    """Replace the table between the markers in `page` (appended at the end the first time)."""
    text = page.read_text()
    table = markdown_table(data, json_path)
    start, end = table_markers(json_path)
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + table + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + table + "\n"
    page.write_text(text)


class SweepFile:
    """The committed results file, rewritten after every arm."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        self.data = json.loads(path.read_text()) if path.is_file() else {}
        if self.data.get("settings") not in (None, header["settings"]):
            raise SystemExit(f"--json {path} holds arms made with other settings; use another file")
        self.data.update(header)
        self.data.setdefault("arms", {})

    def get(self, arm: str) -> dict[str, Any] | None:
        return self.data["arms"].get(arm)

    def put(self, arm: str, value: dict[str, Any]) -> None:
        self.data["arms"][arm] = value
        self.write()

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(compact_json(self.data))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder of the prepared site folders")
    parser.add_argument("--out", type=Path, default=Path("outputs/lr-sweep"))
    parser.add_argument("--json", type=Path, required=True, help="results file (docs/benchmarks/lr_sweep.json)")
    parser.add_argument("--validation-instances", type=int, default=40, help="per validation set, by hash")
    parser.add_argument("--phases", default=",".join(PHASES), help=f"phases to run, in this order (of {list(PHASES)})")
    parser.add_argument("--rates", default=",".join(f"{r:g}" for r in RATES), help="federated rates, in run order")
    parser.add_argument("--markdown", type=Path, default=Path("docs/benchmarks.md"),
                        help="page whose sweep table is rewritten from --json")
    parser.add_argument("--report-only", action="store_true", help="train nothing: rewrite the --markdown table")
    args = parser.parse_args(argv)
    if args.report_only:
        data = json.loads(args.json.read_text())
        if args.out.is_dir():  # counts of arms recorded before they were kept, from the cached answers
            add_missing_counts(data, args.out.resolve(), {n: args.out.resolve() / "sites" / n
                                                          for n in TRAINING_SITES},
                               args.validation_instances)
            args.json.write_text(compact_json(data))
        write_markdown(args.markdown, data, repo_relative(args.json))
        return 0
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    rates = tuple(float(r) for r in args.rates.split(","))
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    if not phases or not set(phases) <= set(PHASES):
        parser.error(f"--phases {args.phases!r}: expected a comma-separated list of {list(PHASES)}")

    profile = PROFILES["standard"]
    # One dtype for every arm and every process of every federated run, decided here once.
    dtype = str(resolve_dtype("auto")).removeprefix("torch.")
    out = args.out.resolve()
    sites = prepare_sites(args.data.resolve(), out, profile.new_site_documents)
    settings = {"model": profile.model, "dtype": dtype, "rounds x steps per site": "3 x 24 (phase 4: 6 x 12, 12 x 6)",
                "batch-size": 4, "validation-instances": args.validation_instances,
                "split": "validation", "sites": list(TRAINING_SITES)}
    results = SweepFile(args.json, {
        "command": command("benchmarks.lr_sweep", argv), "hardware": machine(), "settings": settings})
    bench = Workbench(profile, dtype=dtype)
    # The runs' own per-round F1 (generation at every site and the coordinator) is not what
    # the sweep decides by: two instances keep it alive at little cost.
    base_config = {**federated_config(profile, out / "sites", out / "runs"), "model.dtype": dtype,
                   "eval.max-instances": 2}

    def run_arm(arm: str, train, tests: tuple[str, ...], setting: dict[str, Any]) -> dict[str, Any]:
        recorded = results.get(arm)
        if recorded is not None:
            return recorded
        started = time.perf_counter()
        adapter, extra = train()
        trained = time.perf_counter() - started
        value = {test: validation_scored(bench, arm, adapter, test, sites[test], args.validation_instances, out)
                 for test in tests}
        value = {"setting": setting, "scores": value, "train-seconds": trained,
                 "seconds": time.perf_counter() - started, **extra}
        value["mean-ner-strict-f1"] = mean_ner(value["scores"])
        results.put(arm, value)
        log.info("%s: mean NER strict F1 %.3f", arm, value["mean-ner-strict-f1"])
        return value

    def federated(lr: float, ratio: float = 0.0, keep: bool = True, rounds: int = 3, steps: int = 24):
        arm = arm_name("fedmedlora", lr, ratio, keep, rounds, steps)
        setting = {"learning-rate": lr, "loraplus-lr-ratio": ratio, "keep-optimizer-state": keep,
                   "rounds": rounds, "steps": steps, "loss": LOSS}

        def train():
            config = {**base_config, "train.learning-rate": lr, "train.loraplus-lr-ratio": ratio,
                      "train.keep-optimizer-state": keep, "num-server-rounds": rounds, "train.max-steps": steps}
            run = run_federated(run_name(arm), config, out / "runs")
            wall = json.loads((run / "wall.json").read_text()) if (run / "wall.json").is_file() else {}
            return run / "final", {"wall-seconds": wall.get("wall-seconds")}

        return arm, run_arm(arm, train, TRAINING_SITES, setting)

    def single(name: str, lr: float, ratio: float = 0.0, keep: bool = True):
        arm = arm_name(f"single-{name}", lr, ratio, keep)
        setting = {"learning-rate": lr, "loraplus-lr-ratio": ratio, "keep-optimizer-state": keep,
                   "rounds": profile.rounds, "steps": profile.steps, "loss": LOSS}

        def train():
            target = out / "arms" / run_name(arm) / "adapter"
            bench.train(bench.examples(name, sites[name]), profile.steps, profile.rounds, None, target,
                        learning_rate=lr, loraplus_lr_ratio=ratio, keep_optimizer_state=keep)
            return target, {}

        return arm, run_arm(arm, train, (name,), setting)

    def federated_arms() -> dict[str, dict[str, Any]]:
        return comparable_arms(results.data["arms"], "fedmedlora/")

    def best_setting() -> tuple[str, float, float]:
        arm, value = best_arm(federated_arms())
        return arm, value["setting"]["learning-rate"], value["setting"]["loraplus-lr-ratio"]

    def chosen_setting() -> tuple[str, float, float]:
        # In a file of its own (another dtype, another machine), the sweep's chosen setting is
        # the app's default: the shapes and the singles are compared there at it.
        defaults = TrainSettings()  # the run config's defaults (tests/test_train_speed.py)
        return (best_setting() if federated_arms()
                else ("defaults", defaults.learning_rate, defaults.loraplus_lr_ratio))

    for phase in phases:
        if phase == "rates":
            for lr in rates:
                federated(lr)
        elif phase == "loraplus":
            plain = {lr: results.get(arm_name("fedmedlora", lr)) for lr in rates}
            ranked = sorted((lr for lr in rates if plain[lr]), key=lambda lr: -plain[lr]["mean-ner-strict-f1"])
            for lr in sorted(ranked[:2]):  # LoRA+ takes a lower base rate than plain LoRA: half the best two
                federated(lr / 2, LORAPLUS_RATIO)
        elif phase == "optimizer":
            _, lr, ratio = best_setting()
            federated(lr, ratio, keep=False)
            single("maccrobat", lr, ratio)
            single("maccrobat", lr, ratio, keep=False)
        elif phase == "singles":
            # The single sites at the federation's setting too: the protocol's single-site arms
            # train at the app's defaults, chosen for the federation, and this says what that costs them.
            _, lr, ratio = chosen_setting()
            for name in TRAINING_SITES:
                if ratio:
                    single(name, lr, ratio)
                for rate in rates:
                    single(name, rate)
        elif phase == "shapes":
            _, lr, ratio = chosen_setting()
            for rounds, steps in SHAPES:
                federated(lr, ratio, rounds=rounds, steps=steps)
    best_arm, best_lr, best_ratio = best_setting()
    results.data["best"] = {"arm": best_arm, "learning-rate": best_lr, "loraplus-lr-ratio": best_ratio}
    results.write()
    write_markdown(args.markdown, results.data, repo_relative(args.json))
    for arm, value in results.data["arms"].items():
        print(f"{arm:55s} mean NER strict F1 {value['mean-ner-strict-f1']:.3f}  "
              + "  ".join(f"{t} {s['scores']['ner-strict-f1']['value']:.3f}/loss {s['val-loss']:.3f}"
                          for t, s in value["scores"].items()))
    print(f"best: {best_arm}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
