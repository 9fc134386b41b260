"""The protocol's site folders, made from the prepared corpora under `--data`: DDI split by
source into a training site and the new low-resource site, and the label-skew sites."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from data_loaders.splits import split_of

from .profiles import EXTERNAL, NEW_SITE, TRAINING_SITES


def _write_subset(source: Path, target: Path, name: str, keep) -> Path:
    """A site folder holding the documents of `source` for which keep(doc) is true."""
    if (target / "site.json").is_file():
        return target
    target.mkdir(parents=True, exist_ok=True)
    site = json.loads((source / "site.json").read_text())
    lines = [line for line in (source / "documents.jsonl").read_text(encoding="utf-8").splitlines()
             if line.strip() and keep(json.loads(line))]
    if not lines:
        raise ValueError(f"{source}: no document kept for site {name}")
    (target / "documents.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (target / "site.json").write_text(json.dumps({**site, "name": name}, indent=2))
    return target


def _rank(doc_id: str) -> str:
    return hashlib.sha256(doc_id.encode()).hexdigest()


def prepare_sites(data: Path, out: Path, new_site_documents: int) -> dict[str, Path]:
    """Site folders of the protocol: DDI is split by source (DrugBank labels have named ids,
    MedLine abstracts numeric PubMed ids); the new site keeps its test documents and only
    `new_site_documents` training documents (chosen by a hash of their ids)."""
    for name in ("maccrobat", "chia", "ddi", "ade"):
        if not (data / name / "site.json").is_file():
            raise FileNotFoundError(f"--data: {data / name} is not a prepared site folder; prepare it with "
                                    f"`fedmedlora prepare --preset {name} ...` (docs/getting-started.md, 'Real corpora')")
    root = out / "sites"
    root.mkdir(parents=True, exist_ok=True)
    for name in ("maccrobat", "chia", "ade"):
        link = root / name
        if not link.exists():
            link.symlink_to((data / name).resolve(), target_is_directory=True)
    _write_subset(data / "ddi", root / "ddi-drugbank", "ddi-drugbank", lambda d: not d["id"].isdigit())
    documents = [json.loads(line) for line in (data / "ddi" / "documents.jsonl").open(encoding="utf-8") if line.strip()]
    medline_train = sorted((d["id"] for d in documents if d["id"].isdigit() and d.get("source_split") == "train"),
                           key=_rank)
    # Training documents the split keeps for training (it carves validation from DDI's Train).
    few = set([i for i in medline_train if split_of(i, validation=0.1 / 0.8, test=0.0) == "train"][:new_site_documents])
    _write_subset(data / "ddi", root / NEW_SITE, NEW_SITE,
                  lambda d: d["id"].isdigit() and (d.get("source_split") != "train" or d["id"] in few))
    return {name: root / name for name in (*TRAINING_SITES, EXTERNAL, NEW_SITE)}


# Label skew (the paper's partial-annotation setting): MACCROBAT's documents dealt to three
# sites by a hash of their ids, each site annotating one group of entity types. A relation
# stays where both its entities do. The coordinator validates and every arm is tested on
# MACCROBAT with all types.
SKEW_SITES = ("skew-a", "skew-b", "skew-c")
SKEW_GROUPS = (
    ("problem", "test", "labvalue", "severity"),
    ("treatment", "drug", "dosage", "route", "frequency"),
    ("bodyloc", "duration", "temporal"),
)


def prepare_label_skew_sites(data: Path, out: Path) -> dict[str, Path]:
    """One site folder per entry of SKEW_SITES under `out/sites` (kept if already there)."""
    source = data / "maccrobat"
    site = json.loads((source / "site.json").read_text())
    documents = [json.loads(line) for line in (source / "documents.jsonl").open(encoding="utf-8") if line.strip()]
    order = sorted(documents, key=lambda d: _rank(d["id"]))
    folders = {}
    for k, (name, types) in enumerate(zip(SKEW_SITES, SKEW_GROUPS, strict=True)):
        target = out / "sites" / name
        folders[name] = target
        if (target / "site.json").is_file():
            continue
        unknown = set(types) - set(site["entity_types"])
        if unknown:
            raise ValueError(f"{source / 'site.json'}: label skew needs entity types {sorted(unknown)}")
        kept = [_only_types(doc, set(types)) for doc in order[k::len(SKEW_SITES)]]
        relation_types = sorted({r["type"] for doc in kept for r in doc["relations"]})
        target.mkdir(parents=True, exist_ok=True)
        (target / "documents.jsonl").write_text("".join(json.dumps(d) + "\n" for d in kept), encoding="utf-8")
        (target / "site.json").write_text(json.dumps(
            {**site, "name": name, "entity_types": list(types),
             "relation_types": [t for t in site["relation_types"] if t in relation_types]}, indent=2))
    return folders


def _only_types(doc: dict[str, Any], types: set[str]) -> dict[str, Any]:
    """The document with only the entities of `types` and what refers to them alone."""
    entities = [e for e in doc["entities"] if e["type"] in types]
    ids = {e["id"] for e in entities}
    return {
        **doc,
        "entities": entities,
        "relations": [r for r in doc["relations"] if r["arg1"] in ids and r["arg2"] in ids],
        "attributes": [a for a in doc.get("attributes", []) if a["target"] in ids],
        "groups": [g for g in doc.get("groups", []) if set(g["members"]) <= ids],
    }
