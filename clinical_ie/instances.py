"""Documents -> sentence-level NER instances, with gold entities relative to the sentence."""

from __future__ import annotations

import bisect
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from data_loaders.document import Document, Entity

from .segment import split_sentences

logger = logging.getLogger(__name__)

Span = tuple[int, int]


@dataclass(frozen=True)
class GoldEntity:
    """An entity inside one sentence; ``spans`` are sorted fragments relative to the
    sentence, ``text`` their surface strings joined with a space."""

    type: str
    spans: tuple[Span, ...]
    text: str

    @property
    def start(self) -> int:
        return min(s for s, _ in self.spans)

    @property
    def end(self) -> int:
        return max(e for _, e in self.spans)


@dataclass(frozen=True)
class Instance:
    """One sentence to extract from; ``offset`` is its start in the document."""

    doc_id: str
    offset: int
    text: str
    entity_types: tuple[str, ...]
    entities: tuple[GoldEntity, ...]


def make_ner_instances(
    doc: Document, entity_types: Sequence[str], max_chars: int = 600
) -> tuple[list[Instance], int]:
    """One instance per sentence of ``doc`` (sentences without entities included, so the
    model learns to answer ``{}``), gold restricted to ``entity_types``.

    Returns the instances and the number of entities of those types dropped because they
    cross a sentence boundary (or lie outside every sentence)."""
    types = tuple(dict.fromkeys(entity_types))  # caller's order, duplicates removed
    sentences = split_sentences(doc.text, max_chars=max_chars)
    starts = [s for s, _ in sentences]
    per_sentence: list[list[GoldEntity]] = [[] for _ in sentences]
    seen: set[tuple[str, tuple[Span, ...]]] = set()
    dropped = 0
    for ent in doc.entities:
        if ent.type not in types or not ent.spans:
            continue
        idx = _sentence_of(ent, sentences, starts)
        if idx is None:
            dropped += 1
            logger.debug("%s: entity %s crosses a sentence boundary; dropped", doc.doc_id, ent.id)
            continue
        offset = sentences[idx][0]
        spans = tuple(sorted((s - offset, e - offset) for s, e in ent.spans))
        if (ent.type, spans) in seen:  # a duplicate annotation would add a phantom copy
            continue
        seen.add((ent.type, spans))
        sent_text = doc.text[offset : sentences[idx][1]]
        text = " ".join(sent_text[s:e] for s, e in spans)
        per_sentence[idx].append(GoldEntity(type=ent.type, spans=spans, text=text))
    if dropped:
        logger.info(
            "%s: %d entit%s crossing sentence boundaries dropped",
            doc.doc_id, dropped, "y" if dropped == 1 else "ies",
        )
    instances = [
        Instance(
            doc_id=doc.doc_id,
            offset=start,
            text=doc.text[start:end],
            entity_types=types,
            entities=tuple(sorted(golds, key=lambda g: (g.start, g.end, types.index(g.type)))),
        )
        for (start, end), golds in zip(sentences, per_sentence)
    ]
    return instances, dropped


def _sentence_of(ent: Entity, sentences: list[Span], starts: list[int]) -> int | None:
    idx = bisect.bisect_right(starts, ent.start) - 1
    if idx < 0:
        return None
    s, e = sentences[idx]
    return idx if s <= ent.start and ent.end <= e else None
