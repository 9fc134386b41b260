"""BIO tags over the words of a sentence, and back to character spans (the token-classification
task, docs/token-classification.md). Torch-free: the model side is modeling/token_classification.py.

A sentence is cut into words: runs of letters, runs of digits, and every other non-space
character alone ("5mg" is "5" "mg", "x-ray" is "x" "-" "ray"), so most entity boundaries fall
between words. Each word gets one tag, "O", "B-<type>" or "I-<type>". Decoding reads spans off
the tags, from a word's first character to a later word's last, so every predicted span is a
substring of its sentence by construction (nothing to align, nothing unaligned).

BIO cannot hold what the generative answers can, and `encode_bio` says how much it lost:
- overlapping entities (nested or crossing): the earlier one is kept (at the same start, the
  longer one), the others are dropped (`dropped`, with the rare entity that covers no word);
- a discontiguous entity is tagged over its covering extent, which is what strict scoring
  compares a predicted span with (clinical_ie/scoring.py);
- an entity boundary inside a word widens the entity to whole words (`widened`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from .instances import GoldEntity

Span = tuple[int, int]
OUTSIDE = "O"
_WORD = re.compile(r"[^\W\d_]+|\d+|\S")


class LabelSetError(ValueError):
    """A site's (or a folder's) entity types are not all in the run's label set. Names the site
    and the types only, never note text: it is sent to the coordinator in full."""


def words(text: str) -> list[Span]:
    """Character spans of the words of ``text`` (see the module docstring), in order."""
    return [m.span() for m in _WORD.finditer(text)]


def bio_labels(entity_types: Sequence[str]) -> tuple[str, ...]:
    """The label set of ``entity_types``: "O", then "B-t" and "I-t" of each type in order."""
    return (OUTSIDE, *(f"{prefix}-{t}" for t in entity_types for prefix in ("B", "I")))


def label_ids(labels: Sequence[str], entity_types: Sequence[str]) -> tuple[int, ...]:
    """Positions in ``labels`` of "O" and of the B/I tags of ``entity_types`` (the labels an
    instance asking for those types may predict)."""
    wanted = set(bio_labels(entity_types))
    return tuple(i for i, label in enumerate(labels) if label in wanted)


@dataclass(frozen=True)
class BioEncoding:
    """One tag per word, and what BIO could not hold (see the module docstring)."""

    tags: tuple[str, ...]
    kept: tuple[GoldEntity, ...]  # the entities the tags hold, each as its word-aligned extent
    dropped: int = 0
    widened: int = 0


def encode_bio(spans: Sequence[Span], entities: Sequence[GoldEntity]) -> BioEncoding:
    """Tags of the words ``spans`` for ``entities`` (sentence-relative, as instances hold them)."""
    tags = [OUTSIDE] * len(spans)
    kept: list[GoldEntity] = []
    dropped = widened = 0
    taken: list[Span] = []
    for entity in sorted(entities, key=lambda e: (e.start, -(e.end - e.start), e.type)):
        covered = [i for i, (s, e) in enumerate(spans) if s < entity.end and entity.start < e]
        if not covered:  # whitespace only: nothing a word could carry
            dropped += 1
            continue
        first, last = covered[0], covered[-1]
        extent = (spans[first][0], spans[last][1])
        if any(extent[0] < e and s < extent[1] for s, e in taken):
            dropped += 1
            continue
        if extent != (entity.start, entity.end):
            widened += 1
        taken.append(extent)
        tags[first] = f"B-{entity.type}"
        for i in range(first + 1, last + 1):
            tags[i] = f"I-{entity.type}"
        kept.append(GoldEntity(entity.type, (extent,), ""))
    return BioEncoding(tuple(tags), tuple(sorted(kept, key=lambda g: g.start)), dropped, widened)


def decode_bio(text: str, spans: Sequence[Span], tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """(type, start, end) of every entity the tags name, in order; ``text[start:end]`` is the
    entity's text. An "I-t" that does not continue a "t" entity starts one (a model may tag
    the inside of an entity without its beginning)."""
    if len(spans) != len(tags):
        raise ValueError(f"{len(spans)} words but {len(tags)} tags")
    found: list[list] = []  # [type, start, end]
    previous = OUTSIDE
    for (start, end), tag in zip(spans, tags):
        if not 0 <= start < end <= len(text):
            raise ValueError(f"word span {(start, end)} is not inside the sentence of {len(text)} characters")
        prefix, _, typ = tag.partition("-")
        if tag == OUTSIDE or prefix not in ("B", "I") or not typ:
            previous = OUTSIDE
            continue
        if prefix == "I" and previous == typ:
            found[-1][2] = end
        else:
            found.append([typ, start, end])
        previous = typ
    return [(t, s, e) for t, s, e in found]


def check_label_types(site: str, site_types: Sequence[str], label_types: Sequence[str]) -> None:
    """Raise LabelSetError naming the site and every type it annotates that the label set lacks."""
    missing = [t for t in site_types if t not in label_types]
    if missing:
        raise LabelSetError(
            f"site {site!r} annotates entity type(s) {missing}, which the run's token-classification label "
            f"set {list(label_types)} lacks; add them to model.label-types (or leave it empty for the union of "
            "the entity types of data.sites and the coordinator's validation folder)")
