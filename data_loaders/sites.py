"""One site's data: its ``site.json`` (what it annotates), its notes, their splits; and
where the synthetic demo corpus lives.

A site folder is one of:

* ``site.json`` with ``name``, ``entity_types`` and ``relation_types``, beside BRAT
  ``.txt``/``.ann`` files already in the common schema (the demo corpus);
* the same ``site.json`` beside ``documents.jsonl`` (what ``prepare`` writes) instead;
* ``site.json`` naming a corpus and its preset: ``{"name": ..., "preset": "maccrobat" or
  "path/to/my.toml", "source": "path"}`` (paths relative to the site folder; ``source``
  defaults to the folder itself). The types come from the preset, optionally narrowed
  by ``entity_types``/``relation_types``.

Optional ``score_by`` (site.json, or the preset's) says how the site is scored when it
annotates only part of its notes (``relations-and-entity-recall`` for ADE).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from data_loaders.brat import quoted, quoted_id, read_brat_folder, read_text
from data_loaders.corpora import JSONL_FILE, read_corpus
from data_loaders.document import Document
from data_loaders.jsonl import read_jsonl
from data_loaders.mapping import SCORE_BY, load_preset, narrow_preset
from data_loaders.splits import split_documents
from data_loaders.synthetic import SITE_FILE, corpus_is_current, generate_corpus

from .schema import ENTITY_TYPES, check_types

logger = logging.getLogger(__name__)


class SiteFolderError(ValueError):
    """A site folder that cannot be used: its message names the folder or file and the key,
    id or type at fault, and never quotes note text (it may be sent to the coordinator)."""


@dataclass
class SiteData:
    name: str
    data_dir: Path
    entity_types: tuple[str, ...]
    relation_types: tuple[str, ...]
    splits: dict[str, list[Document]]
    # None: every entity of the declared types is annotated (strict precision counts).
    score_by: str | None = None


def _string_list(config: dict, key: str, path: Path, allow_empty: bool) -> tuple[str, ...]:
    if key not in config:
        raise SiteFolderError(f"{path}: key {key!r} is missing; expected a list of type names")
    value = config[key]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise SiteFolderError(f"{path}: key {key!r} must be a list of non-empty strings")
    if not value and not allow_empty:
        raise SiteFolderError(f"{path}: key {key!r} is empty; expected at least one type")
    duplicates = sorted({v for v in value if value.count(v) > 1})
    if duplicates:
        raise SiteFolderError(f"{path}: key {key!r} lists {duplicates} more than once")
    return tuple(value)


def _read_site_json(path: Path) -> dict:
    if path.is_dir():
        raise SiteFolderError(f"{path} is a folder; expected a JSON file")
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found; expected a JSON object with 'name', 'entity_types' and "
            "'relation_types' (or 'name' and 'preset')"
        )
    try:
        config = json.loads(read_text(path))
    except json.JSONDecodeError as error:
        raise SiteFolderError(f"{path}:{error.lineno}: invalid JSON: {error.msg}") from None
    if not isinstance(config, dict):
        raise SiteFolderError(f"{path}: expected a JSON object at the top level")
    return config


def _check_documents(docs: list[Document], site: SiteData, site_json: Path,
                     where: Callable[[Document], Path]) -> None:
    """Every annotation must be of a type the site declares: anything else is a data error."""
    for doc in docs:
        for ent in doc.entities:
            if ent.type not in site.entity_types:
                raise SiteFolderError(
                    f"{where(doc)}: entity {quoted_id(ent.id, bare=True)} has type {quoted(ent.type)}, which {site_json} "
                    f"does not list in 'entity_types' {list(site.entity_types)}"
                )
        for rel in doc.relations:
            if rel.type not in site.relation_types:
                raise SiteFolderError(
                    f"{where(doc)}: relation {quoted_id(rel.id, bare=True)} has type {quoted(rel.type)}, which "
                    f"{site_json} does not list in 'relation_types' {list(site.relation_types)}"
                )


def _optional_string(config: dict, key: str, path: Path) -> str | None:
    value = config.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        raise SiteFolderError(f"{path}: key {key!r} must be a non-empty string")
    return value


def _resolve(data_dir: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else data_dir / path


def load_site(data_dir: Path, name: str | None = None) -> SiteData:
    """Read a site folder (see the module docstring) and split it.

    ``name`` overrides the name in ``site.json`` (e.g. from a SuperNode's config).
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"site data folder {data_dir} does not exist")
    site_json = data_dir / SITE_FILE
    config = _read_site_json(site_json)
    if name is None:
        name = config.get("name")
        if not isinstance(name, str) or not name:
            raise SiteFolderError(f"{site_json}: key 'name' is missing or empty; expected a string")
    score_by = _optional_string(config, "score_by", site_json)
    if score_by is not None and score_by not in SCORE_BY:
        raise SiteFolderError(f"{site_json}: key 'score_by' must be one of {list(SCORE_BY)}")
    if "preset" in config:
        site, docs, where = _load_corpus_site(data_dir, name, config, site_json)
        site.score_by = score_by or site.score_by
    else:
        if "source" in config:
            raise SiteFolderError(f"{site_json}: key 'source' needs key 'preset' (how to read it)")
        entity_types = _string_list(config, "entity_types", site_json, allow_empty=False)
        check_types(entity_types, f"{site_json}: key 'entity_types'")
        relation_types = _string_list(config, "relation_types", site_json, allow_empty=True)
        docs, where = _read_site_documents(data_dir)
        site = SiteData(name, data_dir, entity_types, relation_types, {}, score_by)
    if not docs:
        raise SiteFolderError(f"site data folder {data_dir} holds no documents (*.txt + .ann, or documents.jsonl)")
    _check_documents(docs, site, site_json, where)
    site.splits = split_documents(docs)
    logger.info(
        "site %s: %s documents (train/validation/test)", name,
        "/".join(str(len(site.splits[k])) for k in ("train", "validation", "test")),
    )
    return site


def _read_site_documents(data_dir: Path) -> tuple[list[Document], Callable[[Document], Path]]:
    """Documents already in the common schema: ``documents.jsonl`` or BRAT files."""
    jsonl = data_dir / JSONL_FILE
    if jsonl.is_dir():
        raise SiteFolderError(f"{jsonl} is a folder; expected a JSON Lines file")
    if not jsonl.is_file():
        return read_brat_folder(data_dir), lambda doc: data_dir / f"{doc.doc_id}.ann"
    if any(data_dir.glob("*.ann")):
        raise SiteFolderError(f"{data_dir}: holds both {JSONL_FILE} and BRAT .ann files; expected "
                         "one of them")
    return read_jsonl(jsonl), lambda doc: jsonl


def _site_preset(data_dir: Path, config: dict, site_json: Path):
    """The preset a corpus site.json names, narrowed to its own type lists."""
    preset_ref = _optional_string(config, "preset", site_json)
    if preset_ref is None:
        raise SiteFolderError(f"{site_json}: key 'preset' must be a preset name or a .toml path")
    is_path = preset_ref.endswith(".toml") or "/" in preset_ref or "\\" in preset_ref
    try:
        preset = load_preset(_resolve(data_dir, preset_ref) if is_path else preset_ref)
    except (ValueError, FileNotFoundError) as error:
        raise type(error)(f"{site_json}: key 'preset': {error}") from None
    narrowed = {key: _string_list(config, key, site_json, allow_empty=key == "relation_types")
                for key in ("entity_types", "relation_types") if key in config}
    return narrow_preset(preset, narrowed.get("entity_types"), narrowed.get("relation_types"), where=str(site_json))


def declared_entity_types(data_dir: Path) -> tuple[str, ...]:
    """The entity types a site folder's site.json declares (its preset's, narrowed), without
    reading its notes."""
    site_json = Path(data_dir) / SITE_FILE
    config = _read_site_json(site_json)
    if "preset" in config:
        return _site_preset(Path(data_dir), config, site_json).entity_types
    entity_types = _string_list(config, "entity_types", site_json, allow_empty=False)
    check_types(entity_types, f"{site_json}: key 'entity_types'")
    return entity_types


def union_entity_types(folders: list[Path]) -> tuple[str, ...]:
    """Every entity type the site folders declare, each once, in the common schema's order
    (so the order the folders are listed in does not change it)."""
    found = {t for folder in folders for t in declared_entity_types(folder)}
    return tuple(t for t in ENTITY_TYPES if t in found)


def _load_corpus_site(data_dir: Path, name: str, config: dict, site_json: Path
                      ) -> tuple[SiteData, list[Document], Callable[[Document], Path]]:
    preset = _site_preset(data_dir, config, site_json)
    source = _resolve(data_dir, _optional_string(config, "source", site_json) or ".")
    if not source.exists():
        raise FileNotFoundError(f"{site_json}: key 'source': {source} does not exist")
    docs, stats = read_corpus(source, preset)
    logger.info("site %s: %s", name, stats.summary())
    site = SiteData(name, data_dir, preset.entity_types, preset.relation_types, {},
                    preset.score_by)
    return site, docs, lambda doc: source


def demo_corpus_dir() -> Path:
    """Where the generated demo corpus lives: ``$FEDMEDLORA_CACHE/demo-corpus``."""
    cache = os.environ.get("FEDMEDLORA_CACHE") or str(Path.home() / ".cache" / "fedmedlora")
    return Path(cache).expanduser() / "demo-corpus"


def ensure_demo_corpus(seed: int = 0) -> Path:
    """Generate the demo corpus at :func:`demo_corpus_dir` unless it is already there.

    Safe when several processes (simulated SuperNodes) call it at once: each writes a
    private sibling folder and renames it into place; a loser uses the winner's corpus.
    """
    target = demo_corpus_dir()
    if corpus_is_current(target, seed):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        generate_corpus(tmp, seed=seed)
        if target.exists() and not corpus_is_current(target, seed):
            _move_aside(target)
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process renamed its copy first (the target is now non-empty).
            if not corpus_is_current(target, seed):
                raise
            logger.debug("another process generated %s first", target)
        else:
            logger.info("generated the demo corpus at %s", target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _move_aside(stale: Path) -> None:
    """Move a stale corpus out of the way, then delete it (rename first: it is atomic)."""
    trash = Path(tempfile.mkdtemp(prefix=f".{stale.name}.old-", dir=stale.parent))
    try:
        os.rename(stale, trash / stale.name)
    except FileNotFoundError:
        pass  # another process moved it already
    shutil.rmtree(trash, ignore_errors=True)
