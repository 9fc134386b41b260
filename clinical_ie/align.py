"""Predicted mention strings -> character spans in the sentence (DESIGN decision 4)."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence

logger = logging.getLogger(__name__)

Span = tuple[int, int]


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
