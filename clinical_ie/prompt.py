"""The instruction format: chat messages for one sentence, and the JSON answer to train on.
Entity instances ask for typed mentions, relation instances for typed argument pairs."""

from __future__ import annotations

import json

from .instances import RE, GoldEntity, Instance
from .schema import RELATION_DEFINITIONS, TYPE_DEFINITIONS

SYSTEM_PROMPT = "You extract clinical entities from a sentence and answer with JSON only."
RELATION_SYSTEM_PROMPT = (
    "You extract relations between clinical entities from a sentence and answer with JSON only."
)

# Kept short: every prompt token is paid for at every training step on a CPU.
_FORMAT = (
    'Answer: {"type": ["text", ...]}, each entity copied exactly from the sentence, '
    "in order of appearance, once per mention; only the types above, types without "
    "entities omitted; {} if none."
)
_RELATION_FORMAT = (
    'Answer: {"type": [["first", "second"], ...]}, both arguments copied exactly from the '
    "sentence, pairs in order of appearance; only the types above, types without pairs "
    "omitted; {} if none."
)
_COMPACT = (", ", ": ")

# Everything in a rendered prompt up to and including this marker is the same for every
# instance of one task and type set: the shared prefix that training, scoring and
# generation compute once per batch (modeling.training.encode's `prefix_end`). Whatever
# varies per instance (the sentence, and any list given with it) must come after it.
PREFIX_END = "\nSentence:"


def build_messages(instance: Instance) -> list[dict[str, str]]:
    """System and user messages asking for what the instance's task extracts."""
    if instance.task == RE:
        return _relation_messages(instance)
    types = "\n".join(f"- {t}: {TYPE_DEFINITIONS.get(t, t)}" for t in instance.entity_types)
    user = f"Entity types:\n{types}\n{_FORMAT}\nSentence: {instance.text}"
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": user},
    ]


def target_text(instance: Instance) -> str:
    """The expected answer, ``{}`` when there is none. Entities: types (in
    ``instance.entity_types`` order) mapped to their strings in order of appearance.
    Relations: types (in ``instance.relation_types`` order) mapped to [first, second]
    argument pairs, in order of appearance of the first argument, then the second."""
    if instance.task == RE:
        return _relation_target(instance)
    by_type: dict[str, list[str]] = {t: [] for t in instance.entity_types}
    for ent in sorted(instance.entities, key=lambda g: (g.start, g.end)):
        if ent.type in by_type:
            by_type[ent.type].append(argument_text(ent, instance.text))  # covering text: alignable
    answer = {t: texts for t, texts in by_type.items() if texts}
    return json.dumps(answer, ensure_ascii=False, separators=_COMPACT)


def relation_definition(relation_type: str) -> str:
    """``"dosage: a drug and its dosage"``; an unknown type is given by its name alone."""
    definition = RELATION_DEFINITIONS.get(relation_type)
    return f"{relation_type}: {definition}" if definition else relation_type


def _relation_messages(instance: Instance) -> list[dict[str, str]]:
    types = "\n".join(f"- {relation_definition(t)}" for t in instance.relation_types)
    user = f"Relation types:\n{types}\n{_RELATION_FORMAT}\nSentence: {instance.text}"
    return [
        {"role": "system", "content": RELATION_SYSTEM_PROMPT},
        {"role": "user", "content": user},
    ]


def _relation_target(instance: Instance) -> str:
    by_type: dict[str, list[list[str]]] = {t: [] for t in instance.relation_types}
    ordered = sorted(
        instance.relations,
        key=lambda r: (r.arg1.start, r.arg1.end, r.arg2.start, r.arg2.end),
    )
    for rel in ordered:
        if rel.type in by_type:
            by_type[rel.type].append([argument_text(rel.arg1, instance.text),
                                      argument_text(rel.arg2, instance.text)])
    answer = {t: pairs for t, pairs in by_type.items() if pairs}
    return json.dumps(answer, ensure_ascii=False, separators=_COMPACT)


def argument_text(arg: GoldEntity, sentence: str) -> str:
    """The sentence text from the argument's first fragment to its last. For a
    discontiguous argument this covers the gap: joined fragments never occur in the
    sentence, so they could never be aligned, while the covering span is a strict match."""
    return sentence[arg.start : arg.end]
