"""Extraction from raw text: sentences -> prompts -> generated JSON -> character spans."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from modeling.generation import generate_answers

from .align import align_predictions, align_relations
from .instances import RE, Instance
from .parsing import parse_entities
from .prompt import build_messages
from .relation_parsing import parse_relations
from .schema import MAIN_ENTITY_TYPES, MODIFIER_TYPES, check_types
from .segment import split_sentences


@dataclass(frozen=True)
class Extracted:
    type: str
    start: int  # character offsets into the text given to `extract_entities` / `extract`
    end: int
    text: str


@dataclass(frozen=True)
class ExtractedRelation:
    """A relation between two spans of the text. An argument's ``type`` is that of an
    extracted entity with the same span; failing that, the relation type for the second
    argument of a modifier relation (a "dosage" relation's second argument is a dosage);
    otherwise ``""`` (the relation prompt does not ask for argument types)."""

    type: str
    arg1: Extracted
    arg2: Extracted


@dataclass
class ExtractionResult:
    """Entities and relations found in a text, and how many predicted strings (entity
    mentions or relations with an argument) were not in the text: those are dropped, as
    an extraction must point at the note."""

    entities: list[Extracted] = field(default_factory=list)
    relations: list[ExtractedRelation] = field(default_factory=list)
    not_in_text: int = 0


def extract(
    model,
    tokenizer,
    text: str,
    entity_types: Sequence[str] = MAIN_ENTITY_TYPES,
    relation_types: Sequence[str] = (),
    max_new_tokens: int = 128,
    batch_size: int = 16,
) -> ExtractionResult:
    """Entities of ``entity_types`` and, if ``relation_types`` are given, relations of
    those types in ``text``: an entity prompt and a relation prompt per sentence, all
    answered in one batched generation."""
    check_types(list(entity_types), "entity_types")
    bad = [t for t in relation_types if not isinstance(t, str) or not t.strip()]
    if bad:
        raise ValueError(f"relation_types: expected non-empty strings, got {bad}")
    prompts: list[Instance] = []
    for start, end in split_sentences(text):
        sentence = text[start:end]
        if entity_types:
            prompts.append(Instance("text", start, sentence, tuple(entity_types), ()))
        if relation_types:
            prompts.append(Instance("text", start, sentence, tuple(entity_types), (), task=RE,
                                    relation_types=tuple(relation_types)))
    answers = generate_answers(model, tokenizer, [build_messages(p) for p in prompts],
                               max_new_tokens, batch_size, "extract")
    result = ExtractionResult()
    pending: list[tuple[Instance, str]] = []
    for prompt, answer in zip(prompts, answers):
        if prompt.task == RE:
            pending.append((prompt, answer))  # after the entities, which type the arguments
            continue
        spans, missing = align_predictions(parse_entities(answer, prompt.entity_types).entities, prompt.text)
        result.not_in_text += missing
        for type_, start, end in spans:
            s, e = prompt.offset + start, prompt.offset + end
            result.entities.append(Extracted(type_, s, e, text[s:e]))
    result.entities.sort(key=lambda x: (x.start, x.end, x.type))
    entity_types_at = _types_by_span(result.entities, tuple(entity_types))
    for prompt, answer in pending:
        aligned, missing = align_relations(parse_relations(answer, prompt.relation_types).relations, prompt.text)
        result.not_in_text += missing
        for type_, first, second in aligned:
            args = []
            for position, (s, e) in enumerate((first, second)):
                s, e = prompt.offset + s, prompt.offset + e
                default = type_ if position == 1 and type_ in MODIFIER_TYPES else ""
                args.append(Extracted(entity_types_at.get((s, e), default), s, e, text[s:e]))
            result.relations.append(ExtractedRelation(type_, args[0], args[1]))
    result.relations.sort(key=lambda r: (r.arg1.start, r.arg1.end, r.arg2.start, r.arg2.end, r.type))
    return result


def extract_entities(
    model,
    tokenizer,
    text: str,
    entity_types: Sequence[str] = MAIN_ENTITY_TYPES,
    max_new_tokens: int = 128,
    batch_size: int = 16,
) -> tuple[list[Extracted], int]:
    """Entities found in `text`, and how many predicted strings were not in the text
    (those are dropped: an extraction must point at the note)."""
    found = extract(model, tokenizer, text, entity_types, (), max_new_tokens, batch_size)
    return found.entities, found.not_in_text


def _types_by_span(entities: list[Extracted], order: tuple[str, ...]) -> dict[tuple[int, int], str]:
    """Span -> entity type; where several types share a span, the first in ``order``."""
    types: dict[tuple[int, int], str] = {}
    for ent in sorted(entities, key=lambda x: order.index(x.type) if x.type in order else len(order)):
        types.setdefault((ent.start, ent.end), ent.type)
    return types
