"""Whole corpora through their presets, and sites that point at a corpus or hold JSONL.

The shared-corpus tests read the public corpora in ``../shared/datasets`` (never copied
into the repository) and are skipped where that folder is absent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_loaders.corpora import CorpusStats, read_corpus
from data_loaders.document import Document, Entity, Relation
from data_loaders.jsonl import write_jsonl
from data_loaders.mapping import load_preset
from data_loaders.sites import load_site
from data_loaders.splits import split_documents

DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"

CORPORA = {
    "maccrobat": "maccrobat2020/MACCROBAT2020",
    "chia": "chia/chia_with_scope",
    "ddi": "ddi2013/DDICorpusBrat",
    "ade": "ade_corpus_v2",
}

# Measured on the shared copies (Nov 2026): documents, entities and relations as read,
# text mismatches, then entities and relations after the preset's mapping.
EXPECTED = {
    "maccrobat": dict(documents=200, entities_read=25189, relations_read=16307, groups_read=2023,
                      text_mismatches=0, entities=19319, relations=6969, groups=1363),
    "chia": dict(documents=2000, entities_read=48870, relations_read=19304, groups_read=4968,
                 text_mismatches=1, entities=30629, relations=5138, groups=3611),
    "ddi": dict(documents=1017, entities_read=18491, relations_read=5000, groups_read=0,
                text_mismatches=0, entities=18491, relations=5000, groups=0),
    "ade": dict(documents=4272, entities_read=11069, relations_read=7100, groups_read=0,
                text_mismatches=0, entities=11069, relations=7100, groups=0),
}
EXPECTED_DROPPED = {
    "maccrobat": {"attribute_target_dropped": 48, "entity_type_unmapped": 5870,
                  "group_member_dropped": 660, "relation_argument_dropped": 4206,
                  "relation_not_main_modifier_pair": 545, "relation_type_unmapped": 4587},
    "chia": {"attribute_target_dropped": 215, "entity_type_unmapped": 18241,
             "group_member_dropped": 1357, "malformed_line_skipped": 3,
             "relation_argument_dropped": 2395, "relation_not_main_modifier_pair": 31,
             "relation_type_unmapped": 11740},
    "ddi": {},
    "ade": {},  # no mention is missing from its sentence
}


@pytest.fixture(scope="module")
def corpora() -> dict[str, tuple[list[Document], CorpusStats]]:
    if not DATASETS.is_dir():
        pytest.skip(f"shared corpora not found at {DATASETS}")
    return {name: read_corpus(DATASETS / sub, name) for name, sub in CORPORA.items()}


@pytest.mark.parametrize("name", list(CORPORA))
def test_shared_corpus_counts(corpora: dict, name: str) -> None:
    docs, stats = corpora[name]
    measured = {key: getattr(stats, key) for key in EXPECTED[name]}
    assert measured == EXPECTED[name]
    assert dict(stats.dropped) == EXPECTED_DROPPED[name]
    assert len(docs) == stats.documents
    assert [d.doc_id for d in docs] == sorted(d.doc_id for d in docs)
    preset = load_preset(name)
    for doc in docs:
        ids = {e.id: e for e in doc.entities}
        for ent in doc.entities:
            assert ent.type in preset.entity_types
        for rel in doc.relations:
            assert rel.type in preset.relation_types
            assert rel.arg1 in ids and rel.arg2 in ids


def test_shared_corpus_offsets_match_the_text(corpora: dict) -> None:
    share = {name: stats.offset_match_share for name, (_, stats) in corpora.items()}
    assert share["maccrobat"] == 1.0  # all 25,189, events resolved to their T ids
    assert share["chia"] >= 0.999  # \r\n kept; one annotated text differs (1 of 48,870)
    assert share["ddi"] == 1.0  # fragments joined after a hyphen count as matching
    assert share["ade"] == 1.0  # located by string search
    for docs, _ in corpora.values():
        for doc in docs[::7]:
            for ent in doc.entities:
                assert all(0 <= s < e <= len(doc.text) for s, e in ent.spans)


def test_shared_corpus_modifier_relations_put_the_main_entity_first(corpora: dict) -> None:
    main = {"problem", "treatment", "test", "drug"}
    for name in ("maccrobat", "chia", "ade"):
        docs, _ = corpora[name]
        for doc in docs:
            types = {e.id: e.type for e in doc.entities}
            for rel in doc.relations:
                if rel.type in ("causes",):
                    continue
                assert types[rel.arg1] in main and types[rel.arg2] == rel.type, name


def test_ddi_keeps_its_official_split(corpora: dict) -> None:
    docs, _ = corpora["ddi"]
    assert {d.source_split for d in docs} == {"train", "test"}
    splits = split_documents(docs)
    assert len(splits["test"]) == 303  # Test/DrugBank 212 + Test/MedLine 91
    assert all(d.source_split == "test" for d in splits["test"])
    assert (len(splits["train"]), len(splits["validation"])) == (632, 82)


# --- sites ---------------------------------------------------------------------------------

_CASE = "Severe fever after aspirin. Chest X-ray was normal."
_CASE_ANN = (
    "T1\tSeverity 0 6\tSevere\n"
    "T2\tSign_symptom 7 12\tfever\n"
    "E1\tSign_symptom:T2\n"
    "T3\tMedication 19 26\taspirin\n"
    "E2\tMedication:T3\n"
    "T4\tDiagnostic_procedure 28 39\tChest X-ray\n"
    "E3\tDiagnostic_procedure:T4\n"
    "T5\tLab_value 44 50\tnormal\n"
    "T6\tAge 0 6\tSevere\n"
    "R1\tMODIFY Arg1:T1 Arg2:E1\n"
    "R2\tCAUSE Arg1:E2 Arg2:E1\n"
    "R3\tMODIFY Arg1:T5 Arg2:E3\n"
    "*\tOVERLAP E1 E2\n"
)


def _brat_corpus(folder: Path, count: int = 4) -> Path:
    folder.mkdir(parents=True)
    for i in range(count):
        (folder / f"case-{i}.txt").write_text(_CASE, encoding="utf-8")
        (folder / f"case-{i}.ann").write_text(_CASE_ANN, encoding="utf-8")
    (folder / "README.txt").write_text("not a document", encoding="utf-8")
    return folder


def _site(folder: Path, config: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "site.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def test_read_corpus_on_a_small_brat_folder(tmp_path: Path) -> None:
    docs, stats = read_corpus(_brat_corpus(tmp_path / "notes"), "maccrobat")
    assert [d.doc_id for d in docs] == [f"case-{i}" for i in range(4)]
    assert [(r.type, r.arg1, r.arg2) for r in docs[0].relations] == [
        ("severity", "T2", "T1"), ("causes", "T3", "T2"), ("labvalue", "T4", "T5")]
    assert stats.dropped == {"txt_without_ann": 1, "entity_type_unmapped": 4}
    assert stats.dropped_entity_types == {"Age": 4}
    assert "maccrobat: 4 documents" in stats.summary()
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_corpus(tmp_path / "nowhere", "maccrobat")


def test_read_corpus_i2b2_and_jsonl_formats(tmp_path: Path) -> None:
    notes = tmp_path / "i2b2" / "train"
    notes.mkdir(parents=True)
    (notes / "r1.txt").write_text("Aspirin for chest pain .\nCXR clear\n", encoding="utf-8")
    (notes / "r1.con").write_text('c="aspirin" 1:0 1:0||t="treatment"\n'
                                  'c="chest pain" 1:2 1:3||t="problem"\n'
                                  'c="cxr" 2:0 2:0||t="test"\n', encoding="utf-8")
    (notes / "r1.rel").write_text('c="aspirin" 1:0 1:0||r="TrAP"||c="chest pain" 1:2 1:3\n',
                                  encoding="utf-8")
    preset = tmp_path / "i2b2_split.toml"
    preset.write_text(
        load_preset("i2b2_2010").path.read_text(encoding="utf-8")
        + '\n[source_splits]\ntrain = "train"\n', encoding="utf-8")
    (doc,), stats = read_corpus(tmp_path / "i2b2", preset)
    assert doc.source_split == "train" and stats.reader["entities"] == 3
    assert [(e.type, doc.text[e.start:e.end]) for e in doc.entities] == [
        ("treatment", "Aspirin"), ("problem", "chest pain"), ("test", "CXR")]
    assert doc.relations == [Relation("R1", "TrAP", "T1", "T2")]
    # JSONL through a user preset: a folder holding documents.jsonl, mapped on read.
    write_jsonl([Document("j", "Fever.", [Entity("T1", "Finding", ((0, 5),), "Fever")])],
                tmp_path / "j" / "documents.jsonl")
    (tmp_path / "j.toml").write_text('format = "jsonl"\nentity_types = ["problem"]\n'
                                     'relation_types = []\n[entity_map]\nFinding = "problem"\n',
                                     encoding="utf-8")
    (mapped,), stats = read_corpus(tmp_path / "j", tmp_path / "j.toml")
    assert mapped.entities == [Entity("T1", "problem", ((0, 5),), "Fever")]
    assert stats.offset_match_share == 1.0


def test_site_pointing_at_a_corpus_takes_types_from_the_preset(tmp_path: Path) -> None:
    _brat_corpus(tmp_path / "corpus")
    site = load_site(_site(tmp_path / "site", {"name": "h1", "preset": "maccrobat",
                                               "source": "../corpus"}))
    preset = load_preset("maccrobat")
    assert site.entity_types == preset.entity_types
    assert site.relation_types == preset.relation_types and site.score_by is None
    docs = [d for split in site.splits.values() for d in split]
    assert len(docs) == 4 and {e.type for e in docs[0].entities} == {
        "severity", "problem", "drug", "test", "labvalue"}
    # Narrowed by site.json: only what this hospital annotates.
    narrow = load_site(_site(tmp_path / "narrow", {
        "name": "h2", "preset": "maccrobat", "source": str(tmp_path / "corpus"),
        "entity_types": ["problem", "severity"], "relation_types": ["severity"]}))
    assert narrow.entity_types == ("problem", "severity")
    doc = narrow.splits["train"][0] if narrow.splits["train"] else narrow.splits["test"][0]
    assert [e.type for e in doc.entities] == ["severity", "problem"]
    assert [r.type for r in doc.relations] == ["severity"]


def test_site_with_its_own_toml_preset_and_corpus_in_the_folder(tmp_path: Path) -> None:
    folder = _brat_corpus(tmp_path / "site")
    (folder / "mine.toml").write_text(
        'format = "brat"\nscore_by = "relations-and-entity-recall"\n'
        'entity_types = ["drug", "problem"]\nrelation_types = ["causes"]\n'
        '[entity_map]\nMedication = "drug"\nSign_symptom = "problem"\n'
        '[relation_map]\nCAUSE = "causes"\n', encoding="utf-8")
    site = load_site(_site(folder, {"name": "h3", "preset": "mine.toml"}))
    assert site.entity_types == ("drug", "problem") and site.relation_types == ("causes",)
    assert site.score_by == "relations-and-entity-recall"


def test_site_holding_documents_jsonl(tmp_path: Path) -> None:
    doc = Document("n1", "Fever.", [Entity("T1", "problem", ((0, 5),), "Fever")])
    other = Document("n2", "Aspirin.", [Entity("T1", "drug", ((0, 7),), "Aspirin")],
                     source_split="test")
    folder = tmp_path / "prepared"
    write_jsonl([doc, other], folder / "documents.jsonl")
    site = load_site(_site(folder, {"name": "p", "entity_types": ["problem", "drug"],
                                    "relation_types": [], "score_by":
                                    "relations-and-entity-recall"}))
    assert site.splits["test"] == [other] and site.score_by == "relations-and-entity-recall"
    (folder / "n1.ann").write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match="holds both documents.jsonl and BRAT"):
        load_site(folder)
    (folder / "n1.ann").unlink()
    _site(folder, {"name": "p", "entity_types": ["problem"], "relation_types": []})
    with pytest.raises(ValueError, match=r"documents.jsonl: entity T1 has type 'drug'"):
        load_site(folder)


@pytest.mark.parametrize(
    ("config", "error", "match"),
    [
        ({"name": "s", "preset": "macrobat"}, ValueError,
         r"site.json: key 'preset': unknown preset 'macrobat'; built-in presets are"),
        ({"name": "s", "preset": "nope.toml"}, FileNotFoundError,
         r"site.json: key 'preset': preset file .*nope.toml not found"),
        ({"name": "s", "preset": "maccrobat", "source": "missing"}, FileNotFoundError,
         r"site.json: key 'source': .*missing does not exist"),
        ({"name": "s", "preset": "maccrobat", "entity_types": ["negation"]}, ValueError,
         r"site.json: key 'entity_types' lists \['negation'\], which preset 'maccrobat'"),
        ({"name": "s", "source": "x", "entity_types": ["drug"], "relation_types": []},
         ValueError, r"key 'source' needs key 'preset'"),
        ({"name": "s", "preset": "ade", "score_by": "f1"}, ValueError,
         r"site.json: key 'score_by' must be one of"),
    ],
)
def test_corpus_site_errors_name_site_json_and_key(
    tmp_path: Path, config: dict, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        load_site(_site(tmp_path / "s", config))


def test_site_pointing_at_shared_ade_carries_score_by(tmp_path: Path) -> None:
    if not DATASETS.is_dir():
        pytest.skip(f"shared corpora not found at {DATASETS}")
    site = load_site(_site(tmp_path / "ade", {
        "name": "ade", "preset": "ade", "source": str(DATASETS / "ade_corpus_v2")}))
    assert site.score_by == "relations-and-entity-recall"
    assert sum(len(v) for v in site.splits.values()) == 4272
    assert site.relation_types == ("causes", "dosage")
