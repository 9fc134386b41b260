"""The instruction format: chat messages for one sentence, and the JSON answer to train on.
Entity instances ask for typed mentions, relation instances for typed argument pairs:
copied texts (end to end), or the numbers of entities listed after the sentence (given
entities)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from data_loaders.schema import RELATION_DEFINITIONS, TYPE_DEFINITIONS

from .instances import RE, GoldEntity, Instance

if TYPE_CHECKING:
    from modeling.constrained import Constraint

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
# Numbers instead of copied texts: a short answer, and no ambiguity between repeated strings.
_GIVEN_ENTITIES_FORMAT = (
    'Answer: {"type":[[first,second],...]}, first and second the numbers of entities listed '
    "after the sentence, pairs sorted; only the types above, types without pairs omitted; "
    "{} if none."
)
_COMPACT = (", ", ": ")
_NUMBERS = (",", ":")  # "[[4,3],[5,3]]": a space after a comma would cost a token per pair

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
    argument pairs, in order of appearance of the first argument, then the second; with
    given entities, pairs of their numbers, sorted."""
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
    if instance.given_entities:
        # The list varies per instance, so it follows the sentence (after PREFIX_END).
        user = (f"Relation types:\n{types}\n{_GIVEN_ENTITIES_FORMAT}\nSentence: {instance.text}\n"
                f"Entities: {entity_list(instance.entities, instance.text)}")
    else:
        user = f"Relation types:\n{types}\n{_RELATION_FORMAT}\nSentence: {instance.text}"
    return [
        {"role": "system", "content": RELATION_SYSTEM_PROMPT},
        {"role": "user", "content": user},
    ]


def entity_list(entities: Sequence[GoldEntity], sentence: str) -> str:
    """``1. chest pain (problem); 2. 81 mg (dosage)``, or ``none``."""
    items = [f"{n}. {argument_text(e, sentence)} ({e.type})" for n, e in enumerate(entities, 1)]
    return "; ".join(items) or "none"


def _relation_target(instance: Instance) -> str:
    if instance.given_entities:
        return _numbered_target(instance)
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


def _numbered_target(instance: Instance) -> str:
    """Pairs of 1-based entity numbers per type, sorted; a relation whose argument is not
    listed (never so in built instances) is left out."""
    number = {e: n for n, e in enumerate(instance.entities, 1)}
    by_type: dict[str, list[list[int]]] = {t: [] for t in instance.relation_types}
    for rel in instance.relations:
        if rel.type in by_type and rel.arg1 in number and rel.arg2 in number:
            by_type[rel.type].append([number[rel.arg1], number[rel.arg2]])
    answer = {t: sorted(pairs) for t, pairs in by_type.items() if pairs}
    return json.dumps(answer, ensure_ascii=False, separators=_NUMBERS)


def answer_constraint(instance: Instance) -> Constraint:
    """What constrained decoding (`modeling.constrained`, config key ``eval.constrained``)
    holds the instance's answer to: the keys are the types asked; entity texts and end-to-end
    arguments are copied from the sentence; given entities, the numbers 1..N of the entities
    listed."""
    from modeling.constrained import Constraint  # torch: only where answers are generated

    if instance.task == RE:
        numbers = len(instance.entities) if instance.given_entities else None
        return Constraint(instance.text, tuple(instance.relation_types), numbers)
    return Constraint(instance.text, tuple(instance.entity_types))


def argument_text(arg: GoldEntity, sentence: str) -> str:
    """The sentence text from the argument's first fragment to its last. For a
    discontiguous argument this covers the gap: joined fragments never occur in the
    sentence, so they could never be aligned, while the covering span is a strict match."""
    return sentence[arg.start : arg.end]
