"""The i2b2 2010, ADE v2 and JSONL readers, on small hand-written files."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from data_loaders.ade import read_ade
from data_loaders.brat import AnnotationError
from data_loaders.document import Attribute, Document, Entity, Group, Relation
from data_loaders.i2b2 import read_i2b2, read_i2b2_folder
from data_loaders.jsonl import read_jsonl, write_jsonl
from data_loaders.stats import ReadStats

# --- i2b2 2010 ---------------------------------------------------------------------------

I2B2_TEXT = (
    "Admission Date :\n"
    "The patient was given  aspirin for chest pain .\n"
    "CT   scan showed no bleeding\n"
)


def _i2b2(folder: Path, con: str, rel: str | None = None, ast: str | None = None,
          text: str = I2B2_TEXT) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    txt = folder / "record-1.txt"
    txt.write_bytes(text.encode("utf-8"))
    (folder / "record-1.con").write_text(con, encoding="utf-8")
    if rel is not None:
        (folder / "record-1.rel").write_text(rel, encoding="utf-8")
    if ast is not None:
        (folder / "record-1.ast").write_text(ast, encoding="utf-8")
    return txt


def test_i2b2_line_token_offsets_become_characters(tmp_path: Path) -> None:
    con = (
        'c="aspirin" 2:4 2:4||t="treatment"\n'
        'c="chest pain" 2:6 2:7||t="problem"\n'
        'c="ct scan" 3:0 3:1||t="test"\n'
        'c="bleeding" 3:4 3:4||t="problem"\n'
    )
    rel = ('c="aspirin" 2:4 2:4||r="TrAP"||c="chest pain" 2:6 2:7\n'
           'c="ct scan" 3:0 3:1||r="TeRP"||c="bleeding" 3:4 3:4\n')
    ast = 'c="bleeding" 3:4 3:4||t="problem"||a="absent"\n'
    stats = ReadStats("i2b2")
    doc = read_i2b2(_i2b2(tmp_path, con, rel, ast), stats=stats)
    assert doc.doc_id == "record-1"
    spans = {e.id: (e.type, doc.text[e.start:e.end]) for e in doc.entities}
    # Two spaces before "aspirin", three inside "CT   scan": tokens are whitespace runs.
    assert spans == {"T1": ("treatment", "aspirin"), "T2": ("problem", "chest pain"),
                     "T3": ("test", "CT   scan"), "T4": ("problem", "bleeding")}
    assert all(e.text == doc.text[e.start:e.end] for e in doc.entities)
    assert doc.relations == [Relation("R1", "TrAP", "T1", "T2"), Relation("R2", "TeRP", "T3", "T4")]
    assert doc.attributes == [Attribute("A1", "assertion", "T4", "absent")]
    assert stats.as_dict() == {"documents": 1, "entities": 4, "relations": 2, "attributes": 1,
                               "text_mismatches": 0}


def test_i2b2_text_mismatch_is_reported_with_path_and_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stats = ReadStats("i2b2")
    con = 'c="aspirin" 2:4 2:4||t="treatment"\nc="headache" 2:6 2:7||t="problem"\n'
    with caplog.at_level(logging.WARNING, logger="data_loaders.i2b2"):
        doc = read_i2b2(_i2b2(tmp_path, con), stats=stats)
    assert stats.text_mismatches == 1 and len(doc.entities) == 2
    assert "record-1.con:2" in caplog.text
    assert "chest" not in caplog.text and "headache" not in caplog.text  # no note text


def test_i2b2_crlf_text_and_release_layout(tmp_path: Path) -> None:
    text = I2B2_TEXT.replace("\n", "\r\n")
    root = tmp_path / "beth"
    (root / "txt").mkdir(parents=True)
    (root / "concept").mkdir()
    (root / "rel").mkdir()
    (root / "txt" / "r2.txt").write_bytes(text.encode("utf-8"))
    (root / "concept" / "r2.con").write_text('c="bleeding" 3:4 3:4||t="problem"\n'
                                             'c="ct scan" 3:0 3:1||t="test"\n', encoding="utf-8")
    (root / "rel" / "r2.rel").write_text(
        'c="ct scan" 3:0 3:1||r="TeRP"||c="bleeding" 3:4 3:4\n', encoding="utf-8")
    (doc,) = read_i2b2_folder(tmp_path)
    assert [doc.text[e.start:e.end] for e in doc.entities] == ["bleeding", "CT   scan"]
    assert doc.relations == [Relation("R1", "TeRP", "T2", "T1")]


@pytest.mark.parametrize(
    ("con", "rel", "path", "line", "reason"),
    [
        ('c="aspirin" 2:4 2:4||t="treatment"\nbroken\n', None, "con", 2, "expected 'c=\"TEXT\""),
        ('c="aspirin" 2:4 2:4\n', None, "con", 1, "expected"),
        ('c="x" 9:0 9:0||t="problem"\n', None, "con", 1, "not a token of the text"),
        ('c="x" 2:99 2:99||t="problem"\n', None, "con", 1, "2:99 2:99"),
        ('c="x" 2:5 2:3||t="problem"\n', None, "con", 1, "ends before it starts"),
        ('c="aspirin" 2:4 2:4||t="treatment"\n',
         'c="aspirin" 2:4 2:4||r="TrAP"||c="chest pain" 2:6 2:7\n', "rel", 1, "no concept at 2:6"),
        ('c="aspirin" 2:4 2:4||t="treatment"\n', 'c="aspirin" 2:4 2:4||r="TrAP"\n', "rel", 1,
         "expected"),
    ],
)
def test_i2b2_malformed_lines_name_file_and_line(
    tmp_path: Path, con: str, rel: str | None, path: str, line: int, reason: str
) -> None:
    with pytest.raises(AnnotationError) as info:
        read_i2b2(_i2b2(tmp_path, con, rel))
    assert str(info.value).startswith(f"{tmp_path / f'record-1.{path}'}:{line}: ")
    assert reason in str(info.value)


# --- ADE v2 --------------------------------------------------------------------------------

# Document offsets count in "<PMID>\n\n<title>\n\n<abstract>": the title of 12345 starts
# at 7, the sentence S at 100 (its "drug A" at 120, "10 mg" at 127, "rash" at 140 and 149).
S = "Drug A was stopped, drug A 10 mg caused rash and rash again."
ADE_AE = (
    "12345|Rash after drug A.|Rash|7|11|drug A|18|24\n"
    f"12345|{S}|rash|149|153|drug A|120|126\n"  # the second "rash" is annotated first
    f"12345|{S}|rash|140|144|drug A|120|126\n"
    "12345|Nothing but drug A.|fever|290|295|drug A|312|318\n"  # fever is not in it
    "9|Drug B toxicity.|toxicity|10|18|Drug B|3|9\n"
)
ADE_DOSE = f"12345|{S}|10 mg|127|132|drug A|120|126\n"


def _ade(folder: Path, ae: str, dose: str | None = ADE_DOSE) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "DRUG-AE.rel").write_text(ae, encoding="utf-8")
    if dose is not None:
        (folder / "DRUG-DOSE.rel").write_text(dose, encoding="utf-8")
    return folder


def test_ade_sentences_repeated_strings_and_counts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stats = ReadStats("ade")
    with caplog.at_level(logging.WARNING, logger="data_loaders.ade"):
        docs = read_ade(_ade(tmp_path, ADE_AE), stats)
    # PMIDs in numeric order; the sentences of one abstract in reading order.
    assert [d.doc_id for d in docs] == ["9-s1", "12345-s1", "12345-s2", "12345-s3"]
    assert [d.text for d in docs[1:]] == ["Rash after drug A.", S, "Nothing but drug A."]
    body = docs[2]
    # "Drug A" (capital) is another string: "drug A" occurs once and anchors the sentence
    # at 100, which places each repeated "rash" at its own copy.
    assert [(e.id, e.type, e.spans) for e in body.entities] == [
        ("T1", "drug", ((20, 26),)), ("T2", "dose", ((27, 32),)),
        ("T3", "adverse_effect", ((40, 44),)), ("T4", "adverse_effect", ((49, 53),)),
    ]
    # One drug entity for the three lines naming it; one relation per line, in file order.
    assert body.relations == [Relation("R1", "drug-effect", "T1", "T4"),
                              Relation("R2", "drug-effect", "T1", "T3"),
                              Relation("R3", "drug-dose", "T1", "T2")]
    assert docs[3].entities == [] and docs[3].relations == []
    assert stats.as_dict() == {"lines": 6, "documents": 4, "entities": 8, "relations": 5,
                               "mentions": 12, "repeated_mentions": 2, "mentions_not_found": 1}
    assert "DRUG-AE.rel:4: adverse_effect mention not found" in caplog.text
    assert "fever" not in caplog.text


def test_ade_repeats_without_a_unique_anchor_follow_document_order(tmp_path: Path) -> None:
    # Every mention repeats: the k-th smallest document offset takes the k-th copy.
    ae = ("7|X and Y, then X and Y.|Y|120|121|X|114|115\n"
          "7|X and Y, then X and Y.|Y|106|107|X|100|101\n")
    (doc,) = read_ade(_ade(tmp_path, ae, dose=None))
    pairs = [(doc.entity(r.arg1).start, doc.entity(r.arg2).start) for r in doc.relations]
    assert pairs == [(14, 20), (0, 6)]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("12345|A sentence.|x|1|2|y|3\n", "expected 8 '|'-separated columns"),
        ("abc|A sentence.|x|1|2|y|3|4\n", "numeric PubMed id"),
        ("1|A sentence.|x|one|2|y|3|4\n", "integer offsets in columns 4 and 5"),
        ("1|A sentence.|x|5|2|y|3|4\n", "0 <= start < end"),
        ("1||x|1|2|y|3|4\n", "non-empty sentence"),
    ],
)
def test_ade_malformed_lines_name_file_and_line(tmp_path: Path, line: str, reason: str) -> None:
    folder = _ade(tmp_path, "1|A x y.|x|1|2|y|3|4\n" + line, dose=None)
    with pytest.raises(AnnotationError) as info:
        read_ade(folder)
    assert str(info.value).startswith(f"{folder / 'DRUG-AE.rel'}:2: ")
    assert reason in str(info.value)


def test_ade_needs_the_drug_ae_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="DRUG-AE.rel"):
        read_ade(tmp_path)


# --- JSONL ---------------------------------------------------------------------------------

def _docs() -> list[Document]:
    text = "Pain in the left knee.\r\nNo fever, 10 mg aspirin – daily."
    return [
        Document(
            "d1", text,
            entities=[Entity("T1", "problem", ((0, 4),), "Pain"),
                      Entity("T2", "bodyloc", ((12, 16), (17, 21)), "left knee"),
                      Entity("T3", "drug", ((40, 47),), "aspirin")],
            relations=[Relation("R1", "bodyloc", "T1", "T2")],
            attributes=[Attribute("A1", "assertion", "T1", "present"),
                        Attribute("A2", "Flag", "R1")],
            groups=[Group("*1", "OVERLAP", ("T1", "T2"))],
            source_split="test",
        ),
        Document("d2", ""),
    ]


def test_jsonl_round_trip_is_identical(tmp_path: Path) -> None:
    path = write_jsonl(_docs(), tmp_path / "out" / "documents.jsonl")
    stats = ReadStats("jsonl")
    docs = read_jsonl(path, stats)
    assert docs == _docs()
    again = write_jsonl(docs, tmp_path / "again.jsonl")
    assert again.read_bytes() == path.read_bytes()
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert list(first) == ["id", "text", "entities", "relations", "attributes", "groups",
                           "source_split"]
    assert first["entities"][1]["spans"] == [[12, 16], [17, 21]]
    assert stats.documents == 2 and stats.entities == 3 and stats.text_mismatches == 0


def _line(**changes: object) -> str:
    obj: dict = {"id": "d", "text": "Fever.", "entities": [
        {"id": "T1", "type": "problem", "spans": [[0, 5]], "text": "Fever"}],
        "relations": [], "attributes": [], "groups": [], "source_split": None}
    for key, value in changes.items():
        if value is _DELETE:
            del obj[key]
        else:
            obj[key] = value
    return json.dumps(obj)


_DELETE = object()
_ENT = {"id": "T1", "type": "problem", "spans": [[0, 5]], "text": "Fever"}


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ('{"id": "d", "text": ', "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (_line(entities=_DELETE), "missing key(s) ['entities']"),
        (_line(extra=1), "unknown key(s) ['extra']"),
        (_line(id=""), "key 'id': expected a non-empty string"),
        (_line(text=5), "key 'text': expected a string"),
        (_line(source_split="dev"), "key 'source_split'"),
        (_line(entities={}), "key 'entities': expected a list of objects"),
        (_line(entities=[{"id": "T1", "type": "problem", "spans": [[0, 5]]}]),
         "key 'entities[0]': missing key(s) ['text']"),
        (_line(entities=[{**_ENT, "spans": [[0, 9]]}]), "entities[0].spans': span 0-9"),
        (_line(entities=[{**_ENT, "spans": [[3, 3]]}]), "empty or outside the text"),
        (_line(entities=[{**_ENT, "spans": [[0, "5"]]}]), "integer pairs"),
        (_line(entities=[{**_ENT, "spans": []}]), "non-empty list"),
        (_line(entities=[_ENT, _ENT]), "entities[1].id': id 'T1' is already used"),
        (_line(relations=[{"id": "R1", "type": "x", "arg1": "T1", "arg2": "T9"}]),
         "relations[0].arg2': 'T9' is not the id"),
        (_line(attributes=[{"id": "A1", "type": "x", "target": "R7"}]),
         "attributes[0].target'"),
        (_line(groups=[{"id": "G", "type": "OR", "members": ["T1", "T5"]}]),
         "groups[0].members': 'T5'"),
        (_line(), "document id 'd' is already used on line 1"),
    ],
)
def test_jsonl_bad_lines_name_file_line_and_key(tmp_path: Path, bad: str, reason: str) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text(_line() + "\n" + bad + "\n", encoding="utf-8")
    with pytest.raises(AnnotationError) as info:
        read_jsonl(path)
    assert str(info.value).startswith(f"{path}:2: ")
    assert reason in str(info.value)


def test_jsonl_text_mismatch_is_counted_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text(_line(entities=[{**_ENT, "text": "Cough"}]) + "\n\n", encoding="utf-8")
    stats = ReadStats("jsonl")
    with caplog.at_level(logging.WARNING, logger="data_loaders.jsonl"):
        (doc,) = read_jsonl(path, stats)
    assert doc.entities[0].text == "Cough" and stats.text_mismatches == 1
    assert "docs.jsonl:1" in caplog.text and "Fever" not in caplog.text


def test_one_stats_class_reports_each_format_its_own_counters() -> None:
    assert list(ReadStats("i2b2").as_dict()) == ["documents", "entities", "relations", "attributes", "text_mismatches"]
    assert "malformed_skipped" in ReadStats("brat").as_dict() and "malformed_skipped" not in ReadStats("ade").as_dict()
    with pytest.raises(ValueError, match="expected one of"):
        ReadStats("bioc")
