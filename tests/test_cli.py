"""The `fedmedlora` commands end to end on small data and the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_loaders.brat import read_brat_folder, write_brat
from data_loaders.document import Document, Entity, Relation
from data_loaders.jsonl import read_jsonl
from data_loaders.sites import load_site
from fedmedlora.cli import main


def _brat_corpus(folder: Path) -> Path:
    folder.mkdir()
    for i in range(12):
        text = f"Patient {i} took aspirin 81 mg daily for chest pain."
        doc = Document(f"n{i:02d}", text, [
            Entity("T1", "Medication", ((text.index("aspirin"), text.index("aspirin") + 7),), "aspirin"),
            Entity("T2", "Dosage", ((text.index("81 mg"), text.index("81 mg") + 5),), "81 mg"),
            Entity("T3", "Sign_symptom", ((text.index("chest pain"), text.index("chest pain") + 10),), "chest pain"),
        ], [Relation("R1", "MODIFY", "T2", "T1")])
        write_brat(doc, folder)
    return folder


def test_prepare_writes_a_site_folder_that_loads(tmp_path, capsys):
    source = _brat_corpus(tmp_path / "raw")
    out = tmp_path / "site"
    assert main(["prepare", "--preset", "maccrobat", "--source", str(source), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "12 documents" in printed and "100.0000% offsets match" in printed
    docs = read_jsonl(out / "documents.jsonl")
    assert len(docs) == 12
    assert {e.type for e in docs[0].entities} == {"drug", "dosage", "problem"}
    # MODIFY(dosage -> drug) becomes a "dosage" relation with the drug first
    rel = docs[0].relations[0]
    assert rel.type == "dosage" and docs[0].entity(rel.arg1).type == "drug"
    site = load_site(out)
    assert site.name == "site" and "dosage" in site.relation_types
    stats = json.loads((out / "stats.json").read_text())
    assert stats["entities"] == 36 and sum(stats["splits"].values()) == 12


def test_prepare_names_an_unknown_preset(tmp_path, capsys):
    assert main(["prepare", "--preset", "nope", "--source", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "maccrobat" in err


def test_evaluate_and_extract_with_the_tiny_model(tmp_path, tiny_llama, capsys):
    source = _brat_corpus(tmp_path / "raw")
    site = tmp_path / "site"
    main(["prepare", "--preset", "maccrobat", "--source", str(source), "--out", str(site)])
    capsys.readouterr()
    sets = ["--set", f"model.name={tiny_llama}", "--set", "eval.max-new-tokens=8"]
    result = tmp_path / "metrics.json"
    assert main(["evaluate", "--data", str(site), "--split", "train", "--limit", "8", "--re-mode", "given-entities",
                 "--json", str(result), *sets]) == 0
    metrics = json.loads(result.read_text())
    assert metrics["num-examples"] == 8 and metrics["re-instances"] > 0 and "re-strict-f1" in metrics and "strict-f1" in metrics
    assert metrics["re-mode"] == "given-entities" and "re-e2e-strict-f1" in metrics
    printed = capsys.readouterr().out
    assert "| type |" in printed  # the per-type table
    assert "### Relations with gold entities" in printed and "### Relations end to end" in printed
    # The default mode is end to end: relation instances carry no entity list.
    assert main(["evaluate", "--data", str(site), "--split", "train", "--limit", "8",
                 "--json", str(result), *sets]) == 0
    metrics = json.loads(result.read_text())
    assert metrics["re-mode"] == "end-to-end" and metrics["re-e2e-malformed"] == metrics["re-malformed"]
    assert "### Relations with gold entities" not in capsys.readouterr().out

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.txt").write_text("Fever and cough. Started aspirin.")
    (notes / "b.txt").write_text("No complaints.")
    out = tmp_path / "ann"
    assert main(["extract", "--input", str(notes), "--out", str(out), "--types", "problem,drug",
                 "--relation-types", "dosage,causes", *sets]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.ann", "a.txt", "b.ann", "b.txt"]
    for doc in read_brat_folder(out):  # whatever the untrained model found points at the note
        assert all(doc.text[s:e] == ent.text for ent in doc.entities for s, e in ent.spans)
    jsonl = tmp_path / "out.jsonl"
    assert main(["extract", "--input", str(notes), "--out", str(jsonl), "--format", "jsonl", *sets]) == 0
    assert [d.doc_id for d in read_jsonl(jsonl)] == ["a", "b"]


def test_extract_names_a_bad_type(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("x")
    assert main(["extract", "--input", str(tmp_path), "--out", str(tmp_path / "o"), "--types", "disease"]) == 2
    assert "disease" in capsys.readouterr().err


@pytest.mark.skipif(not (Path(__file__).resolve().parents[2] / "shared" / "datasets").is_dir(),
                    reason="the shared corpora are not beside the checkout")
def test_a_site_can_point_at_a_shared_corpus_in_place(tmp_path):
    datasets = Path(__file__).resolve().parents[2] / "shared" / "datasets"
    site = tmp_path / "ddi-site"
    site.mkdir()
    (site / "site.json").write_text(json.dumps(
        {"name": "ddi", "preset": "ddi", "source": str(datasets / "ddi2013" / "DDICorpusBrat")}))
    data = load_site(site)
    assert data.entity_types == ("drug",) and len(data.splits["test"]) == 303
