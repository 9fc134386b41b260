"""Sentence segmentation with character offsets, tuned for clinical text."""

from __future__ import annotations

import re

# Tokens (lower-cased, final period removed) after which a period does not end a sentence.
ABBREVIATIONS: frozenset[str] = frozenset(
    {"dr", "mr", "mrs", "ms", "prof", "e.g", "i.e", "vs", "approx", "no", "fig", "cf", "al", "st"}
)

_LINE = re.compile(r"[^\n]+")
# Sentence-final punctuation (plus closing quotes/brackets) before whitespace and a capital
# or digit; "8.2" never matches because no whitespace follows the period.
_BOUNDARY = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*(?=\s+[\"'\u201c(\[]?[A-Z0-9])")
_LAST_TOKEN = re.compile(r"(\S+)$")
_WHITESPACE = re.compile(r"\s")


def split_sentences(text: str, max_chars: int = 600) -> list[tuple[int, int]]:
    """Return sentence spans ``(start, end)`` into ``text`` (end exclusive), trimmed of
    surrounding whitespace, none empty, none longer than ``max_chars``."""
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    spans: list[tuple[int, int]] = []
    for line in _LINE.finditer(text):
        start = line.start()
        for cut in _boundaries(text, line.start(), line.end()):
            spans.extend(_pieces(text, start, cut, max_chars))
            start = cut
        spans.extend(_pieces(text, start, line.end(), max_chars))
    return spans


def _boundaries(text: str, start: int, end: int) -> list[int]:
    cuts = []
    for match in _BOUNDARY.finditer(text, start, end):
        if match.group().startswith(".") and not match.group().startswith(".."):
            token = _LAST_TOKEN.search(text, start, match.start())
            word = token.group(1).lstrip("\"'(\u201c[").lower() if token else ""
            if word in ABBREVIATIONS:
                continue
            # "1. Diabetes": a list marker at the start of a line, not a sentence end
            if token and word.isdigit() and not text[start : token.start()].strip(" \t*-\u2022"):
                continue
        cuts.append(match.end())
    return cuts


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _pieces(text: str, start: int, end: int, max_chars: int) -> list[tuple[int, int]]:
    """Trim a span and cut it at whitespace (hard cut if there is none) until it fits."""
    start, end = _trim(text, start, end)
    pieces = []
    while end - start > max_chars:
        # Last whitespace that leaves a piece of at most max_chars characters.
        cut = None
        for ws in _WHITESPACE.finditer(text, start + 1, start + max_chars + 1):
            cut = ws.start()
        cut = cut if cut is not None else start + max_chars
        piece = _trim(text, start, cut)
        if piece[0] < piece[1]:
            pieces.append(piece)
        start, end = _trim(text, cut, end)
    if start < end:
        pieces.append((start, end))
    return pieces
