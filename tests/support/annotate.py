"""Gold annotations written by hand: spans and entities located by their text."""

from __future__ import annotations

from data_loaders.document import Entity


def span(text: str, needle: str, occurrence: int = 0) -> tuple[int, int]:
    """Character offsets of the `occurrence`-th (0-based) copy of `needle` in `text`."""
    start = -1
    for _ in range(occurrence + 1):
        start = text.index(needle, start + 1)
    return start, start + len(needle)


def entity(text: str, eid: str, typ: str, *needles: str) -> Entity:
    """An entity over the first copy of each needle (several needles: a discontiguous span)."""
    spans = tuple(span(text, n) for n in needles)
    return Entity(eid, typ, spans, " ".join(text[s:e] for s, e in spans))
