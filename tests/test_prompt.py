"""Instances, prompt and target: the target round-trips through parsing and alignment to
the gold spans, and segmentation keeps document offsets."""

from __future__ import annotations

import json

import pytest

from clinical_ie.align import align_predictions
from clinical_ie.instances import make_ner_instances
from clinical_ie.parsing import parse_entities
from clinical_ie.prompt import build_messages, target_text
from clinical_ie.segment import split_sentences
from data_loaders.document import Document, Entity
from data_loaders.schema import TYPE_DEFINITIONS

TEXT = (
    "Chest pain and fever. Fever resolved after aspirin; aspirin was stopped by Dr. Smith.\n"
    "Pain worsened, then chest pain and pain again (Hb 8.2 g/dL).\n"
    "CT of chest was normal. No complaints today."
)


def _entity(eid: str, typ: str, needle: str, occurrence: int = 0) -> Entity:
    start = -1
    for _ in range(occurrence + 1):
        start = TEXT.index(needle, start + 1)
    return Entity(id=eid, type=typ, spans=((start, start + len(needle)),), text=needle)


def _doc() -> Document:
    ents = [
        _entity("T1", "problem", "Chest pain"),
        _entity("T2", "problem", "fever"),
        _entity("T3", "problem", "Fever"),
        _entity("T4", "drug", "aspirin", 0),
        _entity("T5", "drug", "aspirin", 1),
        _entity("T6", "problem", "Pain"),
        _entity("T7", "problem", "chest pain"),
        _entity("T8", "problem", "pain", 2),  # the standalone one, not inside "chest pain"
        _entity("T9", "test", "CT of chest"),  # not asked: must not appear
        _entity("T10", "bodyloc", "chest"),  # inside "chest pain": types are independent
        _entity("T11", "labvalue", "8.2 g/dL"),
    ]
    crossing = TEXT.index("stopped")
    ents.append(Entity("T12", "drug", ((crossing, TEXT.index("Pain worsened") + 4),), "x"))
    return Document(doc_id="doc1", text=TEXT, entities=ents)


TYPES = ("problem", "drug", "bodyloc", "labvalue")


def test_segmentation() -> None:
    sentences = [TEXT[s:e] for s, e in split_sentences(TEXT)]
    assert sentences == [
        "Chest pain and fever.",
        "Fever resolved after aspirin; aspirin was stopped by Dr. Smith.",
        "Pain worsened, then chest pain and pain again (Hb 8.2 g/dL).",
        "CT of chest was normal.",
        "No complaints today.",
    ]


def test_long_sentence_is_split_at_whitespace() -> None:
    text = "  " + " ".join(["word"] * 40) + "  "
    spans = split_sentences(text, max_chars=30)
    assert all(0 < e - s <= 30 for s, e in spans)
    assert " ".join(text[s:e] for s, e in spans) == text.strip()


def test_instances_keep_offsets_and_types() -> None:
    doc = _doc()
    instances, dropped = make_ner_instances(doc, TYPES)
    assert dropped == 1  # T12 crosses a sentence boundary
    assert len(instances) == 5  # sentences without entities included
    assert all(inst.entity_types == TYPES for inst in instances)
    by_id = {e.text: e for e in doc.entities}
    n = 0
    for inst in instances:
        assert doc.text[inst.offset : inst.offset + len(inst.text)] == inst.text
        for ent in inst.entities:
            (s, e), = ent.spans
            assert doc.text[inst.offset + s : inst.offset + e] == ent.text
            assert ent.text in by_id and ent.type in TYPES
            n += 1
    assert n == 10


@pytest.mark.parametrize("types", [TYPES, ("drug", "problem"), ("labvalue",)])
def test_target_round_trips_to_gold_spans(types: tuple[str, ...]) -> None:
    instances, _ = make_ner_instances(_doc(), types)
    for inst in instances:
        target = target_text(inst)
        answer = json.loads(target)
        assert list(answer) == [t for t in types if t in answer]  # caller's type order
        parsed = parse_entities(target, inst.entity_types)
        assert not parsed.malformed and parsed.unknown_types == 0
        spans, dropped = align_predictions(parsed.entities, inst.text)
        assert dropped == 0
        gold = sorted((g.type, *g.spans[0]) for g in inst.entities)
        assert sorted(spans) == gold
        if not inst.entities:
            assert target == "{}"


def test_target_format() -> None:
    instances, _ = make_ner_instances(_doc(), TYPES)
    assert target_text(instances[0]) == '{"problem": ["Chest pain", "fever"]}'
    assert target_text(instances[1]) == '{"problem": ["Fever"], "drug": ["aspirin", "aspirin"]}'
    assert target_text(instances[2]) == (
        '{"problem": ["Pain", "chest pain", "pain"], "bodyloc": ["chest"], "labvalue": ["8.2 g/dL"]}'
    )
    assert target_text(instances[3]) == "{}"  # only a test entity, which is not asked


def test_discontiguous_target_is_the_covering_text() -> None:
    text = "Pain in chest and back."
    doc = Document("d", text, [Entity("T1", "problem", ((0, 4), (8, 13)), "Pain chest")])
    (inst,), _ = make_ner_instances(doc, ["problem"])
    assert inst.entities[0].spans == ((0, 4), (8, 13))
    # Joined fragments ("Pain chest") never occur in the sentence; the covering text
    # aligns to the span a strict match needs (first fragment start to last fragment end).
    assert target_text(inst) == '{"problem": ["Pain in chest"]}'
    assert align_predictions(parse_entities(target_text(inst), ["problem"]).entities, text) == (
        [("problem", 0, 13)], 0)


def test_messages() -> None:
    instances, _ = make_ner_instances(_doc(), ("drug", "problem"))
    messages = build_messages(instances[1])
    assert [m["role"] for m in messages] == ["system", "user"]
    user = messages[1]["content"]
    assert user.index("- drug: ") < user.index("- problem: ")
    assert TYPE_DEFINITIONS["drug"] in user and TYPE_DEFINITIONS["problem"] in user
    assert "test" not in user.split("Sentence:")[0].replace("the types above", "")
    assert user.endswith("Sentence: " + instances[1].text)


def test_numbered_list_markers_stay_with_their_item():
    from clinical_ie.segment import split_sentences

    text = "1. Type 2 diabetes - HbA1c 8.2%, poorly controlled.\n2. CKD stage 3. Stable."
    pieces = [text[s:e] for s, e in split_sentences(text)]
    assert pieces == ["1. Type 2 diabetes - HbA1c 8.2%, poorly controlled.", "2. CKD stage 3.", "Stable."]
