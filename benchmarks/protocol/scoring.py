"""Scores of an arm's answers on a test split: strict and lenient F1 with document-level
bootstrap intervals, the per-document counts paired comparisons need, and the counts of
answers scoring could not place."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.bootstrap import bootstrap, document_counts
from clinical_ie.evaluate import score_outputs, score_spans, site_instances, stable_subset
from clinical_ie.instances import RE
from clinical_ie.parsing import parse_entities, parse_relations
from data_loaders.sites import load_site

from .profiles import NEW_SITE, TOKEN_PREFIX
from .store import compact_json
from .workbench import Workbench


@functools.cache  # every arm is scored on the same splits: read each once
def test_instances(folder: Path, name: str, limit: int) -> tuple[list, str | None]:
    site = load_site(folder, name=name)
    return stable_subset(site_instances(site, "test"), limit), site.score_by


def score(bench: Workbench, arm: str, adapter: Path | None, test: str, folder: Path, out: Path) -> dict[str, Any]:
    instances, score_by = test_instances(folder, test, bench.profile.test_limit(test))
    outputs = bench.outputs(adapter, instances, out / "outputs" / arm / f"{test}.json", f"{arm} on {test}")
    return scored(instances, outputs, score_by)


def scored(instances: Sequence, outputs: Sequence[str], score_by: str | None) -> dict[str, Any]:
    """Scores with bootstrap intervals, and the per-document counts paired comparisons need
    (the same instances give the same documents in the same order for every arm)."""
    return _scored(instances, outputs, score_by, score_outputs, not_in_sentence(instances, outputs))


def scored_spans(instances: Sequence, spans: Sequence, score_by: str | None) -> dict[str, Any]:
    """`scored` for a tagger's spans (one list per entity instance, None for a relation
    instance, whose gold counts as missed): spans read off tags are pieces of their sentence,
    so nothing is unaligned."""
    return _scored(instances, spans, score_by, score_spans, 0)


def _scored(instances: Sequence, outputs: Sequence, score_by: str | None, score: Callable,
            unaligned: int) -> dict[str, Any]:
    _, counts = document_counts(instances, outputs, score_by, score)
    intervals = bootstrap(counts, score_by=score_by)
    entities, relations = score(instances, outputs, score_by)
    return {"instances": len(instances), "documents": int(counts.shape[0]),
            "scores": {k: v.to_dict() for k, v in intervals.items()}, "document-counts": counts.tolist(),
            # predicted entity strings and relation arguments that are not in their sentence
            "unaligned": unaligned,
            # predictions scoring could not place: those, and copies past the sentence's
            # occurrences (a relation repeated more often than its arguments' pairs)
            "dropped": entities.unaligned + relations.unaligned,
            "dropped-entities": entities.unaligned, "dropped-relations": relations.unaligned,
            "malformed": entities.malformed + relations.malformed,
            # NER strict (tp, fp, fn) per entity type: where an arm wins or loses
            "per-type": {t: [strict.tp, strict.fp, strict.fn] for t, (strict, _) in entities.per_type.items()}}


def not_in_sentence(instances: Sequence, outputs: Sequence[str]) -> int:
    """Predicted entity strings and relation arguments found nowhere in their sentence, even
    ignoring case (what constrained decoding rules out)."""
    count = 0
    for instance, output in zip(instances, outputs, strict=True):
        text = instance.text.lower()
        if instance.task == RE and not instance.given_entities:
            strings = [arg for _, *args in parse_relations(output, instance.relation_types).relations for arg in args]
        elif instance.task == RE:
            continue  # numbers of listed entities, not strings
        else:
            strings = [mention for _, mention in parse_entities(output, instance.entity_types).entities]
        count += sum(1 for string in strings if string.strip() and string.strip().lower() not in text)
    return count


def refresh_counts(path: Path, profile: str, out: Path, sites: dict[str, Path], limit: Callable[[str], int]) -> list[str]:
    """Recompute each recorded arm's derived counts (`unaligned`, `dropped`, `malformed`,
    per type) from its cached outputs under `out`, after their definitions changed; an arm
    whose cached outputs are missing or no longer give its recorded scores is left as it is.
    Returns the arms refreshed."""
    data = json.loads(path.read_text())
    arms = data["profiles"][profile]["arms"]
    refreshed = []
    for arm, per_test in arms.items():
        if arm.startswith(("run/", TOKEN_PREFIX)):  # a tagger's spans have no counts to refresh
            continue
        name = arm.split("/", 1)[1] if arm.startswith("new-site/") else arm
        entries = {NEW_SITE: per_test} if arm.startswith("new-site/") else per_test
        fresh_all = {}
        for test, entry in entries.items():
            cache = out / "outputs" / name / f"{test}.json"
            if not cache.is_file():
                break
            instances, score_by = test_instances(sites[test], test, limit(test))
            fresh = scored(instances, json.loads(cache.read_text())["outputs"], score_by)
            if fresh["scores"] != entry["scores"]:
                break
            fresh_all[test] = fresh
        else:
            arms[arm] = fresh_all[NEW_SITE] if arm.startswith("new-site/") else fresh_all
            refreshed.append(arm)
    path.write_text(compact_json(data) + "\n")
    return refreshed
