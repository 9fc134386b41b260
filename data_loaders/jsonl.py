"""The project's own corpus format: JSON Lines, one document per line.

::

    {"id": "d1", "text": "...", "source_split": null,
     "entities": [{"id": "T1", "type": "problem", "spans": [[0, 5]], "text": "Fever"}],
     "relations": [{"id": "R1", "type": "severity", "arg1": "T1", "arg2": "T2"}],
     "attributes": [{"id": "A1", "type": "assertion", "target": "T1", "value": "present"}],
     "groups": [{"id": "*1", "type": "OVERLAP", "members": ["T1", "T2"]}]}

``read_jsonl`` validates every line and raises ``AnnotationError`` naming ``path:line``
and the key; ``write_jsonl`` writes what ``read_jsonl`` reads back identically.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from data_loaders.brat import AnnotationError, quoted, quoted_id, read_text, text_matches
from data_loaders.document import Attribute, Document, Entity, Group, Relation, Span
from data_loaders.splits import SPLITS

from .stats import ReadStats

logger = logging.getLogger(__name__)

DOCUMENT_KEYS: tuple[str, ...] = (
    "id", "text", "entities", "relations", "attributes", "groups", "source_split",
)
# Keys every line must hold; the rest default to empty (attributes, groups) or null.
REQUIRED_KEYS: tuple[str, ...] = ("id", "text", "entities", "relations")


def document_to_json(doc: Document) -> dict[str, Any]:
    return {
        "id": doc.doc_id,
        "text": doc.text,
        "entities": [{"id": e.id, "type": e.type, "spans": [list(s) for s in e.spans],
                      "text": e.text} for e in doc.entities],
        "relations": [{"id": r.id, "type": r.type, "arg1": r.arg1, "arg2": r.arg2}
                      for r in doc.relations],
        "attributes": [{"id": a.id, "type": a.type, "target": a.target, "value": a.value}
                       for a in doc.attributes],
        "groups": [{"id": g.id, "type": g.type, "members": list(g.members)}
                   for g in doc.groups],
        "source_split": doc.source_split,
    }


def write_jsonl(docs: Iterable[Document], path: Path) -> Path:
    """Write ``docs`` to ``path`` (UTF-8, ``\\n`` line ends, non-ASCII kept as is)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as handle:
        for doc in docs:
            handle.write(json.dumps(document_to_json(doc), ensure_ascii=False) + "\n")
    return path


def read_jsonl(path: Path, stats: ReadStats | None = None) -> list[Document]:
    """Every document of ``path``, in file order; blank lines are skipped."""
    path = Path(path)
    stats = stats if stats is not None else ReadStats("jsonl")
    docs: list[Document] = []
    first_line: dict[str, int] = {}
    content = read_text(path)
    for number, raw in enumerate(content.split("\n"), start=1):
        if not raw.strip():
            continue
        doc = _LineReader(path, number, stats).read(raw)
        if doc.doc_id in first_line:
            raise AnnotationError(path, number, f"key 'id': document id {quoted_id(doc.doc_id)} is "
                                  f"already used on line {first_line[doc.doc_id]}")
        first_line[doc.doc_id] = number
        docs.append(doc)
    stats.documents += len(docs)
    return docs


class _LineReader:
    def __init__(self, path: Path, number: int, stats: ReadStats) -> None:
        self.path = path
        self.number = number
        self.stats = stats
        self.ids: dict[str, str] = {}  # annotation id -> its kind, for references

    def error(self, reason: str) -> AnnotationError:
        return AnnotationError(self.path, self.number, reason)

    def read(self, raw: str) -> Document:
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as error:
            raise self.error(f"invalid JSON at column {error.colno}: {error.msg}") from None
        if not isinstance(obj, dict):
            raise self.error("expected a JSON object (one document per line)")
        missing = [k for k in REQUIRED_KEYS if k not in obj]
        if missing:
            raise self.error(f"missing key(s) {missing}; expected {list(DOCUMENT_KEYS)}")
        unknown = sorted(set(obj) - set(DOCUMENT_KEYS))
        if unknown:
            shown = ", ".join(quoted(k) for k in unknown)
            raise self.error(f"unknown key(s) [{shown}]; expected {list(DOCUMENT_KEYS)}")
        doc_id = self.string(obj, "id", "id")
        text = obj["text"]
        if not isinstance(text, str):
            raise self.error("key 'text': expected a string")
        source_split = obj.get("source_split")
        if source_split is not None and source_split not in SPLITS:
            raise self.error(f"key 'source_split': expected null or one of {list(SPLITS)}")
        entities = [self.entity(e, i, text) for i, e in enumerate(self.items(obj, "entities"))]
        relations = [self.relation(r, i) for i, r in enumerate(self.items(obj, "relations"))]
        attributes = [self.attribute(a, i) for i, a in enumerate(self.items(obj, "attributes"))]
        groups = [self.group(g, i) for i, g in enumerate(self.items(obj, "groups"))]
        self.stats.entities += len(entities)
        self.stats.relations += len(relations)
        self.stats.attributes += len(attributes)
        self.stats.groups += len(groups)
        return Document(doc_id, text, entities, relations, attributes, groups, source_split)

    def items(self, obj: dict, key: str) -> list[dict]:
        value = obj.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.error(f"key {key!r}: expected a list of objects")
        return value

    def string(self, obj: dict, key: str, where: str) -> str:
        value = obj.get(key)
        if not isinstance(value, str) or not value:
            raise self.error(f"key {where!r}: expected a non-empty string")
        return value

    def require(self, obj: dict, where: str, keys: tuple[str, ...]) -> None:
        missing = [k for k in keys if k not in obj]
        if missing:
            raise self.error(f"key {where!r}: missing key(s) {missing}; expected {list(keys)}")

    def claim(self, ann_id: str, where: str, kind: str) -> None:
        if ann_id in self.ids:
            raise self.error(f"key '{where}.id': id {quoted_id(ann_id)} is already used by an "
                             f"{self.ids[ann_id]}")
        self.ids[ann_id] = kind

    def entity(self, obj: dict, index: int, text: str) -> Entity:
        where = f"entities[{index}]"
        self.require(obj, where, ("id", "type", "spans", "text"))
        ann_id = self.string(obj, "id", f"{where}.id")
        self.claim(ann_id, where, "entity")
        ent_type = self.string(obj, "type", f"{where}.type")
        spans = obj["spans"]
        if not isinstance(spans, list) or not spans:
            raise self.error(f"key '{where}.spans': expected a non-empty list of [start, end]")
        parsed: list[Span] = []
        for span in spans:
            if not (isinstance(span, list) and len(span) == 2
                    and all(isinstance(v, int) and not isinstance(v, bool) for v in span)):
                raise self.error(f"key '{where}.spans': expected [start, end] integer pairs")
            start, end = span
            if not 0 <= start < end <= len(text):
                raise self.error(
                    f"key '{where}.spans': span {start}-{end} is empty or outside the text "
                    f"(expected 0 <= start < end <= {len(text)})"
                )
            parsed.append((start, end))
        ent_text = obj["text"]
        if not isinstance(ent_text, str):
            raise self.error(f"key '{where}.text': expected a string")
        if not text_matches(" ".join(text[s:e] for s, e in parsed), ent_text):
            self.stats.text_mismatches += 1
            logger.warning("%s:%d: %s (%s) text does not match the document text at its "
                           "spans; kept as written", self.path, self.number, where, ann_id)
        return Entity(ann_id, ent_type, tuple(parsed), ent_text)

    def reference(self, obj: dict, key: str, where: str, kinds: tuple[str, ...]) -> str:
        target = self.string(obj, key, f"{where}.{key}")
        if self.ids.get(target) not in kinds:
            raise self.error(f"key '{where}.{key}': {quoted_id(target)} is not the id of an "
                             f"{' or '.join(kinds)} of this document")
        return target

    def relation(self, obj: dict, index: int) -> Relation:
        where = f"relations[{index}]"
        self.require(obj, where, ("id", "type", "arg1", "arg2"))
        ann_id = self.string(obj, "id", f"{where}.id")
        rel_type = self.string(obj, "type", f"{where}.type")
        arg1 = self.reference(obj, "arg1", where, ("entity",))
        arg2 = self.reference(obj, "arg2", where, ("entity",))
        self.claim(ann_id, where, "relation")
        return Relation(ann_id, rel_type, arg1, arg2)

    def attribute(self, obj: dict, index: int) -> Attribute:
        where = f"attributes[{index}]"
        self.require(obj, where, ("id", "type", "target"))
        ann_id = self.string(obj, "id", f"{where}.id")
        att_type = self.string(obj, "type", f"{where}.type")
        target = self.reference(obj, "target", where, ("entity", "relation"))
        value = obj.get("value")
        if value is not None and not isinstance(value, str):
            raise self.error(f"key '{where}.value': expected a string or null")
        self.claim(ann_id, where, "attribute")
        return Attribute(ann_id, att_type, target, value)

    def group(self, obj: dict, index: int) -> Group:
        where = f"groups[{index}]"
        self.require(obj, where, ("id", "type", "members"))
        ann_id = self.string(obj, "id", f"{where}.id")
        group_type = self.string(obj, "type", f"{where}.type")
        members = obj["members"]
        if not isinstance(members, list) or not members:
            raise self.error(f"key '{where}.members': expected a non-empty list of entity ids")
        for member in members:
            if not isinstance(member, str) or self.ids.get(member) != "entity":
                raise self.error(f"key '{where}.members': {quoted_id(member)} is not the id of an "
                                 "entity of this document")
        self.claim(ann_id, where, "group")
        return Group(ann_id, group_type, tuple(members))
