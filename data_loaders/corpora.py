"""Read a whole corpus through its preset: the reader its format needs, then the mapping
into the common schema, with one set of statistics for both."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_loaders.ade import read_ade
from data_loaders.brat import read_brat
from data_loaders.document import Document
from data_loaders.i2b2 import annotation_files, read_i2b2, text_files
from data_loaders.jsonl import read_jsonl
from data_loaders.mapping import MappingStats, Preset, apply_preset, load_preset
from data_loaders.stats import ReadStats

logger = logging.getLogger(__name__)

JSONL_FILE = "documents.jsonl"
ADE_FOLDER = "ADE-Corpus-V2"

# Reasons under which CorpusStats.dropped counts what the reader (not the mapping) left out.
TXT_WITHOUT_ANN = "txt_without_ann"
MALFORMED_LINE = "malformed_line_skipped"
ADE_MENTION_NOT_FOUND = "ade_mention_not_found"


@dataclass
class CorpusStats:
    """One corpus read: counts as read (``*_read``) and after the mapping."""

    path: str
    preset: str
    documents: int = 0
    entities_read: int = 0
    relations_read: int = 0
    groups_read: int = 0
    text_mismatches: int = 0  # entities whose offsets do not cover their annotated text
    entities: int = 0
    relations: int = 0
    groups: int = 0
    dropped: Counter[str] = field(default_factory=Counter)  # reason -> count
    dropped_entity_types: Counter[str] = field(default_factory=Counter)
    dropped_relation_types: Counter[str] = field(default_factory=Counter)
    reader: dict[str, int] = field(default_factory=dict)  # the reader's own counters

    @property
    def offset_match_share(self) -> float:
        """Share of the entities read whose offsets cover their annotated text."""
        if not self.entities_read:
            return 1.0
        return 1.0 - self.text_mismatches / self.entities_read

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path, "preset": self.preset, "documents": self.documents,
            "entities_read": self.entities_read, "relations_read": self.relations_read,
            "groups_read": self.groups_read, "text_mismatches": self.text_mismatches,
            "offset_match_share": self.offset_match_share,
            "entities": self.entities, "relations": self.relations, "groups": self.groups,
            "dropped": dict(sorted(self.dropped.items())),
            "dropped_entity_types": dict(sorted(self.dropped_entity_types.items())),
            "dropped_relation_types": dict(sorted(self.dropped_relation_types.items())),
            "reader": dict(self.reader),
        }

    def summary(self) -> str:
        return (
            f"{self.preset}: {self.documents} documents; read {self.entities_read} entities "
            f"({self.offset_match_share:.4%} offsets match the text), {self.relations_read} "
            f"relations; kept {self.entities} entities, {self.relations} relations; dropped "
            f"{dict(sorted(self.dropped.items()))}"
        )


def read_corpus(path: Path, preset: Preset | str | Path) -> tuple[list[Document], CorpusStats]:
    """Every document of the corpus at ``path`` in the common schema, sorted by doc_id.

    ``path`` is a BRAT folder (read recursively; folders named in the preset's
    ``source_splits`` set ``Document.source_split``), an i2b2 folder, the ADE-Corpus-V2
    folder (or its parent) or a JSONL file (or a folder holding ``documents.jsonl``).
    """
    preset = preset if isinstance(preset, Preset) else load_preset(preset)
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"corpus {path} (preset {preset.name!r}) does not exist")
    stats = CorpusStats(str(path), preset.name)
    readers = {"brat": _read_brat_tree, "i2b2": _read_i2b2_tree, "ade": _read_ade,
               "jsonl": _read_jsonl}
    raw = readers[preset.format](path, preset, stats)
    seen: set[str] = set()
    for doc in raw:
        if doc.doc_id in seen:
            raise ValueError(f"{path}: document id {doc.doc_id!r} occurs twice; ids must be "
                             "unique within a corpus")
        seen.add(doc.doc_id)
    stats.documents = len(raw)
    stats.entities_read = sum(len(d.entities) for d in raw)
    stats.relations_read = sum(len(d.relations) for d in raw)
    stats.groups_read = sum(len(d.groups) for d in raw)
    mapping = MappingStats()
    docs = sorted((apply_preset(d, preset, mapping) for d in raw), key=lambda d: d.doc_id)
    stats.entities, stats.relations, stats.groups = (
        mapping.entities, mapping.relations, mapping.groups)
    stats.dropped.update(mapping.dropped)
    stats.dropped_entity_types.update(mapping.dropped_entity_types)
    stats.dropped_relation_types.update(mapping.dropped_relation_types)
    logger.info("%s", stats.summary())
    return docs, stats


def _source_split(relative: Path, preset: Preset) -> str | None:
    splits = {preset.source_splits[p] for p in relative.parts[:-1] if p in preset.source_splits}
    if len(splits) > 1:
        raise ValueError(f"{relative}: folders name several official splits {sorted(splits)}; "
                         "expected one per document (see the preset's [source_splits])")
    return splits.pop() if splits else None


def _read_brat_tree(root: Path, preset: Preset, stats: CorpusStats) -> list[Document]:
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: a {preset.format!r} corpus must be a folder")
    brat = ReadStats("brat")
    docs: list[Document] = []
    without_ann = 0
    for txt in sorted(root.rglob("*.txt")):
        if not txt.with_suffix(".ann").is_file():
            # A README or licence file, not a document: BRAT tools always write an .ann.
            without_ann += 1
            logger.debug("%s: no .ann beside it; not a document", txt)
            continue
        doc = read_brat(txt, stats=brat, strict=preset.strict)
        doc.source_split = _source_split(txt.relative_to(root), preset)
        docs.append(doc)
    if without_ann:
        stats.dropped[TXT_WITHOUT_ANN] += without_ann
        logger.info("%s: %d .txt file(s) without an .ann skipped", root, without_ann)
    if brat.malformed_skipped:
        stats.dropped[MALFORMED_LINE] += brat.malformed_skipped
    stats.text_mismatches += brat.text_mismatches
    stats.reader = brat.as_dict()
    return docs


def _read_i2b2_tree(root: Path, preset: Preset, stats: CorpusStats) -> list[Document]:
    i2b2 = ReadStats("i2b2")
    docs: list[Document] = []
    for txt in text_files(root):
        doc = read_i2b2(txt, *annotation_files(txt), stats=i2b2)
        doc.source_split = _source_split(txt.relative_to(root), preset)
        docs.append(doc)
    stats.text_mismatches += i2b2.text_mismatches
    stats.reader = i2b2.as_dict()
    return docs


def _read_ade(root: Path, preset: Preset, stats: CorpusStats) -> list[Document]:
    folder = root / ADE_FOLDER if (root / ADE_FOLDER).is_dir() else root
    ade = ReadStats("ade")
    docs = read_ade(folder, ade)
    if ade.mentions_not_found:
        stats.dropped[ADE_MENTION_NOT_FOUND] += ade.mentions_not_found
    stats.reader = ade.as_dict()
    return docs


def _read_jsonl(root: Path, preset: Preset, stats: CorpusStats) -> list[Document]:
    path = root / JSONL_FILE if root.is_dir() else root
    jsonl = ReadStats("jsonl")
    docs = read_jsonl(path, jsonl)
    stats.text_mismatches += jsonl.text_mismatches
    stats.reader = jsonl.as_dict()
    return docs
