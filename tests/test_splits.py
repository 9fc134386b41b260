"""The shared deterministic document split."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

from data_loaders.document import Document
from data_loaders.splits import split_documents, split_of

ROOT = Path(__file__).resolve().parents[1]
IDS = [f"doc-{i:04d}" for i in range(1000)]


def test_split_is_deterministic_across_processes() -> None:
    # A fresh interpreter has a different hash seed: the split must not depend on it.
    code = (
        "from data_loaders.splits import split_of\n"
        "print(''.join(split_of(f'doc-{i:04d}')[0] for i in range(1000)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={"PYTHONHASHSEED": "123"}, cwd=ROOT)
    assert out.stdout.strip() == "".join(split_of(i)[0] for i in IDS)


def test_split_is_roughly_70_10_20() -> None:
    counts = {"train": 0, "validation": 0, "test": 0}
    for doc_id in IDS:
        counts[split_of(doc_id)] += 1
    assert 650 <= counts["train"] <= 750
    assert 70 <= counts["validation"] <= 130
    assert 160 <= counts["test"] <= 240


def test_split_documents_is_independent_of_order() -> None:
    docs = [Document(doc_id, "") for doc_id in IDS]
    shuffled = docs[:]
    random.Random(7).shuffle(shuffled)
    first, second = split_documents(docs), split_documents(shuffled)
    assert list(first) == ["train", "validation", "test"]
    for name in first:
        assert [d.doc_id for d in first[name]] == [d.doc_id for d in second[name]]
        assert [d.doc_id for d in first[name]] == sorted(d.doc_id for d in first[name])
        assert all(split_of(d.doc_id) == name for d in first[name])
    assert sum(len(v) for v in first.values()) == len(IDS)


def test_custom_fractions_and_errors() -> None:
    assert {split_of(i, validation=0.1, test=0.0) for i in IDS} == {"train", "validation"}
    with pytest.raises(ValueError, match="validation=0.5, test=0.5"):
        split_of("x", validation=0.5, test=0.5)
    with pytest.raises(ValueError, match="duplicate document id 'a'"):
        split_documents([Document("a", ""), Document("a", "")])


def test_source_split_is_honoured_and_validation_carved_from_train() -> None:
    official = {"train": [], "test": []}
    docs = []
    for i, doc_id in enumerate(IDS):
        source = "test" if i % 5 == 0 else "train"  # a fifth is the official test
        official[source].append(doc_id)
        docs.append(Document(doc_id, "", source_split=source))
    splits = split_documents(docs)
    assert [d.doc_id for d in splits["test"]] == sorted(official["test"])
    carved = {d.doc_id for d in splits["validation"]}
    assert carved <= set(official["train"])
    # 1/8 of the official train (800 documents) is about 10% of the corpus.
    assert 70 <= len(carved) <= 130
    assert carved == {i for i in official["train"] if split_of(i, 0.125, 0.0) == "validation"}
    # Mixed corpora: documents without an official split get the plain hash split.
    plain = split_documents(docs + [Document("extra", "")])
    assert any(d.doc_id == "extra" for d in plain[split_of("extra")])
    kept = split_documents([Document("v", "", source_split="validation")])
    assert [d.doc_id for d in kept["validation"]] == ["v"]
    with pytest.raises(ValueError, match="document 'x': source_split 'dev' is not one of"):
        split_documents([Document("x", "", source_split="dev")])
