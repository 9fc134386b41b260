"""Model output -> typed items, surviving whatever a small model writes.

One parser for both tasks, parametrised by arity: an entity answer holds mentions, one
argument each (``{"drug": ["aspirin"]}``); a relation answer holds pairs of arguments
(``{"dosage": [["aspirin", "81 mg"]]}``), texts end to end or numbers of listed entities
given entities. Loading, repair of truncated or wrapped JSON, type-name matching, the
walk over unexpected shapes, the cap on repeats and the ``malformed`` verdict are shared;
only what one item looks like differs (`_MentionReader`, `_PairReader`).
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import json_repair

logger = logging.getLogger(__name__)

# A looping model repeats one mention hundreds of times; more copies than this are noise
# (alignment later drops copies that do not occur in the sentence).
MAX_COPIES = 20
_MAX_DEPTH = 4
_TEXT_KEYS = ("text", "entity", "mention", "span", "value", "name")
_SEPARATORS = re.compile(r"[\s_\-]+")
_NUMBER = re.compile(r"#?(\d{1,6})(?:\.0*)?")  # 2, "2", "#2", 2.0
_TRAILING_NUMBER = re.compile(r"\d+\s*$")

RelationTriple = tuple[str, str, str]
# (type, first, second): 0-based indices into the entities a prompt listed.
NumberedRelation = tuple[str, int, int]


@dataclass
class ParsedOutput:
    """Entities in output order; ``malformed`` when the output was not a clean JSON object
    of lists of strings (it needed repair or reinterpretation); ``unknown_types`` counts
    mentions dropped because their type was not asked for."""

    entities: list[tuple[str, str]] = field(default_factory=list)
    malformed: bool = False
    unknown_types: int = 0


@dataclass
class ParsedRelations:
    """Relations in output order; ``malformed`` when the output was not a clean JSON
    object of lists of [string, string] pairs (it needed repair or reinterpretation);
    ``unknown_types`` counts pairs dropped because their type was not asked for."""

    relations: list[RelationTriple] = field(default_factory=list)
    malformed: bool = False
    unknown_types: int = 0


@dataclass
class ParsedNumberedRelations:
    """Relations as 0-based entity indices, in output order; ``malformed`` when the output
    was not a clean JSON object of lists of [number, number] pairs (as for
    ``ParsedRelations``, and also when an argument was given by its text);
    ``unknown_types`` as there; ``unresolved`` counts, per type, the pairs dropped because
    an argument named no listed entity (a number out of range, or an unlisted text)."""

    relations: list[NumberedRelation] = field(default_factory=list)
    malformed: bool = False
    unknown_types: int = 0
    unresolved: dict[str, int] = field(default_factory=dict)


def parse_entities(output: str, allowed_types: Sequence[str]) -> ParsedOutput:
    """Parse a model answer into (type, text) pairs of the allowed types. Never raises."""
    try:
        items, malformed, unknown, _ = _parse(_as_text(output), allowed_types, _MentionReader())
        return ParsedOutput(entities=items, malformed=malformed, unknown_types=unknown)
    except Exception:  # a parser bug must not end an evaluation
        logger.warning("unparseable model output treated as empty", exc_info=True)
        return ParsedOutput(malformed=True)


def parse_relations(output: str, allowed_types: Sequence[str]) -> ParsedRelations:
    """Parse a model answer into (type, arg1, arg2) triples of the allowed types.

    Besides the asked format it reads: a bare pair instead of a list of pairs, a flat list
    of strings taken two by two, records ({"type", "arg1", "arg2"}, {"entity",
    "modifier"}, {"head", "tail"}, ...) in a list or under a type, a {first: second}
    mapping under a type, [type, first, second] triples, wrappers such as
    {"relations": [...]}, code fences, prose around the JSON and truncation (an
    incomplete pair is dropped). Never raises."""
    try:
        items, malformed, unknown, _ = _parse(_as_text(output), allowed_types, _PairReader())
        return ParsedRelations(relations=items, malformed=malformed, unknown_types=unknown)
    except Exception:  # a parser bug must not end an evaluation
        logger.warning("unparseable relation output treated as empty", exc_info=True)
        return ParsedRelations(malformed=True)


def parse_numbered_relations(
    output: str, allowed_types: Sequence[str], listed: Sequence[str]
) -> ParsedNumberedRelations:
    """Parse a given-entities answer, ``{"type": [[1, 2], ...]}`` with 1-based numbers of
    the ``listed`` entity texts, into (type, index, index) triples of the allowed types.

    Reads every shape ``parse_relations`` reads, numbers written as strings ("2", "#2"),
    and an argument copied as the text of a listed entity instead of its number (the
    first listed with that text, ignoring case). A number cut by truncation is dropped
    with its pair. Never raises."""
    try:
        return _parse_numbered(_as_text(output), allowed_types, listed)
    except Exception:  # a parser bug must not end an evaluation
        logger.warning("unparseable relation output treated as empty", exc_info=True)
        return ParsedNumberedRelations(malformed=True)


# --- shared -------------------------------------------------------------------------------


def _as_text(output: Any) -> str:
    return output if isinstance(output, str) else ""


def _normal(name: str) -> str:
    """Type names compare ignoring case and separators ("Reference range" = reference_range)."""
    return _SEPARATORS.sub("_", name.strip().lower())


def _parse(output: str, allowed_types: Sequence[str], reader: _Reader, repair_text: str | None = None):
    """(items capped, malformed, unknown-type count, the cleanly loaded JSON or None)."""
    canonical: dict[str, str] = {}
    for t in allowed_types:
        canonical.setdefault(_normal(t), t)
    clean = _strict_load(output)
    data = clean if clean is not None else _repair_load(output if repair_text is None else repair_text)
    collector = _Collector(canonical, reader)
    collector.walk(data, depth=0)
    malformed = clean is None or not reader.is_clean(clean) or collector.reinterpreted
    return _cap_repeats(collector.items), malformed, collector.unknown, clean


def _strict_load(output: str) -> Any | None:
    try:
        return json.loads(output.strip())
    except (ValueError, RecursionError):
        return None


def _repair_load(output: str) -> Any:
    text = _cut_unterminated_string(output)
    if not text.strip():
        return None
    return json_repair.loads(text)


def _cut_unterminated_string(text: str) -> str:
    """Drop a string left open by truncated output, so its partial text ("fev" of "fever")
    is not kept as an entity. Scanning starts at the first bracket: prose before it may
    hold apostrophes."""
    starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
    if not starts:
        return text
    quote: str | None = None
    opened = -1
    escaped = False
    for i in range(min(starts), len(text)):
        ch = text[i]
        if quote is None:
            if ch in "\"'":
                quote, opened = ch, i
        elif escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == quote:
            quote = None
    return text[:opened] if quote is not None else text


class _Collector:
    """Walks parsed JSON of any shape and collects typed items; `reader` says what one item
    of the task looks like."""

    def __init__(self, canonical: dict[str, str], reader: _Reader) -> None:
        self.canonical = canonical
        self.reader = reader
        self.items: list[tuple] = []
        self.unknown = 0
        self.reinterpreted = False

    def walk(self, data: Any, depth: int) -> None:
        if depth > _MAX_DEPTH:
            return
        if isinstance(data, list):  # several objects, records or (relations) triples
            for item in data:
                if self._triple(item):
                    continue
                if isinstance(item, (dict, list)):
                    self.walk(item, depth + 1)
        elif isinstance(data, dict):
            if self._record(data):
                return
            for key, value in data.items():
                self._typed(str(key), value, depth)

    def _triple(self, item: Any) -> bool:
        """A [type, *arguments] list (relations only: a mention list is never one)."""
        found = self.reader.triple(item, self.canonical)
        if found is None:
            return False
        self.reinterpreted = True
        self._add(*found)
        return True

    def _record(self, data: dict) -> bool:
        """A {"type": ..., <arguments>} record, or a {"type": ..., <key>: [items]} group."""
        found = self.reader.record(data)
        if found is None:
            return False
        self.reinterpreted = True
        type_name, arguments = found
        canon = self.canonical.get(_normal(type_name))
        if canon is None:
            self.unknown += len(arguments)
        else:
            self._add(canon, arguments)
        return True

    def _typed(self, key: str, value: Any, depth: int) -> None:
        canon = self.canonical.get(_normal(key))
        if canon is not None:
            self._add(canon, self.reader.values(value))
        elif self.reader.is_wrapper(value, self.canonical):  # such as {"entities": [...]}
            self.reinterpreted = True
            self.walk(value, depth + 1)
        else:
            self.unknown += len(self.reader.values(value))

    def _add(self, canon: str, arguments: list[tuple]) -> None:
        self.items.extend((canon, *args) for args in arguments)


def _cap_repeats(items: list[tuple]) -> list[tuple]:
    counts: Counter[tuple] = Counter()
    kept = []
    for item in items:
        counts[item] += 1
        if counts[item] <= MAX_COPIES:
            kept.append(item)
    if len(kept) < len(items):
        logger.debug("dropped %d repeated items", len(items) - len(kept))
    return kept


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, (int, float)) and not isinstance(value, bool))


class _Reader:
    """What one item of a task looks like in a model's answer."""

    def values(self, value: Any) -> list[tuple]:
        """The items (argument tuples) under one type."""
        raise NotImplementedError

    def record(self, data: dict) -> tuple[str, list[tuple]] | None:
        """(type name, items) of a typed record, or None."""
        raise NotImplementedError

    def triple(self, item: Any, canonical: dict[str, str]) -> tuple[str, list[tuple]] | None:
        return None

    def is_wrapper(self, value: Any, canonical: dict[str, str]) -> bool:
        """Whether a value under an unknown key holds typed items further down."""
        raise NotImplementedError

    def is_clean(self, data: Any) -> bool:
        """Whether cleanly loaded JSON has exactly the asked shape."""
        raise NotImplementedError


# --- arity 1: entity mentions ---------------------------------------------------------------

_ENTITY_TYPE_KEYS = ("type", "label", "entity_type", "category")


class _MentionReader(_Reader):
    def values(self, value: Any) -> list[tuple]:
        return [(t,) for t in _texts(value)]

    def record(self, data: dict) -> tuple[str, list[tuple]] | None:
        type_key = next((k for k in _ENTITY_TYPE_KEYS if isinstance(data.get(k), str)), None)
        text_key = next((k for k in _TEXT_KEYS if k in data), None)
        if type_key is None or text_key is None:
            return None
        return data[type_key], self.values(data[text_key])

    def is_wrapper(self, value: Any, canonical: dict[str, str]) -> bool:
        return isinstance(value, dict) or (
            isinstance(value, list) and any(isinstance(x, (dict, list)) for x in value))

    def is_clean(self, data: Any) -> bool:
        return isinstance(data, dict) and all(
            isinstance(v, list) and all(isinstance(x, str) for x in v) for v in data.values())


def _texts(value: Any) -> list[str]:
    """Mention strings in a value: a string, a number, a record, or a list of those."""
    items = value if isinstance(value, list) else [value]
    texts = []
    for item in items:
        if isinstance(item, dict):
            item = next((item[k] for k in _TEXT_KEYS if isinstance(item.get(k), str)), None)
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            item = str(item)
        if isinstance(item, str) and item.strip():
            texts.append(item.strip())
    return texts


# --- arity 2: relation argument pairs ---------------------------------------------------------

_RELATION_TYPE_KEYS = ("type", "relation", "relation_type", "label", "category")
_FIRST_KEYS = ("arg1", "first", "head", "entity", "main", "source", "subject", "from", "e1",
               "argument1", "drug", "drug1")
_SECOND_KEYS = ("arg2", "second", "tail", "modifier", "target", "object", "to", "e2",
                "argument2", "value", "drug2")
_PAIR_KEYS = ("args", "arguments", "pair")


class _PairReader(_Reader):
    def __init__(self, is_argument=lambda a: isinstance(a, str)) -> None:
        self.is_argument = is_argument  # what a clean answer's arguments are

    def values(self, value: Any) -> list[tuple]:
        return _pairs(value)

    def record(self, data: dict) -> tuple[str, list[tuple]] | None:
        type_key = next((k for k in _RELATION_TYPE_KEYS if isinstance(data.get(k), str)), None)
        if type_key is None:
            return None
        rest = {k: v for k, v in data.items() if k != type_key}
        pair = _pair(rest)
        if pair is not None:
            return data[type_key], [pair]
        if len(rest) == 1 and isinstance(next(iter(rest.values())), list):
            return data[type_key], _pairs(next(iter(rest.values())))
        return None

    def triple(self, item: Any, canonical: dict[str, str]) -> tuple[str, list[tuple]] | None:
        if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)):
            return None
        canon = canonical.get(_normal(item[0]))
        pair = _pair(item[1:])
        if canon is None or pair is None:
            return None
        return canon, [pair]

    def is_wrapper(self, value: Any, canonical: dict[str, str]) -> bool:
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, dict) and (
                any(isinstance(item.get(k), str) for k in _RELATION_TYPE_KEYS)
                or any(_normal(str(k)) in canonical for k in item)
            ):
                return True
            if isinstance(item, list) and item and isinstance(item[0], str) and _normal(item[0]) in canonical:
                return True
        return False

    def is_clean(self, data: Any) -> bool:
        return isinstance(data, dict) and all(
            isinstance(pairs, list) and all(
                isinstance(p, list) and len(p) == 2 and all(self.is_argument(a) for a in p)
                for p in pairs
            )
            for pairs in data.values()
        )


def _pairs(value: Any) -> list[tuple[str, str]]:
    """Argument pairs under one type."""
    if isinstance(value, dict):
        pair = _pair(value)
        if pair is not None:
            return [pair]
        # {"aspirin": "81 mg"} or {"aspirin": ["81 mg", "325 mg"]}
        seconds = {k: (v if isinstance(v, list) else [v]) for k, v in value.items()}
        return [(str(k).strip(), s) for k, vs in seconds.items() if str(k).strip()
                for s in (_text(v) for v in vs) if s]
    if not isinstance(value, list):
        return []
    if value and all(_is_scalar(x) for x in value):
        # A bare pair, or a flat list read two by two (an odd last string is dropped).
        texts = [_text(x) for x in value]
        return [(a, b) for a, b in zip(texts[::2], texts[1::2]) if a and b]
    # A pair cut short by truncation, or anything else, is no relation.
    return [pair for pair in map(_pair, value) if pair is not None]


def _pair(item: Any) -> tuple[str, str] | None:
    """(first, second) from a list or a record; None when there are not two arguments."""
    if isinstance(item, list):
        texts = [_text(x) for x in item]
        if len(texts) >= 2 and texts[0] and texts[1]:
            return texts[0], texts[1]
        return None
    if not isinstance(item, dict):
        return None
    first = next((_text(item[k]) for k in _FIRST_KEYS if k in item), None)
    second = next((_text(item[k]) for k in _SECOND_KEYS if k in item), None)
    if first and second:
        return first, second
    listed = next((item[k] for k in _PAIR_KEYS if isinstance(item.get(k), list)), None)
    if listed is not None:
        return _pair(listed)
    values = [_text(v) for v in item.values()]
    if len(values) == 2 and values[0] and values[1]:  # {"drug": "aspirin", "dosage": "81 mg"}
        return values[0], values[1]
    return None


def _text(value: Any) -> str | None:
    """An argument string from a string, a number, a one-string list or a text record."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, dict):
        value = next((value[k] for k in _TEXT_KEYS if isinstance(value.get(k), str)), None)
    if _is_scalar(value):
        value = str(value).strip()
        return value or None
    return None


def _parse_numbered(output: str, allowed_types: Sequence[str], listed: Sequence[str]) -> ParsedNumberedRelations:
    # A trailing digit of truncated output may be a number cut short ("[3, 1" of "[3, 12]").
    reader = _PairReader(is_argument=lambda a: isinstance(a, int) and not isinstance(a, bool))
    triples, malformed, unknown, _ = _parse(output, allowed_types, reader,
                                            repair_text=_TRAILING_NUMBER.sub("", output))
    by_text: dict[str, int] = {}
    for i, text in enumerate(listed):
        by_text.setdefault(text.strip().lower(), i)
    result = ParsedNumberedRelations(unknown_types=unknown)
    texts_used = False
    for typ, first, second in triples:
        a, b = _entity_index(first, len(listed), by_text), _entity_index(second, len(listed), by_text)
        if a is None or b is None:
            result.unresolved[typ] = result.unresolved.get(typ, 0) + 1
            continue
        texts_used = texts_used or a[1] or b[1]
        result.relations.append((typ, a[0], b[0]))
    result.malformed = malformed or texts_used
    return result


def _entity_index(argument: str, count: int, by_text: dict[str, int]) -> tuple[int, bool] | None:
    """(0-based index, whether given by text) of a listed entity, or None."""
    number = _NUMBER.fullmatch(argument)
    if number is not None:
        n = int(number.group(1))
        return (n - 1, False) if 1 <= n <= count else None
    index = by_text.get(argument.strip().lower())
    return None if index is None else (index, True)
