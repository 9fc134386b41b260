"""The one data model every reader produces and every later step consumes.

Offsets are character offsets into ``Document.text`` (end exclusive). An entity may
have several fragments (discontiguous spans, as BRAT allows).
"""

from __future__ import annotations

from dataclasses import dataclass, field

Span = tuple[int, int]


@dataclass(frozen=True)
class Entity:
    id: str
    type: str
    spans: tuple[Span, ...]
    text: str

    @property
    def start(self) -> int:
        return min(s for s, _ in self.spans)

    @property
    def end(self) -> int:
        return max(e for _, e in self.spans)


@dataclass(frozen=True)
class Relation:
    """A typed link between two entities; ``arg1`` is the main entity, ``arg2`` the
    modifier or second argument (BRAT's Arg1/Arg2)."""

    id: str
    type: str
    arg1: str
    arg2: str


@dataclass(frozen=True)
class Attribute:
    id: str
    type: str
    target: str
    value: str | None = None


@dataclass(frozen=True)
class Group:
    """An n-ary set of entities (BRAT ``*`` lines: ``OVERLAP``, ``OR``, equivalences).

    ``id`` is assigned by the reader (BRAT ``*`` lines have none); ``members`` are
    entity ids, in the order written."""

    id: str
    type: str
    members: tuple[str, ...]


@dataclass
class Document:
    """One note. ``source_split`` is the corpus's own official split (``"train"``,
    ``"validation"`` or ``"test"``, e.g. DDI's Train/Test folders); None when the corpus
    has none and the hash split decides (see ``data_loaders.splits``)."""

    doc_id: str
    text: str
    entities: list[Entity] = field(default_factory=list)
    relations: list[Relation] = field(default_factory=list)
    attributes: list[Attribute] = field(default_factory=list)
    groups: list[Group] = field(default_factory=list)
    source_split: str | None = None

    def entity(self, entity_id: str) -> Entity:
        for ent in self.entities:
            if ent.id == entity_id:
                return ent
        raise KeyError(f"document {self.doc_id!r} has no entity {entity_id!r}")
