"""BRAT standoff reading and writing."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from data_loaders.brat import (
    AnnotationError,
    read_brat,
    read_brat_folder,
    write_brat,
)
from data_loaders.document import Attribute, Document, Entity, Group, Relation
from data_loaders.stats import ReadStats
from data_loaders.synthetic import generate_corpus


def _write(folder: Path, stem: str, text: str, ann: str | None) -> Path:
    txt = folder / f"{stem}.txt"
    txt.write_bytes(text.encode("utf-8"))
    if ann is not None:
        (folder / f"{stem}.ann").write_bytes(ann.encode("utf-8"))
    return txt


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return generate_corpus(tmp_path_factory.mktemp("corpus"), docs_per_site=8,
                           coordinator_docs=6)


def test_generated_corpus_round_trips(corpus: dict[str, Path], tmp_path: Path) -> None:
    for name, folder in corpus.items():
        docs = read_brat_folder(folder)
        assert docs and [d.doc_id for d in docs] == sorted(d.doc_id for d in docs)
        out = tmp_path / name
        for doc in docs:
            txt, ann = write_brat(doc, out)
            assert txt.read_bytes() == (folder / txt.name).read_bytes()
            assert ann.read_bytes() == (folder / ann.name).read_bytes()
        assert read_brat_folder(out) == docs


def test_discontiguous_spans_and_attributes_round_trip(tmp_path: Path) -> None:
    text = "Pain in the left and right knee.\n"
    doc = Document(
        doc_id="d1",
        text=text,
        entities=[
            Entity("T1", "problem", ((0, 4),), "Pain"),
            Entity("T2", "bodyloc", ((12, 16), (26, 30)), "left knee"),
        ],
        relations=[Relation("R1", "bodyloc", "T1", "T2")],
        attributes=[Attribute("A1", "Negated", "T1"), Attribute("A2", "Level", "T1", "High")],
    )
    _, ann = write_brat(doc, tmp_path)
    assert "T2\tbodyloc 12 16;26 30\tleft knee\n" in ann.read_text(encoding="utf-8")
    assert read_brat(tmp_path / "d1.txt") == doc


def test_crlf_offsets_are_kept(tmp_path: Path) -> None:
    text = "Line one.\r\nFever and cough.\r\n"
    start = text.index("cough")
    txt = _write(tmp_path, "crlf", text, f"T1\tproblem {start} {start + 5}\tcough\n")
    stats = ReadStats("brat")
    doc = read_brat(txt, stats=stats)
    assert doc.text == text
    (ent,) = doc.entities
    assert doc.text[ent.start:ent.end] == "cough"
    assert stats.text_mismatches == 0


def test_crlf_annotation_file_is_read(tmp_path: Path) -> None:
    txt = _write(tmp_path, "d", "Fever.", "T1\tproblem 0 5\tFever\r\nA1\tNegated T1\r\n")
    doc = read_brat(txt)
    assert doc.entities == [Entity("T1", "problem", ((0, 5),), "Fever")]
    assert doc.attributes == [Attribute("A1", "Negated", "T1")]


def test_events_resolve_to_their_trigger(tmp_path: Path) -> None:
    ann = (
        "T1\tSign_symptom 0 5\tFever\n"
        "E1\tSign_symptom:T1 \n"
        "R1\tMODIFY Arg1:E2 Arg2:E1\t\n"  # E2 is defined below: forward reference
        "T2\tSeverity 10 14\thigh\n"
        "E2\tSeverity:T2\n"
        "A1\tNegated E1\n"
        "*\tOverlap T1 T2\n"
        "#1\tAnnotatorNotes T1\tsome note\n"
    )
    stats = ReadStats("brat")
    doc = read_brat(_write(tmp_path, "d", "Fever was high.", ann), stats=stats)
    assert [e.id for e in doc.entities] == ["T1", "T2"]
    assert doc.relations == [Relation("R1", "MODIFY", "T2", "T1")]
    assert doc.attributes == [Attribute("A1", "Negated", "T1")]
    assert doc.groups == [Group("*1", "Overlap", ("T1", "T2"))]
    assert stats.groups == 1 and stats.notes_ignored == 1


def test_groups_resolve_events_and_round_trip(tmp_path: Path) -> None:
    ann = (
        "T1\tSign_symptom 0 5\tFever\n"
        "E1\tSign_symptom:T1\n"
        "T2\tSign_symptom 10 15\tcough\n"
        "T3\tSeverity 20 24\thigh\n"
        "*\tOVERLAP E1 T2 T3\t\n"
        "*\tOR T2 T3\n"
    )
    (tmp_path / "in").mkdir()
    doc = read_brat(_write(tmp_path / "in", "g", "Fever and cough, so high.", ann))
    assert doc.groups == [Group("*1", "OVERLAP", ("T1", "T2", "T3")),
                          Group("*2", "OR", ("T2", "T3"))]
    _, out = write_brat(doc, tmp_path / "out")
    assert "*\tOVERLAP T1 T2 T3\n*\tOR T2 T3\n" in out.read_text(encoding="utf-8")
    assert read_brat(tmp_path / "out" / "g.txt") == doc


def test_missing_ann_gives_empty_document(tmp_path: Path) -> None:
    doc = read_brat(_write(tmp_path, "bare", "No annotations here.", None))
    assert doc == Document("bare", "No annotations here.")


def test_text_mismatch_is_kept_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                           ) -> None:
    stats = ReadStats("brat")
    with caplog.at_level(logging.WARNING, logger="data_loaders.brat"):
        doc = read_brat(_write(tmp_path, "m", "Fever.", "T1\tproblem 0 5\tCough\n"), stats=stats)
    assert doc.entities[0].text == "Cough"
    assert stats.text_mismatches == 1
    assert "m.ann:1" in caplog.text and "Fever" not in caplog.text  # no note text in warnings


def test_newline_inside_span_continues_text_column(tmp_path: Path) -> None:
    # Some writers (CHIA) leave a raw newline in the text column of a span over a line end.
    text = "Age over 18.\r\nNo dementia."
    ann = "T1\tCondition 0 13;14 16\tAge over 18.\n No\nT2\tCondition 17 25\tdementia\n"
    stats = ReadStats("brat")
    doc = read_brat(_write(tmp_path, "c", text, ann), stats=stats)
    assert doc.entities[0].text == "Age over 18.\n No"
    assert stats.continuation_lines == 1 and stats.text_mismatches == 0


@pytest.mark.parametrize(
    ("ann", "line", "reason"),
    [
        ("T1\tproblem 0 5\tFever\nT2\tproblem 0 99\tx\n", 2, "outside the text"),
        ("T1\tproblem 5 5\tx\n", 1, "empty or outside"),
        ("T1\tproblem 3 1\tx\n", 1, "empty or outside"),
        ("T1\tproblem zero 5\tFever\n", 1, "integer offsets"),
        ("T1\tproblem 0 5\n", 1, "expected 'ID<TAB>TYPE"),
        ("T1\tproblem 0 5\tFever\nR1\tcauses Arg1:T1 Arg2:T9\n", 2, "unknown id 'T9'"),
        ("T1\tproblem 0 5\tFever\nR1\tcauses Arg1:T1\n", 2, "expected 'TYPE Arg1:ID Arg2:ID'"),
        ("T1\tproblem 0 5\tFever\nE1\tproblem:T7\n", 2, "trigger 'T7'"),
        ("T1\tproblem 0 5\tFever\nA1\tNegated\n", 2, "expected 'TYPE TARGET [VALUE]'"),
        ("T1\tproblem 0 5\tFever\nT1\tproblem 0 5\tFever\n", 2, "duplicate id"),
        ("T1\tproblem 0 5\tFever\ngarbage line\n", 2, "expected an annotation line"),
        ("T1\tproblem 0 5\tFever\n*\tOR T1\n", 2, "two members or more"),
        ("T1\tproblem 0 5\tFever\n*\tOR T1 T4\n", 2, "unknown id 'T4'"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path: Path, ann: str, line: int, reason: str
                                            ) -> None:
    txt = _write(tmp_path, "bad", "Fever and cough.", ann)
    with pytest.raises(AnnotationError) as info:
        read_brat(txt)
    assert str(info.value).startswith(f"{tmp_path / 'bad.ann'}:{line}: ")
    assert reason in str(info.value)
    assert info.value.line == line


def test_non_strict_skips_bad_lines(tmp_path: Path) -> None:
    ann = "T1\tproblem 0 5\tFever\nT2\tproblem 0 99\tx\nR1\tcauses Arg1:T1 Arg2:T2\n"
    stats = ReadStats("brat")
    doc = read_brat(_write(tmp_path, "d", "Fever.", ann), stats=stats, strict=False)
    assert [e.id for e in doc.entities] == ["T1"] and doc.relations == []
    assert stats.malformed_skipped == 2


def test_folder_errors_and_order(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_brat_folder(tmp_path / "nowhere")
    for stem in ("b-2", "a-10", "a-2"):
        _write(tmp_path, stem, "x", None)
    assert [d.doc_id for d in read_brat_folder(tmp_path)] == ["a-10", "a-2", "b-2"]


def test_write_rejects_ids_that_break_the_format(tmp_path: Path) -> None:
    doc = Document("d", "Fever.", entities=[Entity("T1", "sign symptom", ((0, 5),), "Fever")])
    with pytest.raises(ValueError, match="T1"):
        write_brat(doc, tmp_path)
