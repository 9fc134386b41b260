"""i2b2 2010 concepts, assertions and relations (``.txt`` + ``.con`` [+ ``.ast``] [+ ``.rel``]).

Offsets are ``line:token``: lines 1-based, tokens 0-based, a token being a run of
non-whitespace in its line; a concept ``12:3 12:5`` covers tokens 3 to 5 inclusive. They
become character offsets into the text. Lines::

    .con  c="chest pain" 12:3 12:4||t="problem"
    .ast  c="chest pain" 12:3 12:4||t="problem"||a="present"
    .rel  c="aspirin" 4:0 4:0||r="TrAP"||c="chest pain" 12:3 12:4

A relation's first concept becomes ``arg1``, its second ``arg2``; an assertion becomes an
``Attribute`` of type ``assertion`` on its concept. Concept texts are checked against
the tokens (case-insensitive, whitespace-normalised); a mismatch is reported with
``path:line`` and kept. Malformed lines raise ``AnnotationError`` (no note text in it).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from data_loaders.brat import AnnotationError, read_text
from data_loaders.document import Attribute, Document, Entity, Relation

from .stats import ReadStats

logger = logging.getLogger(__name__)

_CONCEPT = r'c="(.*?)" (\d+):(\d+) (\d+):(\d+)'
_CON_LINE = re.compile(rf'{_CONCEPT}\|\|t="([^"]+)"')
_AST_LINE = re.compile(rf'{_CONCEPT}\|\|t="([^"]+)"\|\|a="([^"]+)"')
_REL_LINE = re.compile(rf'{_CONCEPT}\|\|r="([^"]+)"\|\|{_CONCEPT}')
_TOKEN = re.compile(r"\S+")

# (first line, first token, last line, last token), as written.
Position = tuple[int, int, int, int]


class _Tokens:
    """Character offsets of every token, by (1-based line, 0-based token)."""

    def __init__(self, text: str) -> None:
        self.lines: list[list[tuple[int, int]]] = []
        start = 0
        for line in text.split("\n"):
            self.lines.append([(start + m.start(), start + m.end()) for m in _TOKEN.finditer(line)])
            start += len(line) + 1

    def token(self, line: int, index: int) -> tuple[int, int] | None:
        if not 1 <= line <= len(self.lines) or not 0 <= index < len(self.lines[line - 1]):
            return None
        return self.lines[line - 1][index]


def read_i2b2(
    txt_path: Path,
    con_path: Path | None = None,
    rel_path: Path | None = None,
    ast_path: Path | None = None,
    stats: ReadStats | None = None,
) -> Document:
    """Read one document. Missing paths default to siblings of ``txt_path`` with the
    suffixes ``.con``, ``.rel`` and ``.ast``; absent ``.rel``/``.ast`` files are fine, an
    absent ``.con`` gives a document without annotations."""
    txt_path = Path(txt_path)
    con_path = Path(con_path) if con_path else txt_path.with_suffix(".con")
    rel_path = Path(rel_path) if rel_path else txt_path.with_suffix(".rel")
    ast_path = Path(ast_path) if ast_path else txt_path.with_suffix(".ast")
    stats = stats if stats is not None else ReadStats("i2b2")
    text = read_text(txt_path)
    doc = Document(doc_id=txt_path.stem, text=text)
    stats.documents += 1
    if not con_path.is_file():
        logger.debug("%s: no concept file, document has no annotations", con_path)
        return doc
    tokens = _Tokens(text)
    by_position: dict[Position, str] = {}
    for number, match in _lines(con_path, _CON_LINE, "c=\"TEXT\" L:T L:T||t=\"TYPE\""):
        concept, position = match.group(1), _position(match, 2)
        span = _char_span(con_path, number, position, tokens)
        if position in by_position:
            # The same span typed twice is one concept per type in i2b2; keep the first id.
            logger.debug("%s:%d: concept repeats an earlier position", con_path, number)
        ent_id = f"T{len(doc.entities) + 1}"
        by_position.setdefault(position, ent_id)
        covered = text[span[0]:span[1]]
        if " ".join(concept.lower().split()) != " ".join(covered.lower().split()):
            stats.text_mismatches += 1
            logger.warning("%s:%d: concept text does not match tokens %s; kept at the tokens",
                           con_path, number, _format(position))
        doc.entities.append(Entity(ent_id, match.group(6), (span,), covered))
    if ast_path.is_file():
        for number, match in _lines(ast_path, _AST_LINE,
                                    "c=\"TEXT\" L:T L:T||t=\"TYPE\"||a=\"ASSERTION\""):
            target = _concept_id(ast_path, number, _position(match, 2), by_position)
            doc.attributes.append(
                Attribute(f"A{len(doc.attributes) + 1}", "assertion", target, match.group(7))
            )
    if rel_path.is_file():
        for number, match in _lines(rel_path, _REL_LINE,
                                    "c=\"TEXT\" L:T L:T||r=\"TYPE\"||c=\"TEXT\" L:T L:T"):
            arg1 = _concept_id(rel_path, number, _position(match, 2), by_position)
            arg2 = _concept_id(rel_path, number, _position(match, 8), by_position)
            doc.relations.append(Relation(f"R{len(doc.relations) + 1}", match.group(6), arg1, arg2))
    stats.entities += len(doc.entities)
    stats.relations += len(doc.relations)
    stats.attributes += len(doc.attributes)
    return doc


def read_i2b2_folder(folder: Path, stats: ReadStats | None = None) -> list[Document]:
    """Every ``*.txt`` under ``folder`` (recursively), sorted by doc_id; annotations as
    found by :func:`annotation_files`."""
    stats = stats if stats is not None else ReadStats("i2b2")
    docs = [read_i2b2(txt, *annotation_files(txt), stats=stats) for txt in text_files(folder)]
    if stats.text_mismatches:
        logger.info("%s: %s", folder, stats.as_dict())
    return docs


def text_files(folder: Path) -> list[Path]:
    """The ``.txt`` files under ``folder``, sorted by doc_id (the stem), which must be
    unique."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"i2b2 folder {folder} does not exist or is not a folder")
    seen: dict[str, Path] = {}
    paths = sorted(folder.rglob("*.txt"), key=lambda p: (p.stem, str(p)))
    for txt in paths:
        if txt.stem in seen:
            raise ValueError(f"{txt}: document id {txt.stem!r} is also used by {seen[txt.stem]}")
        seen[txt.stem] = txt
    return paths


def annotation_files(txt: Path) -> tuple[Path, Path, Path]:
    """``.con``, ``.rel`` and ``.ast`` paths for ``txt``: beside it, or, for a ``txt/``
    folder of the official release layout, in its sibling ``concept/``, ``rel/`` and
    ``ast/`` folders. The files need not exist."""
    found = []
    for suffix, sub in ((".con", "concept"), (".rel", "rel"), (".ast", "ast")):
        beside = txt.with_suffix(suffix)
        if beside.is_file() or txt.parent.name != "txt":
            found.append(beside)
        else:
            found.append(txt.parent.parent / sub / f"{txt.stem}{suffix}")
    return found[0], found[1], found[2]


def _lines(path: Path, pattern: re.Pattern[str], expected: str):
    content = read_text(path)
    for number, raw in enumerate(content.split("\n"), start=1):
        line = raw.strip()
        if not line:
            continue
        match = pattern.fullmatch(line)
        if match is None:
            raise AnnotationError(path, number, f"expected '{expected}'")
        yield number, match


def _position(match: re.Match[str], first_group: int) -> Position:
    a, b, c, d = (int(match.group(first_group + i)) for i in range(4))
    return (a, b, c, d)


def _format(position: Position) -> str:
    return f"{position[0]}:{position[1]} {position[2]}:{position[3]}"


def _char_span(path: Path, number: int, position: Position, tokens: _Tokens) -> tuple[int, int]:
    first = tokens.token(position[0], position[1])
    last = tokens.token(position[2], position[3])
    if first is None or last is None:
        raise AnnotationError(
            path, number,
            f"position {_format(position)} is not a token of the text (expected 1-based "
            f"lines up to {len(tokens.lines)} and 0-based token indexes within the line)",
        )
    if last[1] <= first[0]:
        raise AnnotationError(path, number,
                              f"position {_format(position)} ends before it starts")
    return (first[0], last[1])


def _concept_id(path: Path, number: int, position: Position, by_position: dict[Position, str]
                ) -> str:
    if position not in by_position:
        raise AnnotationError(path, number,
                              f"no concept at {_format(position)} in the .con file")
    return by_position[position]
