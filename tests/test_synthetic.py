"""The synthetic demo corpus and loading it as sites."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from data_loaders import synthetic_vocab as V
from data_loaders.brat import read_brat_folder
from data_loaders.schema import ENTITY_TYPES
from data_loaders.sites import demo_corpus_dir, ensure_demo_corpus, load_site
from data_loaders.synthetic import generate_corpus
from data_loaders.synthetic_notes import RELATION_ARGS

SITES = ("site-a", "site-b", "site-c")


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return generate_corpus(tmp_path_factory.mktemp("demo"))


def test_layout_and_site_json(corpus: dict[str, Path]) -> None:
    assert list(corpus) == [*SITES, "coordinator"]
    for name, folder in corpus.items():
        meta = json.loads((folder / "site.json").read_text(encoding="utf-8"))
        assert list(meta) == ["name", "description", "entity_types", "relation_types"]
        assert meta["name"] == name
        assert set(meta["entity_types"]) <= set(ENTITY_TYPES)
    assert len(list(corpus["site-a"].glob("*.txt"))) == 60
    assert len(list(corpus["coordinator"].glob("*.txt"))) == 12


def test_same_seed_is_byte_identical_and_other_seed_differs(
    corpus: dict[str, Path], tmp_path: Path
) -> None:
    reference = _snapshot(corpus["site-a"].parent)
    again = generate_corpus(tmp_path / "again")
    assert _snapshot(again["site-a"].parent) == reference
    other = generate_corpus(tmp_path / "other", seed=1)
    other_files = _snapshot(other["site-a"].parent)
    assert other_files.keys() == reference.keys()
    differing = [k for k in reference if k.endswith(".txt") and reference[k] != other_files[k]]
    assert len(differing) > 180  # of 192


def test_regeneration_is_idempotent_and_follows_parameters(tmp_path: Path) -> None:
    out = tmp_path / "c"
    generate_corpus(out, docs_per_site=5, coordinator_docs=2)
    marker = out / "site-a" / "a-0001.txt"
    mtime = marker.stat().st_mtime_ns
    generate_corpus(out, docs_per_site=5, coordinator_docs=2)
    assert marker.stat().st_mtime_ns == mtime  # skipped, not rewritten
    generate_corpus(out, docs_per_site=3, coordinator_docs=2)
    stems = sorted(p.stem for p in (out / "site-b").glob("*.txt"))
    assert stems == ["b-0001", "b-0002", "b-0003"]


def test_refuses_a_folder_that_is_not_a_generated_corpus(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("someone's data", encoding="utf-8")
    with pytest.raises(FileExistsError, match="corpus.json"):
        generate_corpus(tmp_path)


def test_offsets_match_text_and_ids_are_unique(corpus: dict[str, Path]) -> None:
    ids: list[str] = []
    for folder in corpus.values():
        for doc in read_brat_folder(folder):
            ids.append(doc.doc_id)
            lines = [line for line in doc.text.split("\n") if line]
            sentences = doc.text.count(". ") + 1 if len(lines) == 1 else len(lines)
            assert 3 <= sentences <= 8, doc.doc_id
            for ent in doc.entities:
                (start, end), = ent.spans
                assert doc.text[start:end] == ent.text, (doc.doc_id, ent)
            spans = sorted(e.spans[0] for e in doc.entities)
            assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), doc.doc_id  # no overlap
    assert len(ids) == len(set(ids)) == 3 * 60 + 12


def test_sites_annotate_different_types_and_only_their_relations(
    corpus: dict[str, Path]
) -> None:
    type_sets = []
    for name, folder in corpus.items():
        site = load_site(folder)
        type_sets.append(frozenset(site.entity_types))
        seen_types: set[str] = set()
        seen_relations: set[str] = set()
        for docs in site.splits.values():
            for doc in docs:
                types = {e.id: e.type for e in doc.entities}
                seen_types.update(types.values())
                for rel in doc.relations:
                    seen_relations.add(rel.type)
                    assert rel.type in site.relation_types
                    assert types[rel.arg2] == rel.type  # typed by its modifier
                    assert types[rel.arg1] in RELATION_ARGS[rel.type]
                    assert types[rel.arg1] in site.entity_types
        # Each declared type and relation type occurs somewhere in the site's notes.
        assert seen_types == set(site.entity_types), name
        assert seen_relations == set(site.relation_types), name
    assert len(set(type_sets[:3])) == 3
    assert type_sets[3] == type_sets[0] | type_sets[1] | type_sets[2]


def test_sentences_without_entities_and_repeated_strings_occur(corpus: dict[str, Path]) -> None:
    docs = read_brat_folder(corpus["site-c"]) + read_brat_folder(corpus["site-a"])
    empty_lines = repeated = 0
    for doc in docs:
        for line_start, line in _lines(doc.text):
            if not any(line_start <= e.start < line_start + len(line) for e in doc.entities):
                empty_lines += 1
        texts = [e.text for e in doc.entities]
        repeated += len(texts) != len(set(texts))
    assert empty_lines > 10 and repeated > 10


def _lines(text: str) -> list[tuple[int, str]]:
    out, pos = [], 0
    for line in text.split("\n"):
        if line:
            out.append((pos, line))
        pos += len(line) + 1
    return out


def test_vocabularies_are_rich() -> None:
    assert len(set(V.SYMPTOMS) | set(V.DISEASES)) >= 30
    assert len(V.DRUGS) >= 25 and len(V.LAB_TESTS) + len(V.IMAGING) >= 20
    assert len(V.TREATMENTS) >= 15 and len(V.FREQUENCIES) >= 10


def test_each_split_of_each_site_is_non_empty(corpus: dict[str, Path]) -> None:
    for name in SITES:
        site = load_site(corpus[name])
        assert all(site.splits[k] for k in ("train", "validation", "test")), name


def test_load_site_errors(tmp_path: Path, corpus: dict[str, Path]) -> None:
    with pytest.raises(FileNotFoundError, match="missing"):
        load_site(tmp_path / "missing")
    folder = tmp_path / "s"
    folder.mkdir()
    with pytest.raises(FileNotFoundError, match="site.json"):
        load_site(folder)
    site_json = folder / "site.json"
    site_json.write_text('{"name": "s", "relation_types": []}', encoding="utf-8")
    with pytest.raises(ValueError, match="site.json: key 'entity_types' is missing"):
        load_site(folder)
    site_json.write_text('{"name": "s", "entity_types": ["disease"], "relation_types": []}',
                         encoding="utf-8")
    with pytest.raises(ValueError, match="unknown entity type"):
        load_site(folder)
    site_json.write_text('{"name": "s", "entity_types": ["problem"], "relation_types": []}',
                         encoding="utf-8")
    with pytest.raises(ValueError, match="no documents"):
        load_site(folder)
    for p in corpus["site-b"].glob("b-000[1-3].*"):
        (folder / p.name).write_bytes(p.read_bytes())
    pattern = r"b-0001\.ann: entity T\d+ has type '\w+', which .*site.json"
    with pytest.raises(ValueError, match=pattern):
        load_site(folder)
    site = load_site(corpus["site-b"], name="hospital-b")
    assert site.name == "hospital-b" and site.data_dir == corpus["site-b"]


def _ensure(cache: str) -> str:
    import os

    os.environ["FEDMEDLORA_CACHE"] = cache
    return str(ensure_demo_corpus())


def test_demo_corpus_location_and_concurrent_generation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDMEDLORA_CACHE", str(tmp_path / "cache"))
    target = tmp_path / "cache" / "demo-corpus"
    assert demo_corpus_dir() == target
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        results = pool.map(_ensure, [str(tmp_path / "cache")] * 3)
    assert results == [str(target)] * 3
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["demo-corpus"]
    assert load_site(target / "site-a").name == "site-a"
    assert ensure_demo_corpus() == target
