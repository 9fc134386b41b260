"""Label-mapping presets: a corpus's own entity and relation types -> the common schema.

A preset is a TOML file (built-ins live in ``data_loaders/presets/``; users may pass a
path to their own)::

    name = "maccrobat"                 # optional, defaults to the file name
    description = "..."                # optional
    format = "brat"                    # brat | i2b2 | ade | jsonl
    strict = true                      # optional, BRAT only: false skips bad lines
    score_by = "relations-and-entity-recall"   # optional: only entities in relations
    entity_types = ["problem", "drug"]         # what the corpus annotates after mapping
    relation_types = ["causes", "dosage"]
    reverse_relations = ["ADE-Drug"]  # optional: swap arg1/arg2 of these source types

    [entity_map]                       # source type -> common type; others are dropped
    Sign_symptom = "problem"

    [relation_map]                     # source type -> relation type, or "@modifier"
    CAUSE = "causes"
    MODIFY = "@modifier"

    [source_splits]                    # optional: folder name -> official split
    Train = "train"

``"@modifier"`` types a relation by the common type of whichever argument is a modifier
and puts the main entity first (arg1) and the modifier second (arg2); a relation whose
arguments are not one main entity and one modifier is dropped. What is dropped is
counted in ``MappingStats`` by reason.
"""

from __future__ import annotations

import logging
import tomllib
from collections import Counter
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from data_loaders.document import Attribute, Document, Entity, Group, Relation
from data_loaders.splits import SPLITS

from .schema import ENTITY_TYPES, MAIN_ENTITY_TYPES, MODIFIER_TYPES

logger = logging.getLogger(__name__)

MODIFIER = "@modifier"
FORMATS: tuple[str, ...] = ("brat", "i2b2", "ade", "jsonl")
SCORE_BY: tuple[str, ...] = ("relations-and-entity-recall",)
PRESET_KEYS: tuple[str, ...] = (
    "name", "description", "format", "strict", "score_by", "entity_types", "relation_types",
    "reverse_relations", "entity_map", "relation_map", "source_splits",
)

# Reasons under which MappingStats.dropped counts what a mapping removed.
ENTITY_TYPE_UNMAPPED = "entity_type_unmapped"
RELATION_TYPE_UNMAPPED = "relation_type_unmapped"
RELATION_ARGUMENT_DROPPED = "relation_argument_dropped"
RELATION_NOT_MAIN_MODIFIER = "relation_not_main_modifier_pair"
RELATION_TYPE_NOT_DECLARED = "relation_type_not_declared"
ATTRIBUTE_TARGET_DROPPED = "attribute_target_dropped"
GROUP_MEMBER_DROPPED = "group_member_dropped"


@dataclass
class Preset:
    """One corpus's mapping into the common schema, and how to read it."""

    name: str
    format: str
    entity_map: dict[str, str]
    relation_map: dict[str, str]
    entity_types: tuple[str, ...]
    relation_types: tuple[str, ...]
    score_by: str | None = None
    strict: bool = True
    reverse_relations: tuple[str, ...] = ()
    source_splits: dict[str, str] = field(default_factory=dict)
    description: str = ""
    path: Path | None = None


@dataclass
class MappingStats:
    """What ``apply_preset`` kept and dropped; pass one to accumulate over documents."""

    documents: int = 0
    entities: int = 0
    relations: int = 0
    attributes: int = 0
    groups: int = 0
    dropped: Counter[str] = field(default_factory=Counter)  # reason -> count
    dropped_entity_types: Counter[str] = field(default_factory=Counter)  # source types
    dropped_relation_types: Counter[str] = field(default_factory=Counter)  # source types

    def as_dict(self) -> dict[str, Any]:
        return {
            "documents": self.documents, "entities": self.entities,
            "relations": self.relations, "attributes": self.attributes,
            "groups": self.groups, "dropped": dict(sorted(self.dropped.items())),
            "dropped_entity_types": dict(sorted(self.dropped_entity_types.items())),
            "dropped_relation_types": dict(sorted(self.dropped_relation_types.items())),
        }


def _presets_dir() -> Path:
    return Path(str(resources.files("data_loaders") / "presets"))


def available_presets() -> list[str]:
    """Names of the built-in presets, sorted."""
    return sorted(p.stem for p in _presets_dir().glob("*.toml"))


def _looks_like_path(name_or_path: str | Path) -> bool:
    text = str(name_or_path)
    return isinstance(name_or_path, Path) or text.endswith(".toml") or "/" in text or "\\" in text


def load_preset(name_or_path: str | Path) -> Preset:
    """A built-in preset by name, or a user's preset from a ``.toml`` path."""
    if _looks_like_path(name_or_path):
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"preset file {path} not found; expected a TOML file")
    else:
        path = _presets_dir() / f"{name_or_path}.toml"
        if not path.is_file():
            raise ValueError(
                f"unknown preset {str(name_or_path)!r}; built-in presets are "
                f"{available_presets()}, or pass the path of a .toml file"
            )
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{path}: invalid TOML: {error}") from None
    return _PresetParser(path, data).parse()


class _PresetParser:
    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path = path
        self.data = data

    def error(self, key: str, expected: str) -> ValueError:
        return ValueError(f"{self.path}: key {key!r}: {expected}")

    def string(self, key: str, default: str | None = None) -> str | None:
        value = self.data.get(key, default)
        if value is not None and (not isinstance(value, str) or not value):
            raise self.error(key, "expected a non-empty string")
        return value

    def names(self, key: str, required: bool) -> tuple[str, ...]:
        if key not in self.data:
            if required:
                raise self.error(key, "missing; expected a list of type names")
            return ()
        value = self.data[key]
        if not isinstance(value, list) or not all(_is_name(v) for v in value):
            raise self.error(key, "expected a list of non-empty names without whitespace")
        duplicates = sorted({v for v in value if value.count(v) > 1})
        if duplicates:
            raise self.error(key, f"lists {duplicates} more than once")
        return tuple(value)

    def table(self, key: str, required: bool) -> dict[str, str]:
        value = self.data.get(key, {})
        if key not in self.data and required:
            raise self.error(key, "missing; expected a table of source type = target")
        if not isinstance(value, dict):
            raise self.error(key, "expected a table of source type = target")
        for source, target in value.items():
            if not _is_name(target):
                raise self.error(f"{key}.{source}", "expected a non-empty name without "
                                 "whitespace")
        return dict(value)

    def parse(self) -> Preset:
        unknown = sorted(set(self.data) - set(PRESET_KEYS))
        if unknown:
            raise self.error(unknown[0], f"unknown key; expected keys among {list(PRESET_KEYS)}")
        name = self.string("name", self.path.stem)
        fmt = self.string("format")
        if fmt not in FORMATS:
            raise self.error("format", f"expected one of {list(FORMATS)}, got {fmt!r}")
        score_by = self.string("score_by")
        if score_by is not None and score_by not in SCORE_BY:
            raise self.error("score_by", f"expected one of {list(SCORE_BY)}, got {score_by!r}")
        strict = self.data.get("strict", True)
        if not isinstance(strict, bool):
            raise self.error("strict", "expected true or false")
        description = self.data.get("description", "")
        if not isinstance(description, str):
            raise self.error("description", "expected a string")
        entity_types = self.names("entity_types", required=True)
        relation_types = self.names("relation_types", required=True)
        entity_map = self.table("entity_map", required=True)
        relation_map = self.table("relation_map", required=False)
        reverse = self.names("reverse_relations", required=False)
        source_splits = self.table("source_splits", required=False)
        self.check_entities(entity_types, entity_map)
        self.check_relations(entity_types, relation_types, relation_map, reverse)
        for folder, split in source_splits.items():
            if split not in SPLITS:
                raise self.error(f"source_splits.{folder}", f"expected one of {list(SPLITS)}")
        return Preset(name, fmt, entity_map, relation_map, entity_types, relation_types,
                      score_by, strict, reverse, source_splits, description, self.path)

    def check_entities(self, entity_types: tuple[str, ...], entity_map: dict[str, str]) -> None:
        if not entity_types:
            raise self.error("entity_types", "is empty; expected at least one type")
        for t in entity_types:
            if t not in ENTITY_TYPES:
                raise self.error("entity_types", f"{t!r} is not a type of the common schema "
                                 f"{list(ENTITY_TYPES)}")
        for source, target in entity_map.items():
            if target not in entity_types:
                raise self.error(f"entity_map.{source}", f"maps to {target!r}, which "
                                 f"'entity_types' {list(entity_types)} does not list")
        unproduced = [t for t in entity_types if t not in entity_map.values()]
        if unproduced:
            raise self.error("entity_types", f"lists {unproduced}, which no entry of "
                             "'entity_map' produces")

    def check_relations(self, entity_types: tuple[str, ...], relation_types: tuple[str, ...],
                        relation_map: dict[str, str], reverse: tuple[str, ...]) -> None:
        modifiers = [t for t in entity_types if t in MODIFIER_TYPES]
        uses_modifier = MODIFIER in relation_map.values()
        for source, target in relation_map.items():
            if target != MODIFIER and target not in relation_types:
                raise self.error(f"relation_map.{source}", f"maps to {target!r}, which "
                                 f"'relation_types' {list(relation_types)} does not list")
            if target == MODIFIER and not modifiers:
                raise self.error(f"relation_map.{source}", f"is {MODIFIER!r} but "
                                 "'entity_types' lists no modifier type")
        for t in relation_types:
            fixed = t in relation_map.values()
            if not fixed and not (uses_modifier and t in modifiers):
                raise self.error("relation_types", f"lists {t!r}, which no entry of "
                                 f"'relation_map' produces (a fixed type, or {MODIFIER!r} "
                                 "with a modifier type in 'entity_types')")
        for source in reverse:
            if source not in relation_map:
                raise self.error("reverse_relations", f"lists {source!r}, which "
                                 "'relation_map' does not map")
            if relation_map[source] == MODIFIER:
                raise self.error("reverse_relations", f"lists {source!r}, which maps to "
                                 f"{MODIFIER!r} (already ordered main, modifier)")


def _is_name(value: object) -> bool:
    return isinstance(value, str) and bool(value) and not any(c.isspace() for c in value)


def narrow_preset(preset: Preset, entity_types: tuple[str, ...] | None = None,
                  relation_types: tuple[str, ...] | None = None, where: str = "") -> Preset:
    """The preset restricted to a subset of its types (a site annotating less of it).

    Without ``relation_types``, the preset's relation types that the narrowed entity
    types can still produce are kept. ``where`` prefixes errors (e.g. a site.json path)."""
    prefix = f"{where}: " if where else ""
    entities = preset.entity_types if entity_types is None else tuple(entity_types)
    extra = [t for t in entities if t not in preset.entity_types]
    if extra:
        raise ValueError(f"{prefix}key 'entity_types' lists {extra}, which preset "
                         f"{preset.name!r} does not annotate {list(preset.entity_types)}")
    fixed = set(preset.relation_map.values()) - {MODIFIER}

    def producible(t: str) -> bool:
        return t in fixed or t in entities  # a modifier relation needs its modifier type

    if relation_types is None:
        relations = tuple(t for t in preset.relation_types if producible(t))
    else:
        relations = tuple(relation_types)
        extra = [t for t in relations if t not in preset.relation_types]
        if extra:
            raise ValueError(f"{prefix}key 'relation_types' lists {extra}, which preset "
                             f"{preset.name!r} does not annotate {list(preset.relation_types)}")
        extra = [t for t in relations if not producible(t)]
        if extra:
            raise ValueError(f"{prefix}key 'relation_types' lists {extra}, whose modifier "
                             "type 'entity_types' leaves out")
    return replace(
        preset,
        entity_map={s: t for s, t in preset.entity_map.items() if t in entities},
        entity_types=entities,
        relation_types=relations,
    )


def apply_preset(doc: Document, preset: Preset, stats: MappingStats | None = None) -> Document:
    """A new document in the common schema; ``doc`` is left unchanged."""
    stats = stats if stats is not None else MappingStats()
    stats.documents += 1
    entities: dict[str, Entity] = {}
    for ent in doc.entities:
        target = preset.entity_map.get(ent.type)
        if target is None:
            stats.dropped[ENTITY_TYPE_UNMAPPED] += 1
            stats.dropped_entity_types[ent.type] += 1
            continue
        entities[ent.id] = Entity(ent.id, target, ent.spans, ent.text)
    relations = [rel for rel in (_map_relation(r, entities, preset, stats)
                                 for r in doc.relations) if rel is not None]
    kept = set(entities) | {r.id for r in relations}
    attributes: list[Attribute] = []
    for att in doc.attributes:
        if att.target in kept:
            attributes.append(att)
        else:
            stats.dropped[ATTRIBUTE_TARGET_DROPPED] += 1
    groups: list[Group] = []
    for group in doc.groups:
        if all(m in entities for m in group.members):
            groups.append(group)
        else:
            stats.dropped[GROUP_MEMBER_DROPPED] += 1
    stats.entities += len(entities)
    stats.relations += len(relations)
    stats.attributes += len(attributes)
    stats.groups += len(groups)
    return Document(doc.doc_id, doc.text, list(entities.values()), relations, attributes,
                    groups, doc.source_split)


def _map_relation(rel: Relation, entities: dict[str, Entity], preset: Preset,
                  stats: MappingStats) -> Relation | None:
    target = preset.relation_map.get(rel.type)
    if target is None:
        stats.dropped[RELATION_TYPE_UNMAPPED] += 1
        stats.dropped_relation_types[rel.type] += 1
        return None
    if rel.arg1 not in entities or rel.arg2 not in entities:
        stats.dropped[RELATION_ARGUMENT_DROPPED] += 1
        return None
    arg1, arg2 = rel.arg1, rel.arg2
    if target == MODIFIER:
        pair = _main_and_modifier(entities[arg1], entities[arg2])
        if pair is None:
            stats.dropped[RELATION_NOT_MAIN_MODIFIER] += 1
            return None
        arg1, arg2 = pair[0].id, pair[1].id
        target = pair[1].type
    elif rel.type in preset.reverse_relations:
        arg1, arg2 = arg2, arg1
    if target not in preset.relation_types:
        stats.dropped[RELATION_TYPE_NOT_DECLARED] += 1
        return None
    return Relation(rel.id, target, arg1, arg2)


def _main_and_modifier(a: Entity, b: Entity) -> tuple[Entity, Entity] | None:
    if a.type in MAIN_ENTITY_TYPES and b.type in MODIFIER_TYPES:
        return a, b
    if b.type in MAIN_ENTITY_TYPES and a.type in MODIFIER_TYPES:
        return b, a
    return None
