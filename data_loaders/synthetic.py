"""The synthetic multi-site demo corpus, written as BRAT standoff.

Three sites that differ in writing style and in which types they annotate, plus a small
mixed validation set for the coordinator annotated with the union of their types. Every
note is invented from templates (``synthetic_notes``); none comes from a patient.
Generation is deterministic: each document has its own random stream, derived with sha256
from (seed, site, index), so the same arguments give byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from data_loaders.brat import write_brat
from data_loaders.document import Document, Entity, Relation
from data_loaders.synthetic_notes import RELATION_ARGS, STYLES, NoteBuilder, generate_note

from .schema import ENTITY_TYPES, MODIFIER_TYPES

logger = logging.getLogger(__name__)

GENERATOR = "fedmedlora.synthetic"
# Bump when templates or vocabularies change, so existing corpora are regenerated.
GENERATOR_VERSION = 1
MANIFEST = "corpus.json"
SITE_FILE = "site.json"


@dataclass(frozen=True)
class SiteSpec:
    name: str
    prefix: str  # doc ids are <prefix>-<index>, unique over the corpus
    description: str
    styles: tuple[str, ...]  # documents cycle through these
    entity_types: tuple[str, ...]

    @property
    def relation_types(self) -> tuple[str, ...]:
        return relation_types_for(self.entity_types)


def relation_types_for(entity_types: tuple[str, ...]) -> tuple[str, ...]:
    """Modifier relations a site can annotate: the modifier and some main type it links to."""
    return tuple(
        rel for rel in MODIFIER_TYPES
        if rel in RELATION_ARGS and rel in entity_types
        and any(main in entity_types for main in RELATION_ARGS[rel])
    )


def _schema_order(types: set[str]) -> tuple[str, ...]:
    return tuple(t for t in ENTITY_TYPES if t in types)


_SITE_A = ("problem", "treatment", "test", "drug", "labvalue", "negation")
_SITE_B = ("problem", "test", "labvalue", "severity", "temporal")
_SITE_C = ("drug", "dosage", "frequency", "route", "form", "duration", "problem")

SITES: tuple[SiteSpec, ...] = (
    SiteSpec("site-a", "a", "narrative discharge summaries", ("narrative",),
             _schema_order(set(_SITE_A))),
    SiteSpec("site-b", "b", "terse problem lists and assessment notes", ("problem_list",),
             _schema_order(set(_SITE_B))),
    SiteSpec("site-c", "c", "medication lists and reconciliation notes", ("med_list",),
             _schema_order(set(_SITE_C))),
)
COORDINATOR = SiteSpec(
    "coordinator", "coord",
    "validation set held by the coordinator: mixed styles, annotated with the union of the "
    "sites' types",
    STYLES, _schema_order(set(_SITE_A) | set(_SITE_B) | set(_SITE_C)),
)


def _doc_rng(seed: int, site: str, index: int) -> random.Random:
    digest = hashlib.sha256(f"{GENERATOR}/{seed}/{site}/{index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def to_document(doc_id: str, note: NoteBuilder, spec: SiteSpec) -> Document:
    """Keep the mentions and links of the types ``spec`` annotates, numbered T1.. / R1.."""
    kept = sorted(
        (i for i, m in enumerate(note.mentions) if m.type in spec.entity_types),
        key=lambda i: (note.mentions[i].start, note.mentions[i].end),
    )
    text = note.text
    ids = {i: f"T{n}" for n, i in enumerate(kept, start=1)}
    entities = [
        Entity(ids[i], note.mentions[i].type, ((note.mentions[i].start, note.mentions[i].end),),
               text[note.mentions[i].start:note.mentions[i].end])
        for i in kept
    ]
    links = [
        link for link in note.links
        if link.type in spec.relation_types and link.main in ids and link.modifier in ids
    ]
    relations = [
        Relation(f"R{n}", link.type, ids[link.main], ids[link.modifier])
        for n, link in enumerate(links, start=1)
    ]
    return Document(doc_id=doc_id, text=text, entities=entities, relations=relations)


def generate_site(spec: SiteSpec, seed: int, num_docs: int) -> list[Document]:
    docs = []
    for index in range(1, num_docs + 1):
        rng = _doc_rng(seed, spec.name, index)
        style = spec.styles[(index - 1) % len(spec.styles)]
        docs.append(to_document(f"{spec.prefix}-{index:04d}", generate_note(style, rng), spec))
    return docs


def _site_json(spec: SiteSpec) -> str:
    data = {
        "name": spec.name,
        "description": spec.description,
        "entity_types": list(spec.entity_types),
        "relation_types": list(spec.relation_types),
    }
    return json.dumps(data, indent=2) + "\n"


def _manifest(seed: int, docs_per_site: int, coordinator_docs: int, complete: bool) -> dict:
    return {
        "generator": GENERATOR,
        "version": GENERATOR_VERSION,
        "seed": seed,
        "docs_per_site": docs_per_site,
        "coordinator_docs": coordinator_docs,
        "sites": [spec.name for spec in SITES + (COORDINATOR,)],
        "complete": complete,
    }


def _write_manifest(out_dir: Path, manifest: dict) -> None:
    with open(out_dir / MANIFEST, "w", encoding="utf-8", newline="") as handle:
        handle.write(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def read_manifest(out_dir: Path) -> dict | None:
    """The corpus manifest, or None when absent or unreadable (then the corpus is stale)."""
    path = Path(out_dir) / MANIFEST
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and data.get("generator") == GENERATOR else None


def corpus_is_current(
    out_dir: Path, seed: int = 0, docs_per_site: int = 60, coordinator_docs: int = 12
) -> bool:
    """Whether ``out_dir`` holds a complete corpus generated with these parameters."""
    expected = _manifest(seed, docs_per_site, coordinator_docs, complete=True)
    return read_manifest(out_dir) == expected and all(
        (Path(out_dir) / name / SITE_FILE).is_file() for name in expected["sites"]
    )


def generate_corpus(
    out_dir: Path, seed: int = 0, docs_per_site: int = 60, coordinator_docs: int = 12
) -> dict[str, Path]:
    """Write the demo corpus under ``out_dir``; returns site name -> folder.

    Skips the work when ``out_dir`` already holds the same corpus. Refuses a non-empty
    folder that is not a generated corpus, so it never deletes anyone's data.
    """
    if docs_per_site < 1 or coordinator_docs < 1:
        raise ValueError(
            f"docs_per_site and coordinator_docs must be >= 1, got {docs_per_site} "
            f"and {coordinator_docs}"
        )
    out_dir = Path(out_dir)
    specs = SITES + (COORDINATOR,)
    folders = {spec.name: out_dir / spec.name for spec in specs}
    if corpus_is_current(out_dir, seed, docs_per_site, coordinator_docs):
        logger.debug("%s already holds this corpus", out_dir)
        return folders
    if out_dir.exists() and any(out_dir.iterdir()) and read_manifest(out_dir) is None:
        raise FileExistsError(
            f"{out_dir} is not empty and has no {MANIFEST} of a generated corpus; "
            "expected an empty or missing folder"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    # Marked incomplete until the last file is written, so a crash is regenerated.
    _write_manifest(out_dir, _manifest(seed, docs_per_site, coordinator_docs, complete=False))
    for spec in specs:
        folder = folders[spec.name]
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir()
        with open(folder / SITE_FILE, "w", encoding="utf-8", newline="") as handle:
            handle.write(_site_json(spec))
        count = coordinator_docs if spec is COORDINATOR else docs_per_site
        for doc in generate_site(spec, seed, count):
            write_brat(doc, folder)
    _write_manifest(out_dir, _manifest(seed, docs_per_site, coordinator_docs, complete=True))
    logger.info("wrote synthetic corpus (seed %d) to %s", seed, out_dir)
    return folders
