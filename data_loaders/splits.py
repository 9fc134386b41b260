"""The one train/validation/test split every command and benchmark uses
(docs/architecture.md, "Splits"): document-level, by a stable hash of the document id, never by file order."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from data_loaders.document import Document

SPLITS: tuple[str, ...] = ("train", "validation", "test")


def _check_fractions(validation: float, test: float) -> None:
    if not (0.0 <= validation and 0.0 <= test and validation + test < 1.0):
        raise ValueError(
            f"split fractions validation={validation}, test={test}: expected both >= 0 "
            "and a sum below 1"
        )


def split_of(doc_id: str, validation: float = 0.1, test: float = 0.2) -> str:
    """``"train"``, ``"validation"`` or ``"test"`` for ``doc_id``, the same on every machine."""
    _check_fractions(validation, test)
    digest = hashlib.sha256(doc_id.encode("utf-8")).digest()
    # A uniform number in [0, 1) from the first 8 bytes of the hash.
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < test:
        return "test"
    if u < test + validation:
        return "validation"
    return "train"


def split_documents(
    docs: Iterable[Document], validation: float = 0.1, test: float = 0.2
) -> dict[str, list[Document]]:
    """Documents by split (keys train, validation, test), each list sorted by doc_id.

    A document's ``source_split`` (a corpus's official split) wins over the hash: "test"
    and "validation" are kept; "train" documents give up a share of
    ``validation / (1 - test)`` (1/8 at the default 70/10/20) to validation by the same
    hash, so a corpus whose official test is about a fifth (DDI) ends near 70/10/20 too.
    Documents without one get the plain hash split.
    """
    _check_fractions(validation, test)
    carve = validation / (1.0 - test)
    splits: dict[str, list[Document]] = {name: [] for name in SPLITS}
    seen: set[str] = set()
    for doc in docs:
        if doc.doc_id in seen:
            # Two documents with one id would land in one split and hide a data error.
            raise ValueError(f"duplicate document id {doc.doc_id!r}; ids must be unique")
        seen.add(doc.doc_id)
        splits[_split_of_document(doc, validation, test, carve)].append(doc)
    for name in SPLITS:
        splits[name].sort(key=lambda d: d.doc_id)
    return splits


def _split_of_document(doc: Document, validation: float, test: float, carve: float) -> str:
    official = doc.source_split
    if official is None:
        return split_of(doc.doc_id, validation, test)
    if official not in SPLITS:
        raise ValueError(
            f"document {doc.doc_id!r}: source_split {official!r} is not one of {list(SPLITS)}"
        )
    if official == "train":
        return split_of(doc.doc_id, validation=carve, test=0.0)
    return official
