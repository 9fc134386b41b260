"""Extraction from raw text: sentences -> prompts -> generated JSON -> character spans."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from data_loaders.schema import MAIN_ENTITY_TYPES, MODIFIER_TYPES, check_types
from modeling.generation import generate_answers

from .align import align_relations, predicted_entities
from .instances import DEFAULT_RE_MODE, GIVEN_ENTITIES, RE, Instance, check_re_mode
from .parsing import parse_numbered_relations, parse_relations
from .prompt import PREFIX_END, answer_constraint, argument_text, build_messages
from .segment import split_sentences


@dataclass(frozen=True)
class Extracted:
    type: str
    start: int  # character offsets into the text given to `extract_entities` / `extract`
    end: int
    text: str


@dataclass(frozen=True)
class ExtractedRelation:
    """A relation between two spans of the text. Given entities, an argument is an
    extracted entity, with its type. End to end, an argument's ``type`` is that of an
    extracted entity with the same span; failing that, the relation type for the second
    argument of a modifier relation (a "dosage" relation's second argument is a dosage);
    otherwise ``""`` (the end-to-end prompt does not ask for argument types)."""

    type: str
    arg1: Extracted
    arg2: Extracted


@dataclass
class ExtractionResult:
    """Entities and relations found in a text, and how many predicted strings (entity
    mentions or relations with an argument) were not in the text, or relations naming an
    entity number not listed: those are dropped, as an extraction must point at the note."""

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
    re_mode: str = DEFAULT_RE_MODE,
    constrained: bool = False,
) -> ExtractionResult:
    """Entities of ``entity_types`` and, if ``relation_types`` are given, relations of
    those types in ``text``, sentence by sentence. ``re_mode`` ``"given-entities"``: one
    batched generation for the entities, then one for the relations among the entities
    found in each sentence (numbered in the prompt). ``"end-to-end"``: an entity prompt
    and a relation prompt per sentence, all answered in one batched generation.
    ``constrained``: every quoted string the model copies is held to its sentence during
    generation, and numbers to the entities listed (``modeling.constrained``)."""
    check_types(list(entity_types), "entity_types")
    bad = [t for t in relation_types if not isinstance(t, str) or not t.strip()]
    if bad:
        raise ValueError(f"relation_types: expected non-empty strings, got {bad}")
    check_re_mode(re_mode)
    given = re_mode == GIVEN_ENTITIES and bool(relation_types)
    if given and not entity_types:
        raise ValueError("relation_types with re_mode 'given-entities' need entity_types: relations "
                         "are asked among the entities found (or use re_mode 'end-to-end')")
    types, rel_types = tuple(entity_types), tuple(relation_types)
    prompts: list[Instance] = []
    for start, end in split_sentences(text):
        sentence = text[start:end]
        if types:
            prompts.append(Instance("text", start, sentence, types, ()))
        if rel_types and not given:
            prompts.append(Instance("text", start, sentence, types, (), task=RE, relation_types=rel_types))
    answers = _generate(model, tokenizer, prompts, max_new_tokens, batch_size, "extract", constrained)
    result = ExtractionResult()
    pending: list[tuple[Instance, str]] = []
    re_prompts: list[Instance] = []
    for prompt, answer in zip(prompts, answers):
        if prompt.task == RE:
            pending.append((prompt, answer))  # after the entities, which type the arguments
            continue
        found, missing = predicted_entities(prompt, answer)
        result.not_in_text += missing
        result.entities += [_at(prompt, e.type, (e.start, e.end), text) for e in found]
        if given and len(found) >= 2:  # a relation needs two entities
            re_prompts.append(replace(prompt, entities=found, task=RE, relation_types=rel_types,
                                      given_entities=True))
    result.entities.sort(key=lambda x: (x.start, x.end, x.type))
    if given:
        re_answers = _generate(model, tokenizer, re_prompts, max_new_tokens, batch_size, "extract relations",
                               constrained)
        for prompt, answer in zip(re_prompts, re_answers):
            _add_numbered(result, prompt, answer, text)
    entity_types_at = _types_by_span(result.entities, types)
    for prompt, answer in pending:
        aligned, missing = align_relations(parse_relations(answer, prompt.relation_types).relations, prompt.text)
        result.not_in_text += missing
        for type_, first, second in aligned:
            args = []
            for position, span in enumerate((first, second)):
                s, e = prompt.offset + span[0], prompt.offset + span[1]
                default = type_ if position == 1 and type_ in MODIFIER_TYPES else ""
                args.append(_at(prompt, entity_types_at.get((s, e), default), span, text))
            result.relations.append(ExtractedRelation(type_, args[0], args[1]))
    result.relations.sort(key=lambda r: (r.arg1.start, r.arg1.end, r.arg2.start, r.arg2.end, r.type))
    return result


def _generate(model, tokenizer, prompts: Sequence[Instance], max_new_tokens: int, batch_size: int,
              description: str, constrained: bool = False) -> list[str]:
    """Answers to ``prompts``, in one batched generation (none asked: no model call)."""
    if not prompts:
        return []
    constraints = [answer_constraint(p) for p in prompts] if constrained else None
    return generate_answers(model, tokenizer, [build_messages(p) for p in prompts], max_new_tokens,
                            batch_size, description, prefix_end=PREFIX_END, constraints=constraints)


def _add_numbered(result: ExtractionResult, prompt: Instance, answer: str, text: str) -> None:
    """Relations of a given-entities answer: arguments are the listed entities, with their
    types; a pair naming no listed entity is counted in ``not_in_text``."""
    listed = prompt.entities
    parsed = parse_numbered_relations(answer, prompt.relation_types,
                                      [argument_text(e, prompt.text) for e in listed])
    result.not_in_text += sum(parsed.unresolved.values())
    for type_, a, b in parsed.relations:
        args = [_at(prompt, listed[i].type, (listed[i].start, listed[i].end), text) for i in (a, b)]
        result.relations.append(ExtractedRelation(type_, *args))


def _at(prompt: Instance, type_: str, span: tuple[int, int], text: str) -> Extracted:
    """A sentence-relative span as an ``Extracted`` of the whole text."""
    s, e = prompt.offset + span[0], prompt.offset + span[1]
    return Extracted(type_, s, e, text[s:e])


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
