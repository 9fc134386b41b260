"""Documents -> sentence-level task instances (entity extraction and relation extraction),
with gold annotations relative to the sentence."""

from __future__ import annotations

import bisect
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from data_loaders.document import Document, Entity

from .segment import split_sentences

logger = logging.getLogger(__name__)

Span = tuple[int, int]

NER = "ner"
RE = "re"
TASKS: tuple[str, ...] = (NER, RE)

# How a relation instance asks: with the sentence's entities listed (numbered) and the
# answer pairs of their numbers, or with the sentence alone and the answer copying both
# argument texts. Given entities, relation extraction runs after entity extraction.
GIVEN_ENTITIES = "given-entities"
END_TO_END = "end-to-end"
RE_MODES: tuple[str, ...] = (GIVEN_ENTITIES, END_TO_END)
# The project default (config key data.re-mode): the mode with the higher end-to-end relation
# F1 on the shared corpora (docs/architecture.md, "Relation extraction modes").
DEFAULT_RE_MODE = END_TO_END


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
class GoldRelation:
    """A relation inside one sentence: ``arg1`` the main entity (or first argument),
    ``arg2`` the modifier (or second argument)."""

    type: str
    arg1: GoldEntity
    arg2: GoldEntity


@dataclass(frozen=True)
class Instance:
    """One sentence to extract from; ``offset`` is its start in the document.

    ``task`` is ``"ner"`` (gold in ``entities``, asked for ``entity_types``) or ``"re"``
    (gold in ``relations``, asked for ``relation_types``; ``entity_types`` then only
    records which entity types the source annotates). A relation instance with
    ``given_entities`` lists ``entities`` in its prompt (in this order, numbered from 1)
    and its answer names arguments by those numbers; without it ``entities`` is empty."""

    doc_id: str
    offset: int
    text: str
    entity_types: tuple[str, ...]
    entities: tuple[GoldEntity, ...]
    task: str = NER
    relation_types: tuple[str, ...] = ()
    relations: tuple[GoldRelation, ...] = ()
    given_entities: bool = False


def check_re_mode(re_mode: str) -> None:
    if re_mode not in RE_MODES:
        raise ValueError(f"re_mode: {re_mode!r} is not one of {list(RE_MODES)}")


class _Sentences:
    """The sentences of one document, and which one holds a given entity."""

    def __init__(self, doc: Document, max_chars: int) -> None:
        self.doc = doc
        self.spans = split_sentences(doc.text, max_chars=max_chars)
        self._starts = [s for s, _ in self.spans]

    def locate(self, ent: Entity) -> tuple[int, GoldEntity] | None:
        """Index of the sentence that wholly contains ``ent`` and the entity relative to it;
        None when it crosses a boundary (a natural one or a forced cut of a long sentence)."""
        if not ent.spans:
            return None
        idx = bisect.bisect_right(self._starts, ent.start) - 1
        if idx < 0:
            return None
        s, e = self.spans[idx]
        if not (s <= ent.start and ent.end <= e):
            return None
        spans = tuple(sorted((a - s, b - s) for a, b in ent.spans))
        sent_text = self.doc.text[s:e]
        text = " ".join(sent_text[a:b] for a, b in spans)
        return idx, GoldEntity(type=ent.type, spans=spans, text=text)


def make_ner_instances(
    doc: Document, entity_types: Sequence[str], max_chars: int = 600
) -> tuple[list[Instance], int]:
    """One instance per sentence of ``doc`` (sentences without entities included, so the
    model learns to answer ``{}``), gold restricted to ``entity_types``.

    Returns the instances and the number of entities of those types dropped because they
    cross a sentence boundary, are split by the forced cut of an over-long sentence, or
    lie outside every sentence."""
    types = tuple(dict.fromkeys(entity_types))  # caller's order, duplicates removed
    sentences = _Sentences(doc, max_chars)
    per_sentence: list[list[GoldEntity]] = [[] for _ in sentences.spans]
    seen: set[tuple[str, tuple[Span, ...]]] = set()
    dropped = 0
    for ent in doc.entities:
        if ent.type not in types or not ent.spans:
            continue
        located = sentences.locate(ent)
        if located is None:
            dropped += 1
            logger.debug("%s: entity %s crosses a sentence boundary; dropped", doc.doc_id, ent.id)
            continue
        idx, gold = located
        if (gold.type, gold.spans) in seen:  # a duplicate annotation would add a phantom copy
            continue
        seen.add((gold.type, gold.spans))
        per_sentence[idx].append(gold)
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
        for (start, end), golds in zip(sentences.spans, per_sentence)
    ]
    return instances, dropped


def make_re_instances(
    doc: Document,
    relation_types: Sequence[str],
    entity_types: Sequence[str],
    max_chars: int = 600,
    re_mode: str = DEFAULT_RE_MODE,
) -> tuple[list[Instance], int]:
    """One relation instance per sentence that holds at least one entity of
    ``entity_types`` (a sentence without candidate arguments teaches nothing); gold = the
    relations of ``relation_types`` whose two arguments both lie in that sentence.

    With ``re_mode`` ``"given-entities"`` the instance lists, in order of appearance, the
    sentence's entities of ``entity_types`` and every gold argument not among them (an
    argument of a type the site does not list must still be nameable).

    Returns the instances and the number of relations of those types dropped: an argument
    in another sentence (or split by a forced cut), or an argument id the document lacks."""
    check_re_mode(re_mode)
    rel_types = tuple(dict.fromkeys(relation_types))
    ent_types = tuple(dict.fromkeys(entity_types))
    if not rel_types:
        return [], 0
    sentences = _Sentences(doc, max_chars)
    located = {ent.id: sentences.locate(ent) for ent in doc.entities}
    candidates: dict[int, list[GoldEntity]] = {}
    for ent in doc.entities:
        if ent.type in ent_types and located[ent.id] is not None:
            idx, gold = located[ent.id]
            candidates.setdefault(idx, []).append(gold)
    per_sentence: dict[int, list[GoldRelation]] = {i: [] for i in candidates}
    seen: set[tuple[str, tuple[Span, ...], tuple[Span, ...]]] = set()
    crossing = missing = 0
    for rel in doc.relations:
        if rel.type not in rel_types:
            continue
        if rel.arg1 not in located or rel.arg2 not in located:
            missing += 1
            logger.warning("%s: relation %s names an unknown entity; dropped", doc.doc_id, rel.id)
            continue
        first, second = located[rel.arg1], located[rel.arg2]
        if first is None or second is None or first[0] != second[0]:
            crossing += 1
            logger.debug("%s: relation %s crosses a sentence boundary; dropped", doc.doc_id, rel.id)
            continue
        idx = first[0]
        key = (rel.type, first[1].spans, second[1].spans)
        if key in seen:  # a duplicate annotation would add a phantom copy
            continue
        seen.add(key)
        # Arguments of types the site does not list still make the sentence a candidate.
        per_sentence.setdefault(idx, []).append(GoldRelation(rel.type, first[1], second[1]))
    if crossing:
        logger.info(
            "%s: %d relation%s crossing sentence boundaries dropped",
            doc.doc_id, crossing, "" if crossing == 1 else "s",
        )
    instances = []
    given = re_mode == GIVEN_ENTITIES
    for idx in sorted(per_sentence):
        start, end = sentences.spans[idx]
        golds = sorted(per_sentence[idx], key=lambda r: (_relation_order(r), rel_types.index(r.type)))
        listed = listed_entities(candidates.get(idx, []), golds, ent_types) if given else ()
        instances.append(Instance(
            doc_id=doc.doc_id, offset=start, text=doc.text[start:end], entity_types=ent_types,
            entities=listed, task=RE, relation_types=rel_types, relations=tuple(golds),
            given_entities=given,
        ))
    return instances, crossing + missing


def listed_entities(
    entities: Sequence[GoldEntity], relations: Sequence[GoldRelation], entity_types: Sequence[str]
) -> tuple[GoldEntity, ...]:
    """The entities a given-entities prompt lists: ``entities`` and every relation argument,
    each once, in order of appearance (same span: in ``entity_types`` order, others after)."""
    unique = dict.fromkeys([*entities, *(a for r in relations for a in (r.arg1, r.arg2))])
    rank = {t: i for i, t in enumerate(entity_types)}
    return tuple(sorted(unique, key=lambda g: (g.start, g.end, rank.get(g.type, len(rank)), g.type)))


def make_instances(
    doc: Document,
    entity_types: Sequence[str],
    relation_types: Sequence[str],
    tasks: Sequence[str] = TASKS,
    max_chars: int = 600,
    re_mode: str = DEFAULT_RE_MODE,
) -> tuple[list[Instance], int]:
    """NER and relation instances of one document, mixed for multi-task training as the
    reference work does: sentence by sentence, the NER instance before the RE one
    (``re_mode``: see ``make_re_instances``).

    Returns the instances and the number of gold entities and relations dropped."""
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; valid tasks are {list(TASKS)}")
    check_re_mode(re_mode)
    instances: list[Instance] = []
    dropped = 0
    if NER in tasks and entity_types:
        made, lost = make_ner_instances(doc, entity_types, max_chars)
        instances += made
        dropped += lost
    if RE in tasks and relation_types:
        made, lost = make_re_instances(doc, relation_types, entity_types, max_chars, re_mode)
        instances += made
        dropped += lost
    # Stable sort: per sentence, NER first.
    instances.sort(key=lambda i: (i.offset, TASKS.index(i.task)))
    return instances, dropped


def _relation_order(rel: GoldRelation) -> tuple[int, int, int, int]:
    """Order of appearance: first argument, then second."""
    return rel.arg1.start, rel.arg1.end, rel.arg2.start, rel.arg2.end
