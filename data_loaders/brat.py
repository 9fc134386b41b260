"""BRAT standoff reader and writer (``.txt`` + ``.ann``) into the shared ``Document``.

Supported ``.ann`` lines: ``T`` (text-bound, discontiguous spans allowed), ``E`` (events,
resolved to their trigger ``T``), ``R`` (binary relations), ``A``/``M`` (attributes),
``*`` n-ary groups (``*\tOVERLAP T1 T2``, ``*\tOR T1 T2``: kept as ``Group`` with ids
``*1``, ``*2``.. in file order), ``#`` notes (ignored) and ``N`` normalisations (skipped,
counted).

Errors never quote note text: they name ``path:line`` and the reason, because error
messages may travel beyond the site (docs/architecture.md, "Nothing that leaves a site contains note text").
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from data_loaders.document import Attribute, Document, Entity, Group, Relation, Span

from .stats import ReadStats

logger = logging.getLogger(__name__)


# An annotation line: an id of a known kind (``*`` has none), then a tab.
_LINE_START = re.compile(r"([TERAMN#]\S*|\*)\t")


class AnnotationError(ValueError):
    """A malformed or inconsistent line of a data file; the message starts with ``path:line``."""

    def __init__(self, path: Path | str, line: int, reason: str) -> None:
        super().__init__(f"{path}:{line}: {reason}")
        self.path = Path(path)
        self.line = line
        self.reason = reason


# What an error may quote from a data file: types, keys (short tokens, no spaces).
_QUOTABLE = re.compile(r"[\w.:*#+/-]{1,40}")


def quoted(value: object) -> str:
    """``value`` quoted when it is a short token (a type, a key), else only what it is.

    Annotation files copy note text into their columns, and a malformed line may hold it
    where an id belongs: errors quote nothing that could be note text."""
    if isinstance(value, str):
        if _QUOTABLE.fullmatch(value):
            return repr(value)
        return f"a string of {len(value)} characters (not shown)"
    if isinstance(value, (bool, int, float)) or value is None:
        return repr(value)
    return f"a {type(value).__name__}"


# What an error may quote of an id: BRAT-style ids (T12, R3, *1, #2), short names, numbers.
_QUOTABLE_ID = re.compile(r"[A-Za-z*#]{0,4}\d{0,9}")


def quoted_id(value: object, bare: bool = False) -> str:
    """An annotation or document id quoted when it looks like one (up to four letters and
    digits: ``T12``, ``R3``, ``15939911``; ``bare``: without quotes), else only its length:
    an id column that holds anything else may hold note text."""
    if isinstance(value, str) and value and _QUOTABLE_ID.fullmatch(value):
        return value if bare else repr(value)
    if isinstance(value, str):
        return f"an id of {len(value)} characters (not shown)"
    return quoted(value)


def read_text(path: Path | str) -> str:
    """A UTF-8 text file, line endings kept (offsets count ``\\r``). Bytes that are not
    UTF-8 raise ``AnnotationError`` naming ``path:line`` and the byte, not the text."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        raise AnnotationError(
            path, line, f"not UTF-8 text: byte 0x{data[error.start]:02x} at byte {column} of the "
            "line; save the file as UTF-8",
        ) from None


# Raw, unresolved records from the first pass; resolved once every id is known, because
# BRAT allows a line to reference an id defined further down.
@dataclass
class _RawRef:
    line: int
    id: str
    type: str
    args: list[str] = field(default_factory=list)
    value: str | None = None


@dataclass
class _RawEntity:
    line: int
    id: str
    type: str
    spans: tuple[Span, ...]
    text: str
    # A span over a newline lets some writers break the text column across lines.
    covers_newline: bool


def read_brat(
    txt_path: Path,
    ann_path: Path | None = None,
    stats: ReadStats | None = None,
    strict: bool = True,
) -> Document:
    """Read one document; a missing ``.ann`` yields a document without annotations.

    ``strict=False`` skips (with a warning, counted in ``stats``) lines that would raise
    ``AnnotationError``, and what references them: real corpora hold a few stray lines.
    """
    txt_path = Path(txt_path)
    ann_path = Path(ann_path) if ann_path is not None else txt_path.with_suffix(".ann")
    stats = stats if stats is not None else ReadStats("brat")
    text = read_text(txt_path)  # \r\n stays two characters, as the offsets count them
    doc = Document(doc_id=txt_path.stem, text=text)
    stats.documents += 1
    if not ann_path.exists():
        logger.debug("%s: no annotation file, document has no annotations", ann_path)
        return doc
    content = read_text(ann_path)
    _Parser(ann_path, text, stats, strict).parse(content, doc)
    return doc


class _Parser:
    def __init__(self, path: Path, text: str, stats: ReadStats, strict: bool) -> None:
        self.path = path
        self.strict = strict
        self.text = text
        self.stats = stats
        self.entities: list[_RawEntity] = []
        self.events: list[_RawRef] = []
        self.relations: list[_RawRef] = []
        self.attributes: list[_RawRef] = []
        self.groups: list[_RawRef] = []
        self.seen_ids: dict[str, int] = {}

    def error(self, line: int, reason: str) -> AnnotationError:
        return AnnotationError(self.path, line, reason)

    def skip_or_raise(self, error: AnnotationError) -> None:
        if self.strict:
            raise error
        self.stats.malformed_skipped += 1
        logger.warning("%s; line skipped", error)

    def parse(self, content: str, doc: Document) -> None:
        last_entity: _RawEntity | None = None
        for number, raw in enumerate(content.split("\n"), start=1):
            line = raw[:-1] if raw.endswith("\r") else raw
            if not line.strip():
                continue
            if _LINE_START.match(line):
                last_entity = None
            elif last_entity is not None and last_entity.covers_newline:
                # Continuation of the previous T line's text column (a raw newline).
                last_entity.text += "\n" + line
                self.stats.continuation_lines += 1
                continue
            try:
                last_entity = self.parse_line(number, line)
            except AnnotationError as error:
                self.skip_or_raise(error)
        self.resolve(doc)

    def parse_line(self, number: int, line: str) -> _RawEntity | None:
        """Parse one line; returns the entity when it is a T line."""
        if not _LINE_START.match(line):
            raise self.error(
                number,
                "expected an annotation line: an id starting with T, E, R, A, M, N or #, "
                "or '*', followed by a tab",
            )
        kind = line[0]
        if kind == "T":
            return self.parse_entity(number, line)
        if kind == "E":
            self.parse_event(number, line)
        elif kind == "R":
            self.parse_relation(number, line)
        elif kind in "AM":
            self.parse_attribute(number, line)
        elif kind == "#":
            self.stats.notes_ignored += 1
        elif kind == "*":
            self.parse_group(number, line)
        else:
            self.stats.normalizations_skipped += 1
        return None

    def claim_id(self, number: int, ann_id: str) -> None:
        if not ann_id or any(c.isspace() for c in ann_id):
            raise self.error(number, f"invalid annotation id {quoted_id(ann_id)}")
        if ann_id in self.seen_ids:
            raise self.error(
                number, f"duplicate id {quoted_id(ann_id)} (first defined on line {self.seen_ids[ann_id]})"
            )
        self.seen_ids[ann_id] = number

    def parse_entity(self, number: int, line: str) -> _RawEntity:
        cols = line.split("\t", 2)
        if len(cols) != 3:
            raise self.error(number, "expected 'ID<TAB>TYPE START END[;START END...]<TAB>TEXT'")
        ann_id, middle, column = cols
        self.claim_id(number, ann_id)
        type_and_spans = middle.split(" ", 1)
        if len(type_and_spans) != 2 or not type_and_spans[0]:
            raise self.error(number, f"{ann_id}: expected 'TYPE START END' in the second column")
        ent_type, span_text = type_and_spans
        spans = tuple(self.parse_span(number, ann_id, frag, i)
                      for i, frag in enumerate(span_text.split(";"), start=1))
        covered = [self.text[s:e] for s, e in spans]
        entity = _RawEntity(
            number, ann_id, ent_type, spans, column, any("\n" in c or "\r" in c for c in covered)
        )
        self.entities.append(entity)
        return entity

    def parse_span(self, number: int, ann_id: str, fragment: str, index: int = 1) -> Span:
        parts = fragment.split()
        if len(parts) != 2:
            raise self.error(number, f"{ann_id}: expected 'START END' in span fragment {index}, "
                                     f"got {len(parts)} field(s)")
        try:
            start, end = int(parts[0]), int(parts[1])
        except ValueError:
            raise self.error(
                number, f"{ann_id}: expected integer offsets in span fragment {index}"
            ) from None
        if not 0 <= start < end <= len(self.text):
            raise self.error(
                number,
                f"{ann_id}: span {start}-{end} is empty or outside the text "
                f"(expected 0 <= start < end <= {len(self.text)})",
            )
        return (start, end)

    def parse_event(self, number: int, line: str) -> None:
        cols = _columns(line)
        if len(cols) != 2:
            raise self.error(number, "expected 'ID<TAB>TYPE:TRIGGER [ROLE:ID ...]'")
        ann_id, body = cols
        self.claim_id(number, ann_id)
        args = body.split()
        if not args or args[0].count(":") != 1:
            raise self.error(number, f"{ann_id}: expected 'TYPE:TRIGGER' first")
        ev_type, trigger = args[0].split(":")
        if not ev_type or not trigger:
            raise self.error(number, f"{ann_id}: expected 'TYPE:TRIGGER' first")
        # Event arguments beyond the trigger are not part of the common schema.
        self.events.append(_RawRef(number, ann_id, ev_type, [trigger]))

    def parse_relation(self, number: int, line: str) -> None:
        cols = _columns(line)
        if len(cols) != 2:
            raise self.error(number, "expected 'ID<TAB>TYPE Arg1:ID Arg2:ID'")
        ann_id, body = cols
        self.claim_id(number, ann_id)
        parts = body.split()
        if len(parts) != 3 or any(p.count(":") != 1 for p in parts[1:]):
            raise self.error(number, f"{ann_id}: expected 'TYPE Arg1:ID Arg2:ID', got "
                                     f"{len(parts)} space-separated field(s)")
        roles = dict(p.split(":") for p in parts[1:])
        if set(roles) == {"Arg1", "Arg2"}:
            args = [roles["Arg1"], roles["Arg2"]]
        else:  # other role names: keep the written order
            args = [p.split(":")[1] for p in parts[1:]]
        self.relations.append(_RawRef(number, ann_id, parts[0], args))

    def parse_attribute(self, number: int, line: str) -> None:
        cols = _columns(line)
        if len(cols) != 2:
            raise self.error(number, "expected 'ID<TAB>TYPE TARGET [VALUE]'")
        ann_id, body = cols
        self.claim_id(number, ann_id)
        parts = body.split()
        if len(parts) not in (2, 3):
            raise self.error(number, f"{ann_id}: expected 'TYPE TARGET [VALUE]', got "
                                     f"{len(parts)} space-separated field(s)")
        value = parts[2] if len(parts) == 3 else None
        self.attributes.append(_RawRef(number, ann_id, parts[0], [parts[1]], value))

    def parse_group(self, number: int, line: str) -> None:
        cols = _columns(line)
        parts = cols[1].split() if len(cols) == 2 else []
        if len(parts) < 3:
            raise self.error(number, "expected '*<TAB>TYPE ID ID [ID ...]' (two members or more)")
        # The id is ours: BRAT '*' lines have none, and ids must be unique per document.
        group_id = f"*{len(self.groups) + 1}"
        self.groups.append(_RawRef(number, group_id, parts[0], parts[1:]))

    def resolve(self, doc: Document) -> None:
        entity_ids = {e.id for e in self.entities}
        event_to_entity: dict[str, str] = {}
        for ev in self.events:
            if ev.args[0] in entity_ids:
                event_to_entity[ev.id] = ev.args[0]
            else:
                self.skip_or_raise(self.error(
                    ev.line, f"{ev.id}: trigger {quoted_id(ev.args[0])} is not a T annotation of this file"
                ))

        def entity_ref(ref: _RawRef, target: str) -> str:
            if target in entity_ids:
                return target
            if target in event_to_entity:
                return event_to_entity[target]
            raise self.error(ref.line, f"{ref.id}: references unknown id {quoted_id(target)}")

        for raw in self.entities:
            self.check_text(raw)
            doc.entities.append(Entity(raw.id, raw.type, raw.spans, raw.text))
        for ref in self.relations:
            try:
                arg1, arg2 = (entity_ref(ref, a) for a in ref.args)
            except AnnotationError as error:
                self.skip_or_raise(error)
                continue
            doc.relations.append(Relation(ref.id, ref.type, arg1, arg2))
        relation_ids = {r.id for r in doc.relations}
        for ref in self.attributes:
            target = ref.args[0]
            try:
                # Attributes may also sit on relations.
                target = target if target in relation_ids else entity_ref(ref, target)
            except AnnotationError as error:
                self.skip_or_raise(error)
                continue
            doc.attributes.append(Attribute(ref.id, ref.type, target, ref.value))
        for ref in self.groups:
            try:
                members = tuple(dict.fromkeys(entity_ref(ref, a) for a in ref.args))
            except AnnotationError as error:
                self.skip_or_raise(error)
                continue
            doc.groups.append(Group(ref.id, ref.type, members))
        self.stats.entities += len(doc.entities)
        self.stats.relations += len(doc.relations)
        self.stats.attributes += len(doc.attributes)
        self.stats.groups += len(doc.groups)

    def check_text(self, raw: _RawEntity) -> None:
        covered = " ".join(self.text[s:e] for s, e in raw.spans)
        if covered == raw.text or text_matches(covered, raw.text):
            return
        self.stats.text_mismatches += 1
        logger.warning(
            "%s:%d: text column of %s does not match the text at %s; kept as annotated",
            self.path, raw.line, raw.id, _format_spans(raw.spans),
        )
        logger.debug("%s:%d: text %r, column %r", self.path, raw.line, covered, raw.text)


def text_matches(covered: str, column: str) -> bool:
    """Whether a span's text and its annotated text agree up to whitespace.

    Writers turn newlines inside a span into spaces (or leave them raw), and DDI joins
    fragments after a hyphen without a space ('mu-' + 'selective' -> 'mu-selective'):
    neither means the offsets are wrong."""
    return "".join(covered.split()) == "".join(column.split())


def _columns(line: str) -> list[str]:
    """Tab columns with trailing empty ones dropped (some writers end lines with a tab)."""
    cols = line.split("\t")
    while len(cols) > 2 and not cols[-1].strip():
        cols.pop()
    return [cols[0]] + [c.strip() for c in cols[1:]]


def _format_spans(spans: tuple[Span, ...]) -> str:
    return ";".join(f"{s} {e}" for s, e in spans)


def _check_token(doc: Document, ann_id: str, what: str, value: str) -> None:
    if not value or any(c.isspace() for c in value):
        raise ValueError(
            f"document {doc.doc_id!r}, {ann_id}: {what} {value!r} must be non-empty and "
            "contain no whitespace to be written as BRAT"
        )


def write_brat(doc: Document, folder: Path) -> tuple[Path, Path]:
    """Write ``<doc_id>.txt`` and ``<doc_id>.ann`` into ``folder``; returns both paths."""
    if not doc.doc_id or "/" in doc.doc_id or "\\" in doc.doc_id or doc.doc_id.startswith("."):
        raise ValueError(f"document id {doc.doc_id!r} cannot be used as a file name")
    lines: list[str] = []
    for ent in doc.entities:
        _check_token(doc, ent.id, "id", ent.id)
        _check_token(doc, ent.id, "entity type", ent.type)
        for start, end in ent.spans:
            if not 0 <= start < end <= len(doc.text):
                raise ValueError(
                    f"document {doc.doc_id!r}, {ent.id}: span {start}-{end} is empty or "
                    f"outside the text (length {len(doc.text)})"
                )
        # The text column is one line: BRAT writes newlines and tabs in spans as spaces.
        column = ent.text.replace("\r", " ").replace("\n", " ").replace("\t", " ")
        lines.append(f"{ent.id}\t{ent.type} {_format_spans(ent.spans)}\t{column}")
    for rel in doc.relations:
        for what, value in (("id", rel.id), ("relation type", rel.type),
                            ("Arg1", rel.arg1), ("Arg2", rel.arg2)):
            _check_token(doc, rel.id, what, value)
        lines.append(f"{rel.id}\t{rel.type} Arg1:{rel.arg1} Arg2:{rel.arg2}")
    for att in doc.attributes:
        for what, value in (("id", att.id), ("attribute type", att.type),
                            ("target", att.target)):
            _check_token(doc, att.id, what, value)
        suffix = ""
        if att.value is not None:
            _check_token(doc, att.id, "attribute value", att.value)
            suffix = f" {att.value}"
        lines.append(f"{att.id}\t{att.type} {att.target}{suffix}")
    for group in doc.groups:
        _check_token(doc, group.id, "group type", group.type)
        if len(group.members) < 2:
            raise ValueError(
                f"document {doc.doc_id!r}, group {group.id}: BRAT needs two members or more, "
                f"got {len(group.members)}"
            )
        for member in group.members:
            _check_token(doc, group.id, "member", member)
        lines.append(f"*\t{group.type} {' '.join(group.members)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    txt_path = folder / f"{doc.doc_id}.txt"
    ann_path = folder / f"{doc.doc_id}.ann"
    with open(txt_path, "w", encoding="utf-8", newline="") as handle:
        handle.write(doc.text)
    with open(ann_path, "w", encoding="utf-8", newline="") as handle:
        handle.write("".join(line + "\n" for line in lines))
    return txt_path, ann_path


def read_brat_folder(
    folder: Path, stats: ReadStats | None = None, strict: bool = True
) -> list[Document]:
    """Read every ``*.txt`` (with its ``.ann``) in ``folder``, sorted by doc_id (the stem).

    ``strict`` as in :func:`read_brat`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"BRAT folder {folder} does not exist or is not a folder")
    stats = stats if stats is not None else ReadStats("brat")
    txt_paths = sorted(folder.glob("*.txt"), key=lambda p: p.stem)
    docs = [read_brat(path, stats=stats, strict=strict) for path in txt_paths]
    orphans = sorted({p.stem for p in folder.glob("*.ann")} - {p.stem for p in txt_paths})
    if orphans:
        logger.warning("%s: %d .ann file(s) without a .txt ignored, e.g. %s.ann",
                       folder, len(orphans), orphans[0])
    if stats.text_mismatches or stats.malformed_skipped:
        logger.info("%s: %s", folder, stats.as_dict())
    return docs
