"""Extraction from raw text: sentences -> prompts -> generated JSON -> character spans."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from modeling.generation import generate_answers

from .align import align_predictions
from .instances import Instance
from .parsing import parse_entities
from .prompt import build_messages
from .schema import MAIN_ENTITY_TYPES, check_types
from .segment import split_sentences


@dataclass(frozen=True)
class Extracted:
    type: str
    start: int  # character offsets into the text given to `extract_entities`
    end: int
    text: str


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
    check_types(list(entity_types), "entity_types")
    sentences = [
        Instance(doc_id="text", offset=start, text=text[start:end], entity_types=tuple(entity_types), entities=())
        for start, end in split_sentences(text)
    ]
    answers = generate_answers(model, tokenizer, [build_messages(s) for s in sentences],
                               max_new_tokens, batch_size, "extract")
    found, dropped = [], 0
    for sentence, answer in zip(sentences, answers):
        spans, missing = align_predictions(parse_entities(answer, sentence.entity_types).entities, sentence.text)
        dropped += missing
        for type_, start, end in spans:
            s, e = sentence.offset + start, sentence.offset + end
            found.append(Extracted(type_, s, e, text[s:e]))
    return sorted(found, key=lambda x: (x.start, x.end, x.type)), dropped
