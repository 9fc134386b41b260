"""The token-classification arms (docs/token-classification.md): entity recognition as BIO tags
from a classification head on the profile's base model, LoRA and the head trained, as the
paper's BERT baseline. Single site, centralized and federated (Fed-MedLoRA), each in the budget
of its generative counterpart (the same steps of the same batch size), scored on the same test
sentences by the same entity scorer; their relation scores are 0 (tags hold no relations).

Opt-in, so a profile recorded without them is unchanged: `--token-classification` adds them to
a profile's run, `--only token-classification` trains and scores only them. They are new keys
of the profile's arms (`TOKEN_ARMS`), each test set's entry with its training and scoring
seconds (`train-seconds`, `score-seconds`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clinical_ie.evaluate import site_instances
from clinical_ie.instances import NER
from clinical_ie.tagging import bio_labels
from clinical_ie.token_classification import TaggerEvaluator, training_examples
from data_loaders.sites import load_site, union_entity_types
from modeling.token_classification import TAGGING, TOKEN_CLASSIFICATION, save_labels

from .arms import read_rounds, record_run, run_federated
from .profiles import EXTERNAL, TOKEN_PREFIX, TRAINING_SITES, Profile
from .scoring import scored_spans, test_instances
from .store import ArmStore
from .workbench import Workbench, outputs_key

log = logging.getLogger("protocol")
FEDERATED = f"{TOKEN_PREFIX}fedmedlora"


class TaggerBench(Workbench):
    """The profile's base model as a tagger over the BIO labels of `label_types`, with LoRA and
    its head, loaded once; trains as the Workbench does (`train_round`, round by round)."""

    step = TAGGING

    def __init__(self, profile: Profile, label_types: Sequence[str], dtype: str = "auto") -> None:
        from modeling.adapter_io import get_adapter_state
        from modeling.lora import LoraSettings
        from modeling.token_classification import load_for_task

        self.profile = profile
        self.labels = bio_labels(label_types)
        self.model, self.tokenizer = load_for_task(TOKEN_CLASSIFICATION, profile.model, profile.quantization, dtype,
                                                   LoraSettings(), seed=0, labels=self.labels)
        self.dtype = str(next(self.model.parameters()).dtype).removeprefix("torch.")
        self.initial = get_adapter_state(self.model)
        self._examples: dict[str, list] = {}

    def examples(self, name: str, folder: Path) -> list:
        if name not in self._examples:
            site = load_site(folder, name=name)
            self._examples[name], _ = training_examples(self.tokenizer, site_instances(site, "train", ("ner",)),
                                                        self.labels, self.profile.max_length)
        return self._examples[name]

    def save_beside(self, folder: Path) -> None:
        save_labels(folder, self.labels)

    def spans(self, adapter: Path, instances: Sequence, cache: Path) -> tuple[list, float]:
        """Each entity instance's predicted spans (None for a relation instance) and the seconds
        scoring took, cached beside the generative arms' answers."""
        from modeling.adapter_io import load_peft_folder, set_adapter_state

        key = outputs_key(instances, False, adapter)
        if cache.is_file():
            saved = json.loads(cache.read_text())
            if saved.get("instances") == key:
                return saved["spans"], saved["seconds"]
        set_adapter_state(self.model, load_peft_folder(adapter))
        start = time.perf_counter()
        predicted = iter(TaggerEvaluator(self.tokenizer, instances, self.labels, self.profile.max_length,
                                         self.profile.eval_batch_size).predict(self.model))
        spans = [[list(s) for s in next(predicted)] if i.task == NER else None for i in instances]
        seconds = time.perf_counter() - start
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"instances": key, "spans": spans, "seconds": seconds}))
        return spans, seconds


def train_seconds(adapter: Path) -> float:
    """Training seconds behind an adapter: a local arm's (training.json), or a federated run's
    sum over its rounds and sites (the folder above `final/`)."""
    if (adapter / "training.json").is_file():
        return json.loads((adapter / "training.json").read_text())["train-seconds"]
    return sum(site["train"]["train-seconds"] for record in read_rounds(adapter.parent)
               for site in record.get("sites", []))


def run_token_arms(profile: Profile, store: ArmStore, sites: dict[str, Path], out: Path, config: dict[str, Any],
                   per_round: int, single_steps: dict[str, int]) -> dict[str, Any]:
    """Every token-classification arm scored on the profile's test sets, each trained only when
    its scores are not in `store` yet; returns the arms' scores."""
    tests = (*TRAINING_SITES, EXTERNAL)
    # The label set a federation of the training sites uses (the union of their entity types,
    # as the coordinator takes it); a single site trains the same head on its own types.
    bench = TaggerBench(profile, union_entity_types([sites[n] for n in TRAINING_SITES]))

    def local(arm: str, examples: list, steps: int) -> Path:
        return bench.train(examples, steps, profile.rounds, None, out / "arms" / arm.replace("/", "-") / "adapter")

    def federated() -> Path:
        run = run_federated(FEDERATED.replace("/", "-"), {**config, "model.task": TOKEN_CLASSIFICATION,
                                                          "data.tasks": "ner", "strategy.name": "fedmedlora"},
                            out / "runs")
        record_run(store, FEDERATED, run)
        return run / "final"

    arms = {f"{TOKEN_PREFIX}single-{name}": (lambda name=name: local(
        f"{TOKEN_PREFIX}single-{name}", bench.examples(name, sites[name]), single_steps[name])) for name in TRAINING_SITES}
    arms[f"{TOKEN_PREFIX}centralized"] = lambda: local(
        f"{TOKEN_PREFIX}centralized", [e for n in TRAINING_SITES for e in bench.examples(n, sites[n])], per_round)
    arms[FEDERATED] = federated
    scores: dict[str, Any] = {}
    for arm, train in arms.items():
        scores[arm] = store.scores(arm)
        if scores[arm] is not None:
            continue
        adapter = train()
        per_test = {}
        for test in tests:
            instances, score_by = test_instances(sites[test], test, profile.test_limit(test))
            spans, seconds = bench.spans(adapter, instances, out / "outputs" / arm / f"{test}.json")
            per_test[test] = {**scored_spans(instances, spans, score_by), "train-seconds": train_seconds(adapter),
                              "score-seconds": seconds}
        scores[arm] = store.save(arm, per_test)
        log.info("%s: NER strict F1 %s", arm, ", ".join(
            f"{t} {per_test[t]['scores'].get('ner-strict-f1', per_test[t]['scores'].get('ner-strict-recall'))['value']:.3f}"
            for t in tests))
    return scores
