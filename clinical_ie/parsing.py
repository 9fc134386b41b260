"""Model output -> (type, text) pairs, surviving whatever a small model writes."""

from __future__ import annotations

import json
import logging
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
_TYPE_KEYS = ("type", "label", "entity_type", "category")
_TEXT_KEYS = ("text", "entity", "mention", "span", "value", "name")


@dataclass
class ParsedOutput:
    """Entities in output order; ``malformed`` when the output was not a clean JSON object
    of lists of strings (it needed repair or reinterpretation); ``unknown_types`` counts
    mentions dropped because their type was not asked for."""

    entities: list[tuple[str, str]] = field(default_factory=list)
    malformed: bool = False
    unknown_types: int = 0


def parse_entities(output: str, allowed_types: Sequence[str]) -> ParsedOutput:
    """Parse a model answer into (type, text) pairs of the allowed types. Never raises."""
    try:
        return _parse(output if isinstance(output, str) else "", allowed_types)
    except Exception:  # a parser bug must not end an evaluation
        logger.warning("unparseable model output treated as empty", exc_info=True)
        return ParsedOutput(malformed=True)


def _parse(output: str, allowed_types: Sequence[str]) -> ParsedOutput:
    canonical = {t.strip().lower(): t for t in allowed_types}
    clean = _strict_load(output)
    data = clean if clean is not None else _repair_load(output)
    collector = _Collector(canonical)
    collector.walk(data, depth=0)
    malformed = clean is None or not _is_clean_shape(clean) or collector.reinterpreted
    return ParsedOutput(
        entities=_cap_repeats(collector.entities),
        malformed=malformed,
        unknown_types=collector.unknown,
    )


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


def _is_clean_shape(data: Any) -> bool:
    return isinstance(data, dict) and all(
        isinstance(v, list) and all(isinstance(x, str) for x in v) for v in data.values()
    )


class _Collector:
    """Walks parsed JSON of any shape and collects typed mentions."""

    def __init__(self, canonical: dict[str, str]) -> None:
        self.canonical = canonical
        self.entities: list[tuple[str, str]] = []
        self.unknown = 0
        self.reinterpreted = False

    def walk(self, data: Any, depth: int) -> None:
        if depth > _MAX_DEPTH:
            return
        if isinstance(data, list):  # several objects, or a list of entity records
            for item in data:
                if isinstance(item, (dict, list)):
                    self.walk(item, depth + 1)
        elif isinstance(data, dict):
            if self._record(data):
                return
            for key, value in data.items():
                self._typed(str(key), value, depth)

    def _record(self, data: dict) -> bool:
        """A {"type": ..., "text": ...} record."""
        type_key = next((k for k in _TYPE_KEYS if isinstance(data.get(k), str)), None)
        text_key = next((k for k in _TEXT_KEYS if k in data), None)
        if type_key is None or text_key is None:
            return False
        self.reinterpreted = True
        self._add(data[type_key], _texts(data[text_key]))
        return True

    def _typed(self, key: str, value: Any, depth: int) -> None:
        if key.strip().lower() in self.canonical:
            self._add(key, _texts(value))
        elif isinstance(value, dict) or (
            isinstance(value, list) and any(isinstance(x, (dict, list)) for x in value)
        ):  # a wrapper such as {"entities": [...]}
            self.reinterpreted = True
            self.walk(value, depth + 1)
        else:
            self.unknown += len(_texts(value))

    def _add(self, type_name: str, texts: list[str]) -> None:
        canon = self.canonical.get(type_name.strip().lower())
        if canon is None:
            self.unknown += len(texts)
            return
        self.entities.extend((canon, t) for t in texts)


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


def _cap_repeats(entities: list[tuple[str, str]]) -> list[tuple[str, str]]:
    counts: Counter[tuple[str, str]] = Counter()
    kept = []
    for pair in entities:
        counts[pair] += 1
        if counts[pair] <= MAX_COPIES:
            kept.append(pair)
    if len(kept) < len(entities):
        logger.debug("dropped %d repeated mentions", len(entities) - len(kept))
    return kept
