"""The reference paper's evaluation protocol on the shared corpora, with speed and communication.

Training sites: MACCROBAT, CHIA and DDI's DrugBank part. External cohort, never trained on:
ADE (relations and entity recall: it annotates only related entities). New low-resource
site: DDI's MedLine abstracts, a held-out source, with only a few training documents.

Arms, every one with the same training budget (the optimizer steps the federation takes
in total, R rounds x the sum over sites of each site's steps per round):
- `zero-shot`: the base model;
- `single-<site>`: trained on that site alone;
- `centralized`: trained on the three sites' pooled instances;
- `fedmedlora`, `fedmedlora-plus` (coordinator scoring), `fedmedlora-plus-sites`
  (site scoring), `exact`, and Fed-MedLoRA with float16 and int8 adapters on the wire: real
  `flwr run`s on Flower's simulation engine (a profile names the ones it runs);
- label skew (`standard`): `fedmedlora-skew` and `fedmedlora-plus-skew` on three sites made
  from MACCROBAT, each annotating one group of entity types, tested on MACCROBAT.
Local arms run the ClientApp's training function (`train_round`, round by round with the
same schedule), so the only difference from the federated arms is the federation.

New site: the base model, the Fed-MedLoRA global adapter as is, a fresh adapter trained
on the few documents alone, and the global adapter adapted on them (same steps).

Every adapter is scored on every test split (strict and lenient F1 for NER and RE, 95%
document-level bootstrap intervals). Per-round validation curves of the federated arms are
drawn as PNG. Speed: the ClientApp's training loop versus a plain PEFT loop on the same
model and data (benchmarks/train_speed.py), and the tokens/s the sites reported inside
the federated run. Federation overhead (wall time minus the time during which a site trained
or evaluated or the coordinator evaluated, concurrent work counted once) of one small
configuration run in simulation and as a loopback deployment. Bytes per round against a full-model update.

    .venv/bin/python benchmarks/protocol.py --profile quick --data data --results docs/RESULTS.md

`--data` holds the prepared site folders `maccrobat`, `chia`, `ddi`, `ade` (see the
docs/getting-started.md, "Real corpora"). Everything finished is kept under `--out` and reused when the
command is run again (training, federated runs, generated outputs), so an interrupted
run continues. Writes `results.json`, `RESULTS.md` and `plots/*.png` into `--out`. With
`--results`, each arm's scores also go into the results.json beside it as soon as the arm
is scored (`ArmStore`), so a later run, even with an empty `--out`, skips the arms already
there. The paper's claims are decided by paired comparisons (benchmarks/claims.py).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import os
import platform
import re
import shlex
import signal
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from anywhere in the checkout
sys.path.insert(0, str(REPO / "benchmarks"))

from clinical_ie.bootstrap import bootstrap, document_counts  # noqa: E402
from clinical_ie.evaluate import (  # noqa: E402
    InstanceEvaluator,
    score_outputs,
    site_instances,
    stable_subset,
    training_pairs,
)
from clinical_ie.instances import RE  # noqa: E402
from clinical_ie.parsing import parse_entities, parse_relations  # noqa: E402
from clinical_ie.prompt import PREFIX_END  # noqa: E402
from data_loaders.sites import load_site  # noqa: E402
from data_loaders.splits import split_of  # noqa: E402
from modeling.base import EMBEDDED_DEFAULT  # noqa: E402
from modeling.training import TrainSettings, encode_all, train_round  # noqa: E402
from settings.config import EvalSection  # noqa: E402

log = logging.getLogger("protocol")

TRAINING_SITES = ("maccrobat", "chia", "ddi-drugbank")
EXTERNAL = "ade"
NEW_SITE = "ddi-medline"
FEDERATED_ARMS: dict[str, dict[str, Any]] = {
    "fedmedlora": {"strategy.name": "fedmedlora"},
    "fedmedlora-plus": {"strategy.name": "fedmedlora-plus", "strategy.validation-instances": 48},
    "fedmedlora-plus-sites": {"strategy.name": "fedmedlora-plus", "strategy.validation": "sites"},
    "fedmedlora-equal": {"strategy.name": "fedmedlora-equal"},  # every site weighted 1/K
    "exact": {"strategy.name": "exact"},
    # Fed-MedLoRA with its adapters encoded on the wire (both directions, every round)
    "fedmedlora-float16": {"strategy.name": "fedmedlora", "transport.encoding": "float16"},
    "fedmedlora-int8": {"strategy.name": "fedmedlora", "transport.encoding": "int8"},
}
ENCODING_ARMS = {"float32": "fedmedlora", "float16": "fedmedlora-float16", "int8": "fedmedlora-int8"}
# Fed-MedLoRA and Fed-MedLoRA+ on the label-skew sites (prepare_label_skew_sites), tested on MACCROBAT.
SKEW_ARMS: dict[str, dict[str, Any]] = {
    "fedmedlora-skew": {"strategy.name": "fedmedlora"},
    "fedmedlora-plus-skew": {"strategy.name": "fedmedlora-plus", "strategy.validation-instances": 48},
}
BUDGETS = ("equal-local-steps", "equal-instances")
NEW_SITE_ARMS = ("zero-shot", "fedmedlora", "new-site-alone", "new-site-from-global")


@dataclass(frozen=True)
class Profile:
    model: str
    quantization: str
    rounds: int
    steps: int  # per site and round; 0 = the paper's 2 local epochs
    max_length: int
    test_instances: int  # per test split, chosen by hash; 0 = all
    round_eval_instances: int  # per-round validation F1 inside the federated runs
    new_site_documents: int
    new_site_steps: int
    max_new_tokens: int
    eval_batch_size: int
    overhead_rounds: int
    overhead_steps: int
    federated_arms: tuple[str, ...] = tuple(FEDERATED_ARMS)
    label_skew: bool = False  # also the label-skew arms (SKEW_ARMS)
    external_instances: int = 0  # instances of the external test set; 0 = test_instances
    measure_speed: bool = True  # the training-loop comparison and the federation overhead
    # "equal-local-steps" (the paper's shape): a single site trains the steps it spends in the
    # federation, centralized the sum of the sites' steps on the pooled data.
    # "equal-instances": every arm the federation's total. equal_instances_arms adds that
    # shape's single-site arms (`equal-instances/single-*`) to an equal-local-steps profile.
    budget: str = "equal-local-steps"
    equal_instances_arms: bool = False
    constrained: bool = EvalSection.constrained  # constrained decoding when scoring (eval.constrained's default)

    def test_limit(self, test: str) -> int:
        return self.external_instances if test == EXTERNAL and self.external_instances else self.test_instances


PROFILES = {
    # This 2-core CPU, the embedded default: a smoke test of every arm (docs/architecture.md, "Benchmark profiles").
    "quick": Profile(model=EMBEDDED_DEFAULT, quantization="auto", rounds=3, steps=6, max_length=512,
                     test_instances=40, round_eval_instances=8, new_site_documents=8, new_site_steps=12,
                     max_new_tokens=96, eval_batch_size=16, overhead_rounds=2, overhead_steps=2),
    # This 2-core CPU, the embedded default, sized for 150 minutes from an empty --out (measured:
    # 131 min, docs/benchmarks.md): the arms that decide the paper's claims, in-domain test
    # sets for paired verdicts, label skew; no wire encodings, exact, loop speed or overhead
    # (quick has them).
    "standard": Profile(model=EMBEDDED_DEFAULT, quantization="auto", rounds=3, steps=24, max_length=512,
                        test_instances=120, round_eval_instances=8, new_site_documents=8, new_site_steps=24,
                        max_new_tokens=96, eval_batch_size=16, overhead_rounds=2, overhead_steps=2,
                        federated_arms=("fedmedlora", "fedmedlora-plus", "fedmedlora-equal"),
                        label_skew=True, external_instances=60, measure_speed=False, equal_instances_arms=True),
    # A GPU: 4-bit, a larger model (--model), all data, every test instance.
    "full": Profile(model=EMBEDDED_DEFAULT, quantization="4bit", rounds=3, steps=0, max_length=512,
                    test_instances=0, round_eval_instances=64, new_site_documents=10, new_site_steps=60,
                    max_new_tokens=160, eval_batch_size=32, overhead_rounds=2, overhead_steps=10),
}


# --- sites -------------------------------------------------------------------------------

def _write_subset(source: Path, target: Path, name: str, keep) -> Path:
    """A site folder holding the documents of `source` for which keep(doc) is true."""
    if (target / "site.json").is_file():
        return target
    target.mkdir(parents=True, exist_ok=True)
    site = json.loads((source / "site.json").read_text())
    lines = [line for line in (source / "documents.jsonl").read_text(encoding="utf-8").splitlines()
             if line.strip() and keep(json.loads(line))]
    if not lines:
        raise ValueError(f"{source}: no document kept for site {name}")
    (target / "documents.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (target / "site.json").write_text(json.dumps({**site, "name": name}, indent=2))
    return target


def _rank(doc_id: str) -> str:
    return hashlib.sha256(doc_id.encode()).hexdigest()


def prepare_sites(data: Path, out: Path, new_site_documents: int) -> dict[str, Path]:
    """Site folders of the protocol: DDI is split by source (DrugBank labels have named ids,
    MedLine abstracts numeric PubMed ids); the new site keeps its test documents and only
    `new_site_documents` training documents (chosen by a hash of their ids)."""
    for name in ("maccrobat", "chia", "ddi", "ade"):
        if not (data / name / "site.json").is_file():
            raise FileNotFoundError(f"--data: {data / name} is not a prepared site folder; prepare it with "
                                    f"`fedmedlora prepare --preset {name} ...` (docs/getting-started.md, 'Real corpora')")
    root = out / "sites"
    root.mkdir(parents=True, exist_ok=True)
    for name in ("maccrobat", "chia", "ade"):
        link = root / name
        if not link.exists():
            link.symlink_to((data / name).resolve(), target_is_directory=True)
    _write_subset(data / "ddi", root / "ddi-drugbank", "ddi-drugbank", lambda d: not d["id"].isdigit())
    documents = [json.loads(line) for line in (data / "ddi" / "documents.jsonl").open(encoding="utf-8") if line.strip()]
    medline_train = sorted((d["id"] for d in documents if d["id"].isdigit() and d.get("source_split") == "train"),
                           key=_rank)
    # Training documents the split keeps for training (it carves validation from DDI's Train).
    few = set([i for i in medline_train if split_of(i, validation=0.1 / 0.8, test=0.0) == "train"][:new_site_documents])
    _write_subset(data / "ddi", root / NEW_SITE, NEW_SITE,
                  lambda d: d["id"].isdigit() and (d.get("source_split") != "train" or d["id"] in few))
    return {name: root / name for name in (*TRAINING_SITES, EXTERNAL, NEW_SITE)}


# Label skew (the paper's partial-annotation setting): MACCROBAT's documents dealt to three
# sites by a hash of their ids, each site annotating one group of entity types. A relation
# stays where both its entities do. The coordinator validates and every arm is tested on
# MACCROBAT with all types.
SKEW_SITES = ("skew-a", "skew-b", "skew-c")
SKEW_GROUPS = (
    ("problem", "test", "labvalue", "severity"),
    ("treatment", "drug", "dosage", "route", "frequency"),
    ("bodyloc", "duration", "temporal"),
)


def prepare_label_skew_sites(data: Path, out: Path) -> dict[str, Path]:
    """One site folder per entry of SKEW_SITES under `out/sites` (kept if already there)."""
    source = data / "maccrobat"
    site = json.loads((source / "site.json").read_text())
    documents = [json.loads(line) for line in (source / "documents.jsonl").open(encoding="utf-8") if line.strip()]
    order = sorted(documents, key=lambda d: _rank(d["id"]))
    folders = {}
    for k, (name, types) in enumerate(zip(SKEW_SITES, SKEW_GROUPS, strict=True)):
        target = out / "sites" / name
        folders[name] = target
        if (target / "site.json").is_file():
            continue
        unknown = set(types) - set(site["entity_types"])
        if unknown:
            raise ValueError(f"{source / 'site.json'}: label skew needs entity types {sorted(unknown)}")
        kept = [_only_types(doc, set(types)) for doc in order[k::len(SKEW_SITES)]]
        relation_types = sorted({r["type"] for doc in kept for r in doc["relations"]})
        target.mkdir(parents=True, exist_ok=True)
        (target / "documents.jsonl").write_text("".join(json.dumps(d) + "\n" for d in kept), encoding="utf-8")
        (target / "site.json").write_text(json.dumps(
            {**site, "name": name, "entity_types": list(types),
             "relation_types": [t for t in site["relation_types"] if t in relation_types]}, indent=2))
    return folders


def _only_types(doc: dict[str, Any], types: set[str]) -> dict[str, Any]:
    """The document with only the entities of `types` and what refers to them alone."""
    entities = [e for e in doc["entities"] if e["type"] in types]
    ids = {e["id"] for e in entities}
    return {
        **doc,
        "entities": entities,
        "relations": [r for r in doc["relations"] if r["arg1"] in ids and r["arg2"] in ids],
        "attributes": [a for a in doc.get("attributes", []) if a["target"] in ids],
        "groups": [g for g in doc.get("groups", []) if set(g["members"]) <= ids],
    }


# --- the model and local training ----------------------------------------------------------

class Workbench:
    """One base model with a LoRA adapter, loaded once, for local training and scoring."""

    def __init__(self, profile: Profile, dtype: str = "auto") -> None:
        from modeling.base import load_base_model
        from modeling.lora import LoraSettings, attach_lora

        self.profile = profile
        model, self.tokenizer = load_base_model(profile.model, profile.quantization, dtype)
        self.dtype = str(next(model.parameters()).dtype).removeprefix("torch.")  # what this bench computes in
        self.model = attach_lora(model, LoraSettings(), seed=0)
        from modeling.adapter_io import get_adapter_state

        self.initial = get_adapter_state(self.model)
        self._examples: dict[str, list] = {}

    def examples(self, name: str, folder: Path) -> list:
        if name not in self._examples:
            site = load_site(folder, name=name)
            self._examples[name], _ = encode_all(self.tokenizer, training_pairs(site_instances(site, "train")),
                                                 self.profile.max_length, PREFIX_END)
        return self._examples[name]

    def settings(self, steps: int, **overrides: Any) -> TrainSettings:
        return TrainSettings(max_steps=steps, max_length=self.profile.max_length, **overrides)

    def train(self, examples: Sequence, steps_per_round: int, rounds: int, start: dict | None, target: Path,
              **overrides: Any) -> Path:
        """R rounds of `steps_per_round` steps, as a site trains them (the optimizer's moments
        kept from round to round unless `keep_optimizer_state=False`, one learning-rate
        schedule across rounds); saves a PEFT adapter folder. `overrides`: TrainSettings
        fields (learning_rate, loraplus_lr_ratio, ...)."""
        from modeling.adapter_io import get_adapter_state, save_peft_folder, set_adapter_state

        if (target / "adapter_model.safetensors").is_file():
            return target
        set_adapter_state(self.model, start or self.initial)
        settings = self.settings(steps_per_round, **overrides)
        seconds = tokens = 0.0
        kept = None
        for r in range(1, rounds + 1):
            result = train_round(self.model, examples, settings, self.tokenizer.pad_token_id, r, rounds,
                                 description=f"{target.parent.name} round {r}", optimizer_state=kept)
            kept = result.optimizer_state
            seconds += result.seconds
            tokens += result.tokens
        tmp = target.with_name(target.name + ".tmp")
        save_peft_folder(get_adapter_state(self.model), self.model.peft_config["default"], tmp)
        (tmp / "training.json").write_text(json.dumps({"rounds": rounds, "steps-per-round": steps_per_round,
                                                       "train-seconds": seconds, "train-tokens": tokens,
                                                       "dtype": self.dtype, "settings": asdict(settings)}))
        tmp.rename(target)
        return target

    def outputs(self, adapter: Path | None, instances: Sequence, cache: Path, description: str) -> list[str]:
        """Generated answers of an adapter (None = the base model) for `instances`, cached."""
        from modeling.adapter_io import load_peft_folder, set_adapter_state

        key = outputs_key(instances, self.profile.constrained, adapter)
        if cache.is_file():
            saved = json.loads(cache.read_text())
            if saved.get("instances") == key:
                return saved["outputs"]
        set_adapter_state(self.model, load_peft_folder(adapter) if adapter else self.initial)
        evaluator = InstanceEvaluator(self.tokenizer, instances, self.profile.max_length,
                                      self.profile.max_new_tokens, self.profile.eval_batch_size,
                                      constrained=self.profile.constrained)
        start = time.perf_counter()
        outputs = evaluator.generate(self.model, description)
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"instances": key, "outputs": outputs,
                                     "seconds": time.perf_counter() - start}))
        return outputs


def outputs_key(instances: Sequence, constrained: bool, adapter: Path | None) -> str:
    """What cached answers were generated from: the instances, the decoding and the
    adapter's weights, so a run made again (other settings, other code) is never scored with
    the answers of the adapter it replaced."""
    weights = hashlib.sha256((adapter / "adapter_model.safetensors").read_bytes()).hexdigest() if adapter else "base"
    return hashlib.sha256(json.dumps([[i.doc_id, i.offset, i.task] for i in instances]
                                     + [constrained, weights]).encode()).hexdigest()[:16]


def single_site_steps(profile: Profile, site_steps: dict[str, int]) -> dict[str, int]:
    """Steps per round of each single-site arm: the site's own steps in the federation (the
    paper's shape), or the federation's whole budget, all sites' steps (equal instances)."""
    if profile.budget == "equal-local-steps":
        return dict(site_steps)
    return {name: sum(site_steps.values()) for name in site_steps}


def steps_per_round(bench: Workbench, sites: dict[str, Path]) -> int:
    """The federation's optimizer steps per round, summed over the training sites."""
    settings = bench.settings(bench.profile.steps)
    return sum(settings.steps_per_round(len(bench.examples(n, sites[n]))) for n in TRAINING_SITES)


# --- federated runs --------------------------------------------------------------------------

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
                        http_port=39491, control_port=39493, stdout=stream)
    if code != 0 or not (run / "summary.json").is_file():
        raise RuntimeError(f"{arm}: flwr run failed (exit {code}); see {out / f'{arm}.log'}")
    if done is None:
        write_wall(run, start, start_time)
    return run


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


def read_rounds(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


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


def site_speed(run: Path) -> dict[str, float]:
    tokens: dict[str, float] = {}
    seconds: dict[str, float] = {}
    for record in read_rounds(run):
        for site in record.get("sites", []):
            tokens[site["site"]] = tokens.get(site["site"], 0) + site["train"]["train-tokens"]
            seconds[site["site"]] = seconds.get(site["site"], 0) + site["train"]["train-seconds"]
    return {name: tokens[name] / seconds[name] for name in tokens if seconds[name] > 0}


# --- scoring ----------------------------------------------------------------------------------

@functools.cache  # every arm is scored on the same splits: read each once
def test_instances(folder: Path, name: str, limit: int) -> tuple[list, str | None]:
    site = load_site(folder, name=name)
    return stable_subset(site_instances(site, "test"), limit), site.score_by


def score(bench: Workbench, arm: str, adapter: Path | None, test: str, folder: Path, out: Path) -> dict[str, Any]:
    instances, score_by = test_instances(folder, test, bench.profile.test_limit(test))
    outputs = bench.outputs(adapter, instances, out / "outputs" / arm / f"{test}.json", f"{arm} on {test}")
    return scored(instances, outputs, score_by)


def scored(instances: Sequence, outputs: Sequence[str], score_by: str | None) -> dict[str, Any]:
    """Scores with bootstrap intervals, and the per-document counts paired comparisons need
    (the same instances give the same documents in the same order for every arm)."""
    _, counts = document_counts(instances, outputs, score_by)
    intervals = bootstrap(counts, score_by=score_by)
    entities, relations = score_outputs(instances, outputs, score_by)
    return {"instances": len(instances), "documents": int(counts.shape[0]),
            "scores": {k: v.to_dict() for k, v in intervals.items()}, "document-counts": counts.tolist(),
            # predicted entity strings and relation arguments that are not in their sentence
            "unaligned": not_in_sentence(instances, outputs),
            # predictions scoring could not place: those, and copies past the sentence's
            # occurrences (a relation repeated more often than its arguments' pairs)
            "dropped": entities.unaligned + relations.unaligned,
            "dropped-entities": entities.unaligned, "dropped-relations": relations.unaligned,
            "malformed": entities.malformed + relations.malformed,
            # NER strict (tp, fp, fn) per entity type: where an arm wins or loses
            "per-type": {t: [strict.tp, strict.fp, strict.fn] for t, (strict, _) in entities.per_type.items()}}


def not_in_sentence(instances: Sequence, outputs: Sequence[str]) -> int:
    """Predicted entity strings and relation arguments found nowhere in their sentence, even
    ignoring case (what constrained decoding rules out)."""
    count = 0
    for instance, output in zip(instances, outputs, strict=True):
        text = instance.text.lower()
        if instance.task == RE and not instance.given_entities:
            strings = [arg for _, *args in parse_relations(output, instance.relation_types).relations for arg in args]
        elif instance.task == RE:
            continue  # numbers of listed entities, not strings
        else:
            strings = [mention for _, mention in parse_entities(output, instance.entity_types).entities]
        count += sum(1 for string in strings if string.strip() and string.strip().lower() not in text)
    return count


def refresh_counts(path: Path, profile: str, out: Path, sites: dict[str, Path], limit: Callable[[str], int]) -> list[str]:
    """Recompute each recorded arm's derived counts (`unaligned`, `dropped`, `malformed`,
    per type) from its cached outputs under `out`, after their definitions changed; an arm
    whose cached outputs are missing or no longer give its recorded scores is left as it is.
    Returns the arms refreshed."""
    data = json.loads(path.read_text())
    arms = data["profiles"][profile]["arms"]
    refreshed = []
    for arm, per_test in arms.items():
        if arm.startswith("run/"):
            continue
        name = arm.split("/", 1)[1] if arm.startswith("new-site/") else arm
        entries = {NEW_SITE: per_test} if arm.startswith("new-site/") else per_test
        fresh_all = {}
        for test, entry in entries.items():
            cache = out / "outputs" / name / f"{test}.json"
            if not cache.is_file():
                break
            instances, score_by = test_instances(sites[test], test, limit(test))
            fresh = scored(instances, json.loads(cache.read_text())["outputs"], score_by)
            if fresh["scores"] != entry["scores"]:
                break
            fresh_all[test] = fresh
        else:
            arms[arm] = fresh_all[NEW_SITE] if arm.startswith("new-site/") else fresh_all
            refreshed.append(arm)
    path.write_text(compact_json(data) + "\n")
    return refreshed


def add_claims(results: dict[str, Any], profile: str) -> None:
    """The paired claims (benchmarks/claims.py) and, per in-domain test set, the widest
    half-width of any arm's NER strict F1 interval, in F1 points."""
    import claims

    scores = results["scores"]
    results["claims"] = claims.evaluate_claims(scores, TRAINING_SITES, profile)
    results["half_width"] = {
        test: max(50 * (s[test]["scores"]["ner-strict-f1"]["high"] - s[test]["scores"]["ner-strict-f1"]["low"])
                  for s in scores.values() if test in s)
        for test in TRAINING_SITES}


# --- report -------------------------------------------------------------------------------------

def _cell(scores: dict[str, Any], measure: str) -> str:
    for key in (f"{measure}-f1", f"{measure}-recall"):
        if key in scores:
            v = scores[key]
            suffix = " (recall)" if key.endswith("recall") else ""
            return f"{v['value']:.3f} [{v['low']:.3f}, {v['high']:.3f}]{suffix}"
    return "-"


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


def _budget_sentence(results: dict[str, Any]) -> str:
    p, budget = results["profile"], results["budget"]
    batch, rounds = budget.get("batch-size", 4), p["rounds"]  # results written before it was recorded used 4
    if budget.get("shape", "equal-instances") == "equal-instances":
        return (f"Budget for every arm: {budget['total-steps']} optimizer steps of batch {batch}, "
                f"{budget['total-steps'] * batch:,} training instances seen ({rounds} rounds x "
                f"{budget['steps-per-round']} steps; each federated site {p['steps'] or 'all'} steps per round).")
    singles = ", ".join(f"{k} {v}" for k, v in budget["single-site-steps-per-round"].items())
    return (f"Budget in the paper's shape (equal local steps): each federated site trains {rounds} rounds of "
            f"its steps per round ({singles}; batch {batch}), and a single site trains the same steps alone; "
            f"centralized trains the sites' sum, {budget['steps-per-round']} steps per round "
            f"({budget['total-steps'] * batch:,} instances), on the pooled data. The `equal-instances/single-*` "
            f"arms train one site for the federation's total ({budget['total-steps']} steps). Model dtype: "
            f"{budget.get('dtype', 'not recorded')}.")


def per_type_gap_rows(scores: dict[str, Any], arm: str = "fedmedlora") -> list[str]:
    """Where the federation wins or loses: per in-domain test set and entity type, its NER
    strict F1 minus each single site's (F1 points)."""
    singles = [a for a in scores if a.startswith("single-")]
    if arm not in scores or not singles or not all("per-type" in scores[arm].get(t, {}) for t in TRAINING_SITES):
        return []
    lines = ["", f"### {arm} minus each single site, per test set and entity type (NER strict F1 points)", "",
             "| test set | type | gold | " + " | ".join(f"{arm} F1" if a == arm else f"- {a}"
                                                       for a in (arm, *singles)) + " |",
             "|---|---|---:|" + "---:|" * (1 + len(singles))]

    def f1(counts: list[int]) -> float:
        tp, fp, fn = counts
        return 2 * tp / (2 * tp + fp + fn) if tp else 0.0

    for test in TRAINING_SITES:
        ours = scores[arm][test]["per-type"]
        for type_, counts in ours.items():
            cells = [f"{f1(counts):.3f}"]
            for single in singles:
                theirs = scores[single].get(test, {}).get("per-type", {}).get(type_)
                cells.append(f"{100 * (f1(counts) - f1(theirs)):+.1f}" if theirs else "-")
            lines.append(f"| {test} | {type_} | {counts[0] + counts[2]} | " + " | ".join(cells) + " |")
    return lines


def _external(profile: dict[str, Any]) -> str:
    n = profile.get("external_instances")
    return f" ({n} on the external {EXTERNAL})" if n else ""


def markdown(results: dict[str, Any]) -> str:
    p = results["profile"]
    lines = [
        "# Results: the paper's protocol on the shared corpora",
        "",
        "Generated by `benchmarks/protocol.py`; do not edit by hand.",
        "",
        f"Command: `{results['command']}`",
        "",
        *([f"Report (claims added from the cached outputs): `{results['report-command']}`", ""]
          if results.get("report-command") else []),
        f"Hardware: {results['hardware']}. Model: `{p['model']}` (quantization `{p['quantization']}`). "
        f"{_budget_sentence(results)} Test sets: {p['test_instances'] or 'all'} instances "
        f"(sentences) per split{_external(p)}, chosen by hash; 95% intervals from 1,000 document-level bootstrap "
        "resamples. ADE annotates only entities in relations, so its entity column is recall.",
        "",
    ]
    if results.get("seconds") is not None:
        lines += [f"Time: {results['seconds'] / 60:.0f} min for this invocation (what an earlier invocation "
                  "finished under `--out` is reused and not counted)." + _profile_time(results.get("profile-time")),
                  ""]
    lines += [
        "## In-domain and external test sets",
        "",
        "Unaligned: predicted entity strings and relation arguments that are not in their sentence. "
        "Dropped: predictions scoring could not place, those and copies past the sentence's occurrences "
        "(a relation repeated more often than its arguments can pair); each is a false positive.",
        "",
        "| arm | test set | instances | NER strict F1 | NER lenient F1 | RE strict F1 | RE lenient F1 | unaligned "
        "| dropped |",
        "|---|---|---:|---|---|---|---|---:|---:|",
    ]
    for arm, per_test in results["scores"].items():
        for test, s in per_test.items():
            sc = s["scores"]
            lines.append(f"| {arm} | {test} | {s['instances']} | {_cell(sc, 'ner-strict')} | "
                         f"{_cell(sc, 'ner-lenient')} | {_cell(sc, 're-strict')} | {_cell(sc, 're-lenient')} | "
                         f"{s.get('unaligned', '-')} | {s.get('dropped', '-')} |")
    lines += per_type_gap_rows(results["scores"])
    gap = results.get("gap")
    if gap:
        lines += ["", "## Federated minus centralized (F1 points, in-domain test sets, mean over the three)", "",
                  "| arm | NER strict | NER lenient | RE strict | RE lenient |", "|---|---:|---:|---:|---:|"]
        for arm, g in gap.items():
            lines.append(f"| {arm} | {g['ner-strict']:+.1f} | {g['ner-lenient']:+.1f} | "
                         f"{g['re-strict']:+.1f} | {g['re-lenient']:+.1f} |")
    if results.get("claims"):
        import claims

        widths = ", ".join(f"{t} ±{w:.1f}" for t, w in results.get("half_width", {}).items())
        lines += ["", "## The paper's claims, as paired comparisons", "",
                  "Differences of NER strict F1 in points, the mean over the three in-domain test sets (label "
                  "skew: MACCROBAT); each "
                  "interval comes from 1,000 paired document-level bootstrap resamples (the same documents "
                  "score both arms). Widest half-width of an arm's own NER strict F1 interval per test set: "
                  f"{widths} points.", "",
                  "| a | b | a - b | 95% paired interval | verdict |", "|---|---|---:|---|---|"]
        for c in results["claims"]:
            lines.append(f"| {c['a']} | {c['b']} | {c['estimate']:+.1f} | [{c['low']:+.1f}, {c['high']:+.1f}] | "
                         f"{c['verdict']} |")
        lines += [""] + [claims.sentence(c) for c in results["claims"]]
    lines += ["", f"## New low-resource site ({NEW_SITE}: {p['new_site_documents']} training documents, "
              f"{p['new_site_steps']} steps)", "",
              "| arm | instances | NER strict F1 | NER lenient F1 | RE strict F1 | RE lenient F1 |",
              "|---|---:|---|---|---|---|"]
    for arm, s in results["new-site"].items():
        sc = s["scores"]
        lines.append(f"| {arm} | {s['instances']} | {_cell(sc, 'ner-strict')} | {_cell(sc, 'ner-lenient')} | "
                     f"{_cell(sc, 're-strict')} | {_cell(sc, 're-lenient')} |")
    lines += ["", "## Per-round validation F1 of the federated arms", "",
              "Coordinator: MACCROBAT's validation split; sites: the mean over the three sites' own "
              f"validation splits ({p['round_eval_instances']} instances each). Plots: "
              + ", ".join(f"[{Path(x).name}](plots/{Path(x).name})" for x in results.get("plots", [])), "",
              "| arm | round | coordinator NER strict / lenient | sites NER strict / lenient | sites RE strict / lenient |",
              "|---|---:|---|---|---|"]
    for arm, rounds in results["curves"].items():
        for r in rounds:
            c, s = r["coordinator"], r["sites"]
            site_cells = (f"{s['strict-f1']:.3f} / {s['lenient-f1']:.3f} | {s['re-strict-f1']:.3f} / "
                          f"{s['re-lenient-f1']:.3f}") if s else "- | -"
            lines.append(f"| {arm} | {r['round']} | {c['strict-f1']:.3f} / {c['lenient-f1']:.3f} | {site_cells} |")
    speed, comm, ovh = results["speed"], results["communication"], results["overhead"]
    lines += ["", "## Speed and communication", "",
              "| what | figure |", "|---|---|",
              *([f"| ClientApp training loop vs plain PEFT loop, same model and batches (median tokens/s) | "
                 f"{speed['loop']['fedmedlora']:.0f} vs {speed['loop']['peft-loop']:.0f}: "
                 f"{100 * speed['loop']['ratio']:.1f}% |"] if speed.get("loop") else []),
              "| tokens/s each site reported inside the Fed-MedLoRA run | "
              + ", ".join(f"{k} {v:.0f}" for k, v in speed["sites"].items()) + " |",
              f"| adapter per site per round, up | {comm['adapter-bytes'] / 1e6:.2f} MB |",
              f"| full-model update (bf16) | {comm['full-model-bytes-bf16'] / 1e6:.1f} MB |",
              f"| upload vs a full-model update | {100 * comm['upload-ratio-to-full-model']:.2f}% "
              f"({comm['upload-reduction-percent']:.1f}% less) |",
              f"| bytes per round, all sites, Fed-MedLoRA (up + down) | "
              f"{comm['bytes-per-round'] / 1e6:.1f} MB |"]
    lines += overhead_rows(p, ovh)
    encodings = results.get("encodings") or {}
    if encodings:
        base = encodings["float32"]
        lines += ["", "Adapter encoding on the wire (`transport.encoding`, both directions, every round of a "
                  "Fed-MedLoRA run); F1 is the mean over the three in-domain test sets:", "",
                  "| encoding | adapter per site per round | vs full model | NER strict F1 (change) | RE strict F1 (change) |",
                  "|---|---:|---:|---|---|"]
        for name, e in encodings.items():
            lines.append(f"| {name} | {e['adapter-bytes'] / 1e6:.2f} MB | {100 * e['upload-ratio-to-full-model']:.2f}% | "
                         f"{e['ner-strict']:.3f} ({100 * (e['ner-strict'] - base['ner-strict']):+.1f} points) | "
                         f"{e['re-strict']:.3f} ({100 * (e['re-strict'] - base['re-strict']):+.1f} points) |")
    return "\n".join(lines) + "\n"


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


def plot_curves(curve_data: dict[str, list[dict[str, Any]]], folder: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for key, title in (("strict-f1", "NER strict F1"), ("lenient-f1", "NER lenient F1"),
                       ("re-strict-f1", "RE strict F1"), ("val-loss", "validation loss")):
        fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
        for arm, rows in curve_data.items():
            axes[0].plot([r["round"] for r in rows], [r["coordinator"][key] for r in rows], marker="o", label=arm)
            site_rows = [r for r in rows if r["sites"]]
            axes[1].plot([r["round"] for r in site_rows], [r["sites"][key] for r in site_rows], marker="o", label=arm)
        axes[0].set_title(f"{title}: coordinator validation")
        axes[1].set_title(f"{title}: sites' validation (mean)")
        for ax in axes:
            ax.set_xlabel("round")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        path = folder / f"rounds-{key}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(str(path))
    return written


def repo_relative(path: Path) -> str:
    """`path` relative to the repository, `..` steps included where it lies outside it:
    committed results name no folder of the machine they ran on."""
    return os.path.relpath(path.resolve(), REPO)


def hardware() -> str:
    import torch

    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    else:
        device = f"CPU only ({platform.processor() or platform.machine()})"
    return (f"{len(os.sched_getaffinity(0))} CPU cores, {device}; Python {platform.python_version()}, "
            f"torch {torch.__version__}")


def federated_gap(scores: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    measures = ("ner-strict", "ner-lenient", "re-strict", "re-lenient")

    def mean(arm: str, m: str) -> float:
        return statistics.fmean(scores[arm][t]["scores"][f"{m}-f1"]["value"] for t in TRAINING_SITES)

    return {arm: {m: 100 * (mean(arm, m) - mean("centralized", m)) for m in measures}
            for arm in FEDERATED_ARMS if arm in scores and "centralized" in scores}


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
        "hardware": f"{platform.machine()}, {len(os.sched_getaffinity(0))} CPU(s)",
        "settings": {"rounds": profile["overhead_rounds"], "steps": profile["overhead_steps"], "sites": 3},
        "simulation": {"before": kept("simulation") or (overhead_summary(before_simulation) if before_simulation else None),
                       "after": overhead_summary(overheads["simulation"])},
        "deployment": {"before": kept("deployment") or overhead_summary(overheads[COLD_DEPLOYMENT]),
                       "after": overhead_summary(overheads["loopback deployment"]),
                       "no_site_workers": overhead_summary(overheads[COLD_DEPLOYMENT])},
    }


def report_only(out: Path, sites: dict[str, Path], profile: Profile, name: str, target: Path | None,
                settings: dict[str, Any]) -> int:
    """Rebuild the report from `out`'s results.json: per-document counts from the cached
    outputs (for results written before they were kept), then the claims."""
    path = out / "results.json"
    if not path.is_file():
        raise SystemExit(f"--report-only: {path} does not exist; run the profile first")
    results = json.loads(path.read_text())
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
    results["report-command"] = "python benchmarks/protocol.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    store = ArmStore(target.parent / "results.json" if target else None, name, settings, timed=False)
    results["profile-time"] = store.profile_time() or results.get("profile-time")
    store.finish(results)
    return write_report(results, out, target, results.get("plots", []))


def claims_so_far(path: Path, profile: str) -> tuple[str, dict[str, Any]]:
    """The claims decided by the arms of `profile` recorded in `path`, and each arm's NER
    strict F1 per test set: a profile's state while it runs or between its invocations.
    Returns the report's text and the same as a JSON-ready record."""
    import claims

    if not path.is_file():
        raise SystemExit(f"--claims-so-far: {path} does not exist")
    entry = json.loads(path.read_text())["profiles"].get(profile)
    if not entry or not entry.get("arms"):
        raise SystemExit(f"--claims-so-far: {path} has no recorded arm of the {profile} profile")
    scores = {arm: value for arm, value in entry["arms"].items() if not arm.startswith(("run/", "new-site/"))}
    tests = (*TRAINING_SITES, EXTERNAL)
    lines = [f"{profile} profile, {len(scores)} arm(s) recorded in {path} ({entry.get('seconds', 0) / 60:.0f} min "
             f"over {len(entry.get('invocations', []))} invocation(s)); NER strict F1:",
             "| arm | " + " | ".join(tests) + " |", "|---|" + "---:|" * len(tests)]
    for arm, per_test in scores.items():
        cells = []
        for test in tests:
            measured = per_test.get(test, {}).get("scores", {})
            key = next((k for k in ("ner-strict-f1", "ner-strict-recall") if k in measured), None)
            cells.append("-" if key is None else f"{measured[key]['value']:.3f}" + (" (recall)" if "recall" in key else ""))
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    decided = claims.evaluate_claims(scores, TRAINING_SITES, profile)
    lines += ["", f"Claims whose arms are recorded ({len(decided)} of {len(claims.CLAIMS)}):"]
    lines += [f"{claims.sentence(c)} [budget: {c['budget']}]" for c in decided]
    record = {"profile": profile, "source": repo_relative(path), "arms": sorted(scores),
              "minutes": round(entry.get("seconds", 0) / 60, 1), "claims": decided}
    return "\n".join(lines), record


# --- main ---------------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
    parser.add_argument("--only", choices=["overhead"],
                        help="measure only the federation overhead, before and after the warm site; with --results, "
                             "write its section there")
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
    args = parser.parse_args(argv)
    if args.claims_so_far:
        if args.results is None:
            parser.error("--claims-so-far needs --results (the results.json beside it holds the arms)")
        text, record = claims_so_far(args.results.parent / "results.json", args.profile)
        print(text)
        if args.claims_so_far != Path("-"):
            record["command"] = "python benchmarks/protocol.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
            args.claims_so_far.write_text(compact_json(record) + "\n")
        return 0
    # SIGTERM unwinds like Ctrl-C, so a running `flwr run` and its SuperLink are stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    profile = PROFILES[args.profile]
    if args.model:
        profile = replace(profile, model=args.model)
    for item in args.set:
        field, sep, value = item.partition("=")
        if not sep or field not in Profile.__dataclass_fields__:
            parser.error(f"--set {item!r}: expected FIELD=VALUE with FIELD one of {list(Profile.__dataclass_fields__)}")
        current = getattr(profile, field)
        if isinstance(current, bool):
            if value.lower() not in ("true", "false"):
                parser.error(f"--set {item!r}: {field} takes true or false")
            parsed: Any = value.lower() == "true"
        elif isinstance(current, tuple):
            parsed = tuple(v.strip() for v in value.split(",") if v.strip())
            unknown = [v for v in parsed if field == "federated_arms" and v not in FEDERATED_ARMS]
            if unknown:
                parser.error(f"--set {item!r}: unknown federated arm(s) {unknown}; known: {list(FEDERATED_ARMS)}")
        else:
            parsed = type(current)(value)
        profile = replace(profile, **{field: parsed})
    if profile.budget not in BUDGETS:
        parser.error(f"--set budget={profile.budget}: expected one of {list(BUDGETS)}")
    trained = [*(args.out / "runs").glob("*/summary.json"), *(args.out / "arms").glob("*/adapter/adapter_model.safetensors")]
    if args.restart_profile and trained:
        # Finished runs and adapters in --out are reused by name: a restart there would score the old ones.
        parser.error(f"--restart-profile: {args.out} holds trained arms that would be reused ({trained[0].parent}); "
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
        parser.error(f"--out {out} holds results made with other settings ({recorded}); "
                     "use another --out, or delete that folder to start again")
    recorded.write_text(json.dumps(settings, indent=2))
    command = "python benchmarks/protocol.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    started = time.perf_counter()

    sites = prepare_sites(args.data.resolve(), out, profile.new_site_documents)
    if args.refresh_counts:
        if args.results is None:
            parser.error("--refresh-counts needs --results (the results.json beside it holds the arms)")
        done = refresh_counts(args.results.parent / "results.json", args.profile, out, sites, profile.test_limit)
        print(f"refreshed the counts of {len(done)} arm(s): {', '.join(done)}")
        return 0
    if args.report_only and args.only != "overhead":
        return report_only(out, sites, profile, args.profile, args.results, settings)
    if args.before_runs and (args.only != "overhead" or not all(
            (args.before_runs / run / "metrics.jsonl").is_file() for run in ("deployment-cold", "overhead-simulation"))):
        parser.error(f"--before-runs {args.before_runs}: needs --only overhead and a runs folder of an earlier "
                     "--only overhead measurement (deployment-cold/ and overhead-simulation/ with their metrics.jsonl)")
    if args.only == "overhead":
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
    store = ArmStore(args.results.parent / "results.json" if args.results else None, args.profile, settings,
                     restart=args.restart_profile)
    bench = Workbench(profile)
    per_round = steps_per_round(bench, sites)
    batch = TrainSettings().batch_size
    site_steps = {n: bench.settings(profile.steps).steps_per_round(len(bench.examples(n, sites[n])))
                  for n in TRAINING_SITES}  # what each site trains per round in the federation
    single_steps = single_site_steps(profile, site_steps)
    log.info("budget (%s): federation and centralized %d rounds x %d steps of %d = %d instances; single sites "
             "%s steps per round", profile.budget, profile.rounds, per_round, batch,
             profile.rounds * per_round * batch, single_steps)

    # Each arm is trained only when its scores are not recorded yet (--results keeps them per arm).
    tests = (*TRAINING_SITES, EXTERNAL)
    config = federated_config(profile, out / "sites", out / "runs")
    runs: dict[str, Path] = {}

    def federated(arm: str, keys: dict[str, Any]) -> Path:
        run = runs[arm] = run_federated(arm, {**config, **keys}, out / "runs")
        if store.scores(f"run/{arm}") is None:  # what the report needs from the run itself
            summary = json.loads((run / "summary.json").read_text())
            communication = dict(summary["communication"])
            communication["bytes-per-round"] = (communication["bytes-up-total"]
                                                + communication["bytes-down-total"]) / summary["rounds"]
            store.save(f"run/{arm}", {"curve": curves({arm: run})[arm], "communication": communication,
                                      "site-speed": site_speed(run)})
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
        prepare_label_skew_sites(args.data.resolve(), out)
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
    new_site_adapters: dict[str, Callable[[], Path | None]] = {
        "zero-shot": lambda: None,
        "fedmedlora": lambda: federated("fedmedlora", FEDERATED_ARMS["fedmedlora"]),
        "new-site-alone": lambda: bench.train(few, profile.new_site_steps, 1, None,
                                              out / "arms" / "new-site-alone" / "adapter"),
        "new-site-from-global": lambda: bench.train(
            few, profile.new_site_steps, 1, load_peft_folder(federated("fedmedlora", FEDERATED_ARMS["fedmedlora"])),
            out / "arms" / "new-site-from-global" / "adapter"),
    }
    new_site = {arm: store.scores(f"new-site/{arm}") or store.save(
        f"new-site/{arm}", score(bench, arm, new_site_adapters[arm](), NEW_SITE, sites[NEW_SITE], out))
        for arm in NEW_SITE_ARMS}
    federated_runs = {arm: store.scores(f"run/{arm}") for arm in scores if arm in {**FEDERATED_ARMS, **SKEW_ARMS}}

    # Speed and communication.
    import train_speed

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
        "command": command,
        "hardware": hardware(),
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


class ArmStore:
    """Each finished arm's scores in the committed results file (`--results`' results.json),
    by profile, written as soon as the arm is scored, so a later run (another `--out`, another
    day) skips the arms already there. The file holds `profiles` (per profile: `settings`,
    `arms` as they finish, the last finished run's whole results, `invocations` and
    `seconds`) and `claims` (every profile's). Without `--results` nothing is kept beyond `--out`.

    `seconds` is the profile's wall time: the sum over the invocations that trained arms, each
    counted from its start to the last arm it finished (an arm stopped midway is not counted;
    the invocation that finishes it counts it whole unless it resumed a checkpointed run).
    `timed=False` (--report-only) records no invocation."""

    def __init__(self, path: Path | None, profile: str, settings: dict[str, Any], timed: bool = True,
                 restart: bool = False) -> None:
        settings = json.loads(json.dumps(settings))  # as the file holds them (lists, not tuples)
        self.path, self.profile, self.settings = path, profile, settings
        self.data: dict[str, Any] = {"profiles": {}, "claims": []}
        if path is not None and path.is_file():
            data = json.loads(path.read_text())
            if "profiles" not in data:  # the quick profile's results, as written before arms were kept
                data = {"profiles": {"quick": {"results": data}}, "claims": []}
            self.data = data
        if restart and self.data["profiles"].pop(profile, None) is not None:
            log.info("%s: the %s profile's recorded arms dropped (--restart-profile)", path, profile)
            self.data["claims"] = [c for c in self.data.get("claims", []) if c["profile"] != profile]
        entry = self.data["profiles"].setdefault(profile, {})
        if entry.get("settings") not in (None, settings):
            raise SystemExit(f"{path}: the {profile} profile's arms there were made with other settings "
                             f"({entry['settings']}); pass --restart-profile to start the profile afresh")
        entry["settings"] = settings
        entry.setdefault("arms", {})
        self.started = time.perf_counter()
        self.invocation: dict[str, Any] | None = None
        if timed:
            self.invocation = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": 0.0}
            entry.setdefault("invocations", []).append(self.invocation)

    def scores(self, arm: str) -> Any:
        return self.data["profiles"][self.profile]["arms"].get(arm)

    def save(self, arm: str, value: Any) -> Any:
        entry = self.data["profiles"][self.profile]
        entry["arms"][arm] = value
        if self.invocation is not None:
            self.invocation["seconds"] = round(time.perf_counter() - self.started, 1)
            self.invocation.setdefault("arms", []).append(arm)
            entry["seconds"] = round(sum(i["seconds"] for i in entry["invocations"]), 1)
        self._write()
        return value

    def profile_time(self) -> dict[str, Any] | None:
        """`seconds` and `invocations` of this profile, None when no invocation was timed."""
        entry = self.data["profiles"][self.profile]
        if "seconds" not in entry:
            return None
        return {"seconds": entry["seconds"], "invocations": entry["invocations"]}

    def finish(self, results: dict[str, Any]) -> None:
        self.data["profiles"][self.profile]["results"] = results
        self.data["claims"] = [c for c in self.data.get("claims", []) if c["profile"] != self.profile]
        self.data["claims"] += results.get("claims", [])
        self._write()

    def _write(self) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(compact_json(self.data))
            tmp.replace(self.path)


NUMBER_LIST = re.compile(r"\[[-+0-9.eE,\s]*\]")


def compact_json(data: Any) -> str:
    """Indented JSON with every list of plain numbers on one line (the per-document counts
    would otherwise take a line per number)."""
    return NUMBER_LIST.sub(lambda m: "[" + ", ".join(m.group(0)[1:-1].replace(",", " ").split()) + "]",
                           json.dumps(data, indent=2)) + "\n"


def _profile_time(timing: dict[str, Any] | None) -> str:
    """The sentence on the profile's whole wall time, from ArmStore.profile_time()."""
    if not timing:
        return ""
    parts = []
    for invocation in timing["invocations"]:
        if not invocation["seconds"]:
            continue
        arms = [a for a in invocation.get("arms", []) if not a.startswith("run/")]
        note = f", {invocation['note']}" if invocation.get("note") else ""
        parts.append(f"{invocation['seconds'] / 60:.0f} min from {invocation['started'][:10]} ({len(arms)} arms{note})")
    return (f" All the profile's arms: {timing['seconds'] / 60:.0f} min of wall time over the invocations "
            f"that trained them ({'; '.join(parts)}).")


def write_report(results: dict[str, Any], out: Path, target: Path | None, plots: Sequence[str]) -> int:
    """results.json, RESULTS.md (and plots) under `out`, and beside `target` when given."""
    (out / "results.json").write_text(compact_json(results))
    text = markdown(results)
    (out / "RESULTS.md").write_text(text)
    if target:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        overhead_json = target.parent / "benchmarks" / "overhead.json"
        if overhead_json.is_file():  # measured by --only overhead; kept when the report is rebuilt
            write_overhead_section(target, json.loads(overhead_json.read_text()))
        target_plots = target.parent / "plots"
        target_plots.mkdir(exist_ok=True)
        for plot in plots:
            (target_plots / Path(plot).name).write_bytes((REPO / plot).read_bytes())  # relative: to the repository
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
