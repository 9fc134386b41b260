"""The memorisation audit (`fedmedlora audit`, fedmedlora/memorisation.py, clinical_ie/canaries.py):
canaries and their alternatives, the canary site folder, exposure and extraction on a model
that did memorise a canary, the settings refused, and a real audit on Flower's simulation
engine with every variant."""

from __future__ import annotations

import json
import random

import pytest

from clinical_ie.canaries import BLANK, SPACE, alternatives, make_canaries
from fedmedlora.memorisation import AuditError, AuditSettings, exposure, run_audit, write_canary_site

TYPES = ("problem", "drug", "dosage", "frequency")


def test_a_canary_keeps_its_entities_on_the_right_characters_whatever_the_secret():
    canary = make_canaries((1,), 1, TYPES, seed=3)[0]
    assert [t for t, _, _ in canary.entities] == ["drug", "dosage", "frequency", "problem"]
    assert canary.text[canary.entities[0][1]:canary.entities[0][2]] == canary.secret
    for name in ("x", "averyveryverylongname"):
        moved = canary.with_secret(name)
        assert moved.secret == name and name in moved.text and canary.secret not in moved.text
        for (t, s, e), (t2, s2, e2) in zip(canary.entities[1:], moved.entities[1:], strict=True):
            assert t == t2 and canary.text[s:e] == moved.text[s2:e2]


def test_the_withheld_prompt_holds_a_blank_and_not_the_secret():
    canary = make_canaries((1,), 1, TYPES, seed=0)[0]
    withheld = canary.instance(TYPES, withheld=True)
    assert BLANK in withheld.text and canary.secret not in withheld.text and withheld.entities == ()
    trained = canary.instance(TYPES)
    assert [g.text for g in trained.entities][0] == canary.secret


def test_canaries_have_distinct_secrets_one_level_per_repeat_count_and_only_the_sites_types():
    canaries = make_canaries((1, 4, 16), 3, ("drug", "dosage"), seed=1)
    assert [c.repeats for c in canaries] == [1, 1, 1, 4, 4, 4, 16, 16, 16]
    assert len({c.secret for c in canaries}) == 9 and len({c.doc_id for c in canaries}) == 9
    assert all({t for t, _, _ in c.entities} == {"drug", "dosage"} for c in canaries)
    treatment = make_canaries((1,), 1, ("problem", "treatment"), seed=1)[0]
    assert treatment.entities[0][0] == "treatment"
    with pytest.raises(ValueError, match=r"annotates none of \['drug', 'treatment'\].*'problem', 'test'"):
        make_canaries((1,), 1, ("problem", "test"), seed=1)


def test_alternatives_are_distinct_names_of_the_same_space_without_the_secret():
    canary = make_canaries((1,), 1, TYPES, seed=2)[0]
    names = alternatives(canary.secret, 200, random.Random(0))
    assert len(set(names)) == 200 and canary.secret not in names
    assert alternatives(canary.secret, 200, random.Random(0)) == names  # seeded: every adapter the same
    with pytest.raises(ValueError, match="the space holds"):
        alternatives(canary.secret, SPACE, random.Random(0))


def test_exposure_is_the_bits_of_the_rank_among_the_candidates():
    assert exposure(1, 32) == 5.0 and exposure(32, 32) == 0.0 and exposure(16, 32) == 1.0


def test_the_canary_site_holds_the_sites_documents_and_every_copy_in_training(tmp_path):
    from data_loaders.sites import load_site
    from data_loaders.synthetic import generate_corpus

    generate_corpus(tmp_path / "corpus", seed=3, docs_per_site=12, coordinator_docs=2)
    source = tmp_path / "corpus" / "site-a"
    before = load_site(source)
    canaries = make_canaries((1, 3), 1, before.entity_types, seed=0)
    types = write_canary_site(before, tmp_path / "site-a", canaries)
    after = load_site(tmp_path / "site-a")
    assert types == before.entity_types == after.entity_types
    copies = [d for d in after.splits["train"] if d.doc_id.startswith("canary-")]
    assert sorted(d.doc_id for d in copies) == ["canary-00-0", "canary-01-0", "canary-01-1", "canary-01-2"]
    for split in ("train", "validation", "test"):
        kept = [d.doc_id for d in after.splits[split] if not d.doc_id.startswith("canary-")]
        assert kept == [d.doc_id for d in before.splits[split]]
    assert all(canaries[1].secret in d.text and d.entities[0].text == canaries[1].secret for d in copies[1:])


def test_settings_the_audit_cannot_run_with_are_refused_naming_the_option(tmp_path):
    for settings, match in [(AuditSettings(repeats=(0,)), "--repeats"), (AuditSettings(per_level=0), "--per-level"),
                            (AuditSettings(alternatives=0), "--alternatives"),
                            (AuditSettings(dp_epsilon=0), "--dp-epsilon"),
                            (AuditSettings(variants=("dp",)), "--variants")]:
        with pytest.raises(AuditError, match=match):
            run_audit(tmp_path, {}, tmp_path / "out", settings)
    for overrides, match in [({"data.max-train-instances": 10}, "data.max-train-instances"),
                             ({"strategy.name": "exact"}, "pass --variants plain")]:
        with pytest.raises(AuditError, match=match):
            run_audit(tmp_path, overrides, tmp_path / "out", AuditSettings())
    with pytest.raises(AuditError, match=r"--canary-site 'nowhere' is not one of data.sites"):
        run_audit(tmp_path, {}, tmp_path / "out", AuditSettings(canary_site="nowhere"))


def test_a_memorised_canary_is_ranked_first_and_extracted_and_the_base_model_is_not(tiny_llama):
    """The measure can see memorisation: a LoRA adapter trained on one canary alone ranks its
    secret first among the alternatives with the secret withheld, and greedy decoding names it;
    the untouched adapter ranks it by chance."""
    from client_app.runtime import model_runtime
    from clinical_ie.evaluate import training_pairs
    from clinical_ie.prompt import PREFIX_END
    from fedmedlora.memorisation import score_canaries
    from modeling.adapter_io import get_adapter_state, set_adapter_state
    from modeling.training import TrainSettings, encode_all, train_round
    from settings.config import validate

    cfg = validate({"model.name": str(tiny_llama), "model.dtype": "float32", "lora.dropout": 0.0,
                    "eval.max-new-tokens": 48})
    runtime = model_runtime(cfg)
    initial = get_adapter_state(runtime.model)
    canaries = make_canaries((1,), 2, TYPES, seed=5)
    try:
        before = score_canaries(runtime.model, runtime.tokenizer, canaries, TYPES, cfg, alternatives=15, seed=0)
        # Trained on the first canary with its secret withheld: the pair (context, secret) itself.
        withheld = canaries[0].instance(TYPES, withheld=True)
        from clinical_ie.prompt import build_messages, target_text

        pair = (build_messages(withheld), target_text(canaries[0].instance(TYPES)))
        trained_on = training_pairs([canaries[0].instance(TYPES)]) + [pair]
        examples, _ = encode_all(runtime.tokenizer, trained_on * 2, 512, PREFIX_END)
        train_round(runtime.model, examples, TrainSettings(learning_rate=5e-3, local_epochs=20.0, batch_size=2,
                                                           warmup_ratio=0.0, lr_scheduler="constant",
                                                           loraplus_lr_ratio=0.0),  # one rate: this recipe's
                    runtime.tokenizer.pad_token_id, server_round=1, num_rounds=1)
        after = score_canaries(runtime.model, runtime.tokenizer, canaries, TYPES, cfg, alternatives=15, seed=0)
    finally:
        set_adapter_state(runtime.model, initial)
    assert after[0]["withheld"]["rank"] == 1 and after[0]["withheld"]["exposure"] == 4.0
    assert after[0]["in-context"]["rank"] == 1
    assert after[0]["extracted"], after[0]["output"]
    assert not any(row["extracted"] for row in before)
    assert all(1 <= row[mode]["rank"] <= 16 for row in before + after for mode in ("in-context", "withheld"))


@pytest.mark.e2e
def test_an_audit_trains_every_variant_on_flower_and_scores_every_adapter(tmp_path, tiny_llama):
    from data_loaders.synthetic import generate_corpus
    from support.paths import REPO

    corpus = tmp_path / "corpus"
    generate_corpus(corpus, seed=3, docs_per_site=16, coordinator_docs=4)
    overrides = {"model.name": str(tiny_llama), "num-server-rounds": 2, "train.max-steps": 2, "train.batch-size": 2,
                 "lora.r": 4, "lora.alpha": 8, "eval.max-instances": 2, "eval.max-new-tokens": 8,
                 "data.root": str(corpus), "data.server-validation": str(corpus / "coordinator")}
    settings = AuditSettings(repeats=(2,), per_level=1, alternatives=3, dp_epsilon=8.0)
    results = run_audit(REPO, overrides, tmp_path / "audit", settings)

    assert results["canary-site"] == "site-a"
    assert list(results["adapters"]) == ["base model", "site adapter", "global adapter", "global adapter, DP",
                                         "global adapter, SecAgg+"]
    for rows in results["adapters"].values():
        assert [r["canary"] for r in rows] == ["canary-00"]
        assert all(1 <= rows[0][m]["rank"] <= 4 and rows[0][m]["candidates"] == 4 for m in ("in-context", "withheld"))
    runs = tmp_path / "audit" / "runs"
    dp = [json.loads(line) for line in (runs / "audit-dp" / "metrics.jsonl").read_text().splitlines()][-1]["dp"]
    assert dp["epsilon"] <= 8.0 and dp["epsilon"] > 7.9  # the noise that spends --dp-epsilon in 2 rounds
    secure = [json.loads(line) for line in (runs / "audit-secure-aggregation" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["strategy"]["secure-aggregation"]["sites"] == 3 for r in secure[1:])
    site = [json.loads(line) for line in (tmp_path / "audit" / "sites" / "site-a" / "documents.jsonl").open()]
    assert sum(d["id"].startswith("canary-00-") for d in site) == 2
    table = (tmp_path / "audit" / "audit.json").read_text()
    assert "| global adapter, SecAgg+ |" in table

    # Run again: every run and the site adapter are reused, only the scoring is redone.
    again = run_audit(REPO, overrides, tmp_path / "audit", settings)
    assert again["adapters"] == results["adapters"]
    with pytest.raises(AuditError, match="holds an audit made with other settings"):
        run_audit(REPO, overrides, tmp_path / "audit", AuditSettings(repeats=(3,), per_level=1, alternatives=3))
