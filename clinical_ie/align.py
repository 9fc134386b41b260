"""Predicted mention strings (and relation argument strings) -> character spans in the
sentence; an entity answer -> the entities a given-entities relation prompt lists."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence

from .instances import GoldEntity, Instance, listed_entities
from .parsing import parse_entities

logger = logging.getLogger(__name__)

Span = tuple[int, int]
# (relation type, first argument span, second argument span)
AlignedRelation = tuple[str, Span, Span]


def align_predictions(
    predicted: Sequence[tuple[str, str]], text: str
) -> tuple[list[tuple[str, int, int]], int]:
    """Map (type, string) predictions to (type, start, end) spans in ``text``.

    The k-th copy of a string (same type) takes its k-th unused occurrence: exact matches
    first, then case-insensitive ones. Longer strings are placed first and a string prefers
    occurrences that do not overlap a span already taken by its type, so "pain" after
    "chest pain" goes to a separate "pain" when there is one. Returns the spans, in
    prediction order, and the number of predictions dropped (empty, or no occurrence left).
    """
    # Usage is tracked per type: the same text under two types may take the same span.
    taken: dict[str, list[Span]] = {}
    placed: list[Span | None] = [None] * len(predicted)
    order = sorted(range(len(predicted)), key=lambda i: -len(predicted[i][1].strip()))
    for i in order:
        typ, mention = predicted[i]
        mention = mention.strip()
        if not mention:
            continue
        spans = taken.setdefault(typ, [])
        span = _choose(_exact(text, mention), spans) or _choose(_ignore_case(text, mention), spans)
        if span is not None:
            spans.append(span)
            placed[i] = span
    aligned = [(typ, *span) for (typ, _), span in zip(predicted, placed) if span is not None]
    dropped = len(predicted) - len(aligned)
    if dropped:
        logger.debug("%d predicted mention(s) not found in the sentence", dropped)
    return aligned, dropped


def predicted_entities(instance: Instance, answer: str) -> tuple[tuple[GoldEntity, ...], int]:
    """The entities an entity instance's answer names, as single-span entities of its
    sentence in order of appearance (each once), and the number of mentions not found."""
    spans, missing = align_predictions(parse_entities(answer, instance.entity_types).entities, instance.text)
    found = [GoldEntity(typ, ((s, e),), instance.text[s:e]) for typ, s, e in spans]
    return listed_entities(found, (), instance.entity_types), missing


def align_relations(
    predicted: Sequence[tuple[str, str, str]], text: str
) -> tuple[list[AlignedRelation], int]:
    """Map (type, first, second) argument strings to spans in ``text``.

    An argument may take part in several relations, so occurrences are not used up one
    per argument as entities are; the two arguments are placed together instead: each
    argument's candidates are its exact occurrences (case-insensitive ones when there is
    none), and the relation takes the pair of occurrences nearest each other, ties going
    to the earliest in text order. As for entities, an occurrence inside a different
    argument already placed (same type and position) comes after free ones, so "81" after
    "81 mg" goes to a separate "81" when there is one. The k-th copy of a relation (same
    type and strings) takes the k-th such pair, and is dropped when none is left. Returns
    the aligned relations, in prediction order, and the number dropped (an empty
    argument, an argument not in ``text``, or a copy with no pair left).
    """
    taken: dict[str, set[tuple[Span, Span]]] = {}
    placed: dict[tuple[str, int], list[tuple[Span, str]]] = {}
    aligned: list[AlignedRelation] = []
    for typ, first, second in predicted:
        first, second = first.strip(), second.strip()
        pairs = taken.setdefault(typ, set())
        firsts = _occurrences(text, first, placed.setdefault((typ, 0), []))
        seconds = _occurrences(text, second, placed.setdefault((typ, 1), []))
        pair = _nearest_pair(firsts, seconds, pairs)
        if pair is not None:
            pairs.add(pair)
            placed[(typ, 0)].append((pair[0], first.lower()))
            placed[(typ, 1)].append((pair[1], second.lower()))
            aligned.append((typ, *pair))
    dropped = len(predicted) - len(aligned)
    if dropped:
        logger.debug("%d predicted relation(s) with an argument not found in the sentence", dropped)
    return aligned, dropped


def _occurrences(text: str, mention: str, placed: list[tuple[Span, str]]) -> list[tuple[Span, bool]]:
    """Occurrences of ``mention``, each with whether it lies across a different argument
    already placed."""
    if not mention:
        return []
    spans = list(_exact(text, mention)) or list(_ignore_case(text, mention))
    lower = mention.lower()
    return [
        (span, any(p != span and p[0] < span[1] and span[0] < p[1] and t != lower for p, t in placed))
        for span in spans
    ]


def _nearest_pair(firsts: list[tuple[Span, bool]], seconds: list[tuple[Span, bool]],
                  taken: set[tuple[Span, Span]]) -> tuple[Span, Span] | None:
    """The free (first, second) pair with the fewest occurrences inside other arguments,
    then the smallest gap; an argument paired with its own span comes last (a relation
    links two mentions)."""
    best: tuple[Span, Span] | None = None
    best_key: tuple[int, bool, int, int, int] | None = None
    for a, a_inside in firsts:
        for b, b_inside in seconds:
            if (a, b) in taken:
                continue
            gap = max(0, max(a[0], b[0]) - min(a[1], b[1]))
            key = (a_inside + b_inside, a == b, gap, a[0], b[0])
            if best_key is None or key < best_key:
                best, best_key = (a, b), key
    return best


def _choose(candidates: Iterator[Span], taken: list[Span]) -> Span | None:
    """First free occurrence that overlaps nothing taken, else first one not itself taken."""
    fallback = None
    for span in candidates:
        if span in taken:
            continue
        if not any(span[0] < e and s < span[1] for s, e in taken):
            return span
        fallback = fallback or span
    return fallback


def _exact(text: str, mention: str) -> Iterator[Span]:
    start = text.find(mention)
    while start >= 0:
        yield start, start + len(mention)
        start = text.find(mention, start + 1)


def _ignore_case(text: str, mention: str) -> Iterator[Span]:
    # A lookahead finds overlapping occurrences; regex keeps offsets where lower() might not.
    for match in re.finditer(f"(?=({re.escape(mention)}))", text, flags=re.IGNORECASE):
        yield match.start(1), match.end(1)
