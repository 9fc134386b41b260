"""Model output -> (type, first argument, second argument) triples, surviving whatever a
small model writes (the relation counterpart of ``parsing.parse_entities``): argument
texts (end to end) or numbers of listed entities (given entities)."""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .parsing import _MAX_DEPTH, MAX_COPIES, _repair_load, _strict_load

logger = logging.getLogger(__name__)

RelationTriple = tuple[str, str, str]
# (type, first, second): 0-based indices into the entities a prompt listed.
NumberedRelation = tuple[str, int, int]

_TYPE_KEYS = ("type", "relation", "relation_type", "label", "category")
_FIRST_KEYS = ("arg1", "first", "head", "entity", "main", "source", "subject", "from", "e1",
               "argument1", "drug", "drug1")
_SECOND_KEYS = ("arg2", "second", "tail", "modifier", "target", "object", "to", "e2",
                "argument2", "value", "drug2")
_PAIR_KEYS = ("args", "arguments", "pair")
_TEXT_KEYS = ("text", "entity", "mention", "span", "value", "name")
_SEPARATORS = re.compile(r"[\s_\-]+")
_NUMBER = re.compile(r"#?(\d{1,6})(?:\.0*)?")  # 2, "2", "#2", 2.0
_TRAILING_NUMBER = re.compile(r"\d+\s*$")


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


def parse_relations(output: str, allowed_types: Sequence[str]) -> ParsedRelations:
    """Parse a model answer into (type, arg1, arg2) triples of the allowed types.

    Besides the asked format it reads: a bare pair instead of a list of pairs, a flat list
    of strings taken two by two, records ({"type", "arg1", "arg2"}, {"entity",
    "modifier"}, {"head", "tail"}, ...) in a list or under a type, a {first: second}
    mapping under a type, [type, first, second] triples, wrappers such as
    {"relations": [...]}, code fences, prose around the JSON and truncation (an
    incomplete pair is dropped). Never raises."""
    try:
        return _parse(output if isinstance(output, str) else "", allowed_types)
    except Exception:  # a parser bug must not end an evaluation
        logger.warning("unparseable relation output treated as empty", exc_info=True)
        return ParsedRelations(malformed=True)


def _parse(output: str, allowed_types: Sequence[str]) -> ParsedRelations:
    canonical: dict[str, str] = {}
    for t in allowed_types:
        canonical.setdefault(_normal(t), t)
    clean = _strict_load(output)
    data = clean if clean is not None else _repair_load(output)
    collector = _Collector(canonical)
    collector.walk(data, depth=0)
    malformed = clean is None or not _is_clean_shape(clean) or collector.reinterpreted
    return ParsedRelations(
        relations=_cap_repeats(collector.relations),
        malformed=malformed,
        unknown_types=collector.unknown,
    )


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
        return _parse_numbered(output if isinstance(output, str) else "", allowed_types, listed)
    except Exception:  # a parser bug must not end an evaluation
        logger.warning("unparseable relation output treated as empty", exc_info=True)
        return ParsedNumberedRelations(malformed=True)


def _parse_numbered(output: str, allowed_types: Sequence[str], listed: Sequence[str]) -> ParsedNumberedRelations:
    canonical: dict[str, str] = {}
    for t in allowed_types:
        canonical.setdefault(_normal(t), t)
    clean = _strict_load(output)
    # A trailing digit of truncated output may be a number cut short ("[3, 1" of "[3, 12]").
    data = clean if clean is not None else _repair_load(_TRAILING_NUMBER.sub("", output))
    collector = _Collector(canonical)
    collector.walk(data, depth=0)
    by_text: dict[str, int] = {}
    for i, text in enumerate(listed):
        by_text.setdefault(text.strip().lower(), i)
    result = ParsedNumberedRelations(unknown_types=collector.unknown)
    texts_used = False
    for typ, first, second in _cap_repeats(collector.relations):
        a, b = _entity_index(first, len(listed), by_text), _entity_index(second, len(listed), by_text)
        if a is None or b is None:
            result.unresolved[typ] = result.unresolved.get(typ, 0) + 1
            continue
        texts_used = texts_used or a[1] or b[1]
        result.relations.append((typ, a[0], b[0]))
    result.malformed = (clean is None or not _is_clean_shape(clean, _is_number)
                        or collector.reinterpreted or texts_used)
    return result


def _entity_index(argument: str, count: int, by_text: dict[str, int]) -> tuple[int, bool] | None:
    """(0-based index, whether given by text) of a listed entity, or None."""
    number = _NUMBER.fullmatch(argument)
    if number is not None:
        n = int(number.group(1))
        return (n - 1, False) if 1 <= n <= count else None
    index = by_text.get(argument.strip().lower())
    return None if index is None else (index, True)


def _is_number(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _normal(name: str) -> str:
    """Type names compare ignoring case and separators ("Reference range" = reference_range)."""
    return _SEPARATORS.sub("_", name.strip().lower())


def _is_clean_shape(data: Any, is_argument=lambda a: isinstance(a, str)) -> bool:
    return isinstance(data, dict) and all(
        isinstance(pairs, list) and all(
            isinstance(p, list) and len(p) == 2 and all(is_argument(a) for a in p)
            for p in pairs
        )
        for pairs in data.values()
    )


class _Collector:
    """Walks parsed JSON of any shape and collects typed argument pairs."""

    def __init__(self, canonical: dict[str, str]) -> None:
        self.canonical = canonical
        self.relations: list[RelationTriple] = []
        self.unknown = 0
        self.reinterpreted = False

    def walk(self, data: Any, depth: int) -> None:
        if depth > _MAX_DEPTH:
            return
        if isinstance(data, list):  # several objects, records or triples
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
        """A [type, first, second] list."""
        if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)):
            return False
        canon = self.canonical.get(_normal(item[0]))
        pair = _pair(item[1:])
        if canon is None or pair is None:
            return False
        self.reinterpreted = True
        self._add(canon, [pair])
        return True

    def _record(self, data: dict) -> bool:
        """A {"type": ..., "arg1": ..., "arg2": ...} record (or its synonyms), or a
        {"type": ..., <any key>: [pairs]} group."""
        type_key = next((k for k in _TYPE_KEYS if isinstance(data.get(k), str)), None)
        if type_key is None:
            return False
        rest = {k: v for k, v in data.items() if k != type_key}
        pair = _pair(rest)
        if pair is not None:
            pairs = [pair]
        elif len(rest) == 1 and isinstance(next(iter(rest.values())), list):
            pairs = _pairs(next(iter(rest.values())))
        else:
            return False
        self.reinterpreted = True
        canon = self.canonical.get(_normal(data[type_key]))
        if canon is None:
            self.unknown += len(pairs)
        else:
            self._add(canon, pairs)
        return True

    def _typed(self, key: str, value: Any, depth: int) -> None:
        canon = self.canonical.get(_normal(key))
        if canon is not None:
            self._add(canon, _pairs(value))
        elif self._is_wrapper(value):  # such as {"relations": [...]}
            self.reinterpreted = True
            self.walk(value, depth + 1)
        else:
            self.unknown += len(_pairs(value))

    def _is_wrapper(self, value: Any) -> bool:
        """Whether a value under an unknown key holds typed relations further down."""
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, dict) and (
                any(isinstance(item.get(k), str) for k in _TYPE_KEYS)
                or any(_normal(str(k)) in self.canonical for k in item)
            ):
                return True
            if isinstance(item, list) and item and isinstance(item[0], str) \
                    and _normal(item[0]) in self.canonical:
                return True
        return False

    def _add(self, canon: str, pairs: list[tuple[str, str]]) -> None:
        for first, second in pairs:
            self.relations.append((canon, first, second))


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


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, (int, float)) and not isinstance(value, bool))


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


def _cap_repeats(relations: list[RelationTriple]) -> list[RelationTriple]:
    counts: Counter[RelationTriple] = Counter()
    kept = []
    for triple in relations:
        counts[triple] += 1
        if counts[triple] <= MAX_COPIES:
            kept.append(triple)
    if len(kept) < len(relations):
        logger.debug("dropped %d repeated relations", len(relations) - len(kept))
    return kept
