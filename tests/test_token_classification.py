"""Token classification (model.task = "token-classification"): a tiny random BERT and the tiny
LLaMA as taggers, the adapter with its head (trained, sent, saved, loaded by PEFT), scoring
with the generative task's scorer, extraction, the run config's checks, the sites' label set,
and every LoRA strategy's handling of the head (a dense tensor averaged by weight)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord

from clinical_ie.instances import GoldEntity, Instance
from clinical_ie.tagging import LabelSetError, bio_labels
from clinical_ie.token_classification import TaggerEvaluator, training_examples
from modeling.adapter_io import get_adapter_state, save_peft_folder, set_adapter_state
from modeling.lora import LoraSettings
from modeling.token_classification import (
    TAGGING,
    TOKEN_CLASSIFICATION,
    adapter_task,
    head_name,
    load_for_task,
    read_labels,
    save_labels,
)
from modeling.training import TrainSettings, train_round
from settings.config import ConfigError, validate
from support.strategy_harness import server_identity  # noqa: F401 - autouse: instructions need the ServerApp's identity

TYPES = ("problem", "drug", "dosage")
LABELS = bio_labels(TYPES)
LORA = {"tiny_bert": LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=("query", "value")),
        "tiny_llama": LoraSettings(r=4, alpha=8, dropout=0.0)}
TEXT = ("Chest pain after aspirin 81 mg daily. She denied nausea.\nMetformin 500 mg was started for "
        "diabetes; the pain resolved.")


def _instances() -> list[Instance]:
    def sentence(doc: str, text: str, *entities: tuple[str, str]) -> Instance:
        golds = []
        for typ, mention in entities:
            start = text.index(mention)
            golds.append(GoldEntity(typ, ((start, start + len(mention)),), mention))
        return Instance(doc, 0, text, TYPES, tuple(sorted(golds, key=lambda g: g.start)))

    return [
        sentence("d1", "Chest pain after aspirin 81 mg daily.", ("problem", "Chest pain"), ("drug", "aspirin"),
                 ("dosage", "81 mg")),
        sentence("d1", "She denied nausea.", ("problem", "nausea")),
        sentence("d2", "Metformin 500 mg was started for diabetes.", ("drug", "Metformin"), ("dosage", "500 mg"),
                 ("problem", "diabetes")),
        sentence("d2", "No new complaints today."),
    ]


@pytest.fixture(params=["tiny_bert", "tiny_llama"])
def tagger(request):
    """(model folder, PeftModel with a random head, tokenizer, lora settings), float32."""
    folder = request.getfixturevalue(request.param)
    lora = LORA[request.param]
    model, tokenizer = load_for_task(TOKEN_CLASSIFICATION, str(folder), "none", "float32", lora, seed=0,
                                     labels=LABELS)
    return folder, model, tokenizer, lora


def test_the_adapter_holds_the_lora_factors_and_the_head_and_both_train(tagger):
    _, model, tokenizer, _ = tagger
    before = get_adapter_state(model)
    head = [k for k in before if ".lora_" not in k]
    assert head and all(f".{head_name(model)}." in k for k in head)
    assert {before[k].shape[0] for k in head} == {len(LABELS)}  # weight (labels, hidden) and bias (labels,)
    examples, dropped = training_examples(tokenizer, _instances(), LABELS, 512)
    assert len(examples) == 4 and dropped == 0 and examples[0].answer_len == len(examples[0].tags) > 0
    result = train_round(model, examples, TrainSettings(max_steps=2, batch_size=2), tokenizer.pad_token_id, 1, 1,
                         step=TAGGING)
    assert result.steps == 2 and np.isfinite(result.loss) and result.optimizer_state is not None
    after = get_adapter_state(model)
    assert list(after) == list(before)
    assert any(not np.array_equal(after[k], before[k]) for k in head)
    assert any(not np.array_equal(after[k], before[k]) for k in after if ".lora_B." in k)


def test_scores_use_the_entity_scorer_on_the_instances_and_spans_are_sentence_substrings(tagger):
    _, model, tokenizer, _ = tagger
    evaluator = TaggerEvaluator(tokenizer, _instances(), LABELS, 512, batch_size=3)
    evaluation = evaluator.evaluate(model)
    metrics = evaluation.to_metrics()
    assert metrics["ner-instances"] == 4 and metrics["unaligned"] == 0 and np.isfinite(metrics["val-loss"])
    gold = sum(len(i.entities) for i in _instances())
    assert evaluation.scores.strict.tp + evaluation.scores.strict.fn == gold
    for instance, spans in zip(evaluator.instances, evaluator.predict(model)):
        for typ, start, end in spans:
            assert typ in instance.entity_types and instance.text[start:end].strip() == instance.text[start:end] != ""


def test_an_instance_predicts_only_its_own_types(tagger):
    _, model, tokenizer, _ = tagger
    head = model.get_base_model().get_submodule(head_name(model)).modules_to_save["default"]
    with torch.no_grad():
        head.bias.zero_()
        head.bias[LABELS.index("B-drug")] = 50.0  # every word would be a drug
    only_problems = [Instance(i.doc_id, 0, i.text, ("problem",), ()) for i in _instances()]
    spans = TaggerEvaluator(tokenizer, only_problems, LABELS, 512).predict(model)
    assert all(typ == "problem" for found in spans for typ, _, _ in found)
    assert TaggerEvaluator(tokenizer, _instances(), LABELS, 512).predict(model)[0][0][0] == "drug"


def test_the_saved_adapter_loads_with_peft_and_reproduces_the_predictions(tagger, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForTokenClassification

    from modeling.adapter_io import attach_saved_adapter
    from modeling.token_classification import load_token_classifier

    folder, model, tokenizer, lora = tagger
    examples, _ = training_examples(tokenizer, _instances(), LABELS, 512)
    train_round(model, examples, TrainSettings(max_steps=1, batch_size=4), tokenizer.pad_token_id, 1, 1, step=TAGGING)
    saved = save_peft_folder(get_adapter_state(model), lora.to_peft_config(str(folder), head_name(model)),
                             tmp_path / "adapter")
    save_labels(saved, LABELS)
    assert adapter_task(saved) == TOKEN_CLASSIFICATION and read_labels(saved) == LABELS
    config = json.loads((saved / "adapter_config.json").read_text())
    assert config["task_type"] == "TOKEN_CLS" and config["modules_to_save"] == [head_name(model)]
    expected = TaggerEvaluator(tokenizer, _instances(), LABELS, 512).predict(model)
    assert sum(len(s) for s in expected) > 0  # a random head tags something

    base = AutoModelForTokenClassification.from_pretrained(folder, num_labels=len(LABELS))
    loaded = PeftModel.from_pretrained(base, saved)
    assert type(loaded).__name__ == "PeftModelForTokenClassification"
    assert TaggerEvaluator(tokenizer, _instances(), LABELS, 512).predict(loaded) == expected
    # The path `fedmedlora evaluate` and `extract` take, with the labels read back.
    again, _ = load_token_classifier(str(folder), read_labels(saved), "none", "float32", seed=9)
    assert TaggerEvaluator(tokenizer, _instances(), LABELS, 512).predict(attach_saved_adapter(again, saved)) == expected


@pytest.mark.parametrize("fmt", ["jsonl", "brat"])
def test_extract_writes_brat_or_jsonl_from_a_token_classification_adapter(fmt, tiny_bert, tmp_path):
    from data_loaders.brat import read_brat_folder
    from data_loaders.jsonl import read_jsonl
    from fedmedlora.cli import main

    lora = LORA["tiny_bert"]
    model, _ = load_for_task(TOKEN_CLASSIFICATION, str(tiny_bert), "none", "float32", lora, labels=LABELS)
    head = model.get_base_model().get_submodule(head_name(model)).modules_to_save["default"]
    with torch.no_grad():  # tag every word "problem": maximal spans, one per sentence
        head.bias.zero_()
        head.bias[LABELS.index("I-problem")] = 50.0
    saved = save_peft_folder(get_adapter_state(model), lora.to_peft_config(str(tiny_bert), "classifier"),
                             tmp_path / "adapter")
    save_labels(saved, LABELS)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "n1.txt").write_text(TEXT)
    out = tmp_path / ("out.jsonl" if fmt == "jsonl" else "brat")
    args = ["extract", "--input", str(notes), "--out", str(out), "--adapter", str(saved), "--format", fmt,
            "--types", "problem,drug", "--set", f"model.name={tiny_bert}"]
    assert main(args) == 0
    docs = read_jsonl(out) if fmt == "jsonl" else read_brat_folder(out)
    entities = docs[0].entities
    assert [e.text for e in entities] == ["Chest pain after aspirin 81 mg daily.", "She denied nausea.",
                                          "Metformin 500 mg was started for diabetes; the pain resolved."]
    assert all(TEXT[e.start:e.end] == e.text and e.type == "problem" for e in entities)
    # Asked for a type its head lacks, or for relations: refused, naming what is wrong.
    assert main([*args[:-4], "--types", "treatment", "--set", f"model.name={tiny_bert}"]) == 2
    assert main([*args, "--relation-types", "dosage"]) == 2


def test_run_config_checks():
    base = {"model.task": TOKEN_CLASSIFICATION, "data.tasks": "ner"}
    cfg = validate({**base, "model.label-types": "problem, drug"})
    assert cfg.token_classification() and cfg.declared_label_types() == ("problem", "drug")
    for overrides, message in [
        ({"data.tasks": "ner,re"}, "data.tasks = 'ner,re' cannot be combined with model.task"),
        ({"model.label-types": "problem,pain"}, "model.label-types: unknown entity type"),
        ({"model.label-types": "drug,drug"}, r"model.label-types: \['drug'\] listed more than once"),
        ({"model.task": "tagging"}, "model.task: 'tagging' is not one of"),
    ]:
        with pytest.raises(ConfigError, match=message):
            validate({**base, **overrides})
    with pytest.raises(ConfigError, match="only read with model.task = 'token-classification'"):
        validate({"model.label-types": "drug"})


def _site(folder: Path, types: list[str]) -> Path:
    folder.mkdir(parents=True)
    (folder / "site.json").write_text(json.dumps({"name": "hospital-x", "entity_types": types, "relation_types": []}))
    for i in range(12):  # enough documents that every split holds some
        (folder / f"n{i}.txt").write_text(f"Aspirin {i} mg for chest pain.")
        (folder / f"n{i}.ann").write_text(f"T1\tdrug 0 7\tAspirin\nT2\tproblem {len(str(i)) + 16} "
                                          f"{len(str(i)) + 26}\tchest pain\n")
    return folder


def test_a_site_annotating_a_type_the_label_set_lacks_gets_an_error_naming_both(tiny_bert, tmp_path):
    from client_app.handlers import _category
    from client_app.runtime import site_runtime
    from modeling.base import load_tokenizer

    cfg = validate({"model.task": TOKEN_CLASSIFICATION, "data.tasks": "ner", "model.name": str(tiny_bert)})
    folder = _site(tmp_path / "site", ["drug", "problem"])
    tokenizer = load_tokenizer(str(tiny_bert))
    site = site_runtime({"data-dir": str(folder)}, cfg, tokenizer, ("problem", "drug", "dosage"))
    assert site.labels == bio_labels(("problem", "drug", "dosage")) and site.step is TAGGING and site.train
    with pytest.raises(LabelSetError) as err:
        site_runtime({"data-dir": str(folder)}, cfg, tokenizer, ("drug", "dosage"))
    assert "'hospital-x'" in str(err.value) and "['problem']" in str(err.value)
    # Sent to the coordinator in full: it names only the site and entity types.
    assert _category(err.value) == f"LabelSetError: {err.value}"


# --- strategies: the head is a dense tensor, averaged by weight -------------------------------

HEAD = {"base_model.model.classifier.weight": (5, 6), "base_model.model.classifier.bias": (5,)}


@pytest.mark.parametrize("name", ["fedmedlora", "fedmedlora-equal", "fedmedlora-plus", "exact", "ffa-lora", "rolora",
                                  "fedsa-lora", "fedsvd", "fedadam"])
def test_every_lora_strategy_averages_the_head_by_weight(name):
    from server_app.strategy_factory import build_strategy
    from support.messages import reply
    from support.strategy_harness import BASE_CONFIG, GLOBAL, FakeGrid, sent_factors, site_states, validation_loss
    from wire import protocol

    cfg = validate({**BASE_CONFIG, "strategy.name": name, "model.task": TOKEN_CLASSIFICATION, "data.tasks": "ner"})
    rng = np.random.default_rng(5)
    head_global = {k: (0.1 * rng.standard_normal(s)).astype(np.float32) for k, s in HEAD.items()}
    states = [{**s, **{k: v + (0.05 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in head_global.items()}}
              for s in site_states(seed=3, spread=0.2)]
    shapes = {k: v.shape for k, v in states[0].items()}
    strategy = build_strategy(cfg, shapes, validation_loss)
    start = {**GLOBAL, **head_global}
    strategy.configure_train(1, ArrayRecord({k: Array(v) for k, v in start.items()}), ConfigRecord(), FakeGrid())
    send = sent_factors(strategy)
    replies = [reply(i + 1, protocol.selected_factors(s, send), 10 * (i + 1), f"h{i + 1}",
                     {"train-loss": 1.0 + 0.25 * i, "norm_bit": 0}) for i, s in enumerate(states)]
    assert all(set(HEAD) <= set(r.content["arrays"].keys()) for r in replies)  # every site sends its head
    arrays, _ = strategy.aggregate_train(1, replies)
    report = strategy.round_report()
    assert report.rejected == []
    weights = {u.site: u.weight for u in report.updates}
    for key in HEAD:
        out = arrays[key].numpy()
        if name == "fedadam":  # a server optimiser steps toward the average: it moves, and stays finite
            assert np.all(np.isfinite(out)) and not np.array_equal(out, start[key])
            continue
        expected = sum(weights[f"h{i + 1}"] * s[key].astype(np.float64) for i, s in enumerate(states))
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-7)
    if name == "fedsa-lora":  # each site's own adapter: its own B, the shared A and the averaged head
        final = {k: arrays[k].numpy() for k in arrays.keys()}
        for own in strategy.personal_adapters(final).values():
            assert all(np.array_equal(own[k], final[k]) for k in HEAD)


def test_state_round_trips_through_the_adapter_arrays(tagger):
    _, model, _, _ = tagger
    state = get_adapter_state(model)
    changed = {k: v + 1.0 for k, v in state.items()}
    set_adapter_state(model, changed)
    assert all(np.array_equal(get_adapter_state(model)[k], changed[k]) for k in state)
