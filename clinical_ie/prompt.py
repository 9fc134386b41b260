"""The instruction format: chat messages for one sentence, and the JSON answer to train on."""

from __future__ import annotations

import json

from .instances import Instance
from .schema import TYPE_DEFINITIONS

SYSTEM_PROMPT = "You extract clinical entities from a sentence and answer with JSON only."

# Kept short: every prompt token is paid for at every training step on a CPU.
_FORMAT = (
    'Answer: {"type": ["text", ...]}, each entity copied exactly from the sentence, '
    "in order of appearance, once per mention; only the types above, types without "
    "entities omitted; {} if none."
)


def build_messages(instance: Instance) -> list[dict[str, str]]:
    """System and user messages asking for the instance's entity types in its sentence."""
    types = "\n".join(f"- {t}: {TYPE_DEFINITIONS.get(t, t)}" for t in instance.entity_types)
    user = f"Entity types:\n{types}\n{_FORMAT}\nSentence: {instance.text}"
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": user},
    ]


def target_text(instance: Instance) -> str:
    """The expected answer: types (in ``instance.entity_types`` order) mapped to their
    entity strings in order of appearance; ``{}`` when there is none."""
    by_type: dict[str, list[str]] = {t: [] for t in instance.entity_types}
    for ent in sorted(instance.entities, key=lambda g: (g.start, g.end)):
        if ent.type in by_type:
            by_type[ent.type].append(ent.text)
    answer = {t: texts for t, texts in by_type.items() if texts}
    return json.dumps(answer, ensure_ascii=False, separators=(", ", ": "))
