"""Label-mapping presets: loading, validation and applying them to documents."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_loaders.document import Attribute, Document, Entity, Group, Relation
from data_loaders.mapping import (
    ATTRIBUTE_TARGET_DROPPED,
    ENTITY_TYPE_UNMAPPED,
    FORMATS,
    GROUP_MEMBER_DROPPED,
    RELATION_ARGUMENT_DROPPED,
    RELATION_NOT_MAIN_MODIFIER,
    RELATION_TYPE_NOT_DECLARED,
    RELATION_TYPE_UNMAPPED,
    MappingStats,
    apply_preset,
    available_presets,
    load_preset,
    narrow_preset,
)
from data_loaders.schema import ENTITY_TYPES

BUILT_IN = ["ade", "chia", "ddi", "i2b2_2010", "maccrobat", "n2c2_2018"]


def _ent(ent_id: str, ent_type: str, start: int, end: int) -> Entity:
    return Entity(ent_id, ent_type, ((start, end),), "x" * (end - start))


def _maccrobat_doc() -> Document:
    return Document(
        "case-1", "x" * 100,
        entities=[
            _ent("T1", "Sign_symptom", 0, 5), _ent("T2", "Severity", 6, 10),
            _ent("T3", "Medication", 11, 20), _ent("T4", "Detailed_description", 21, 30),
            _ent("T5", "Lab_value", 31, 35), _ent("T6", "Diagnostic_procedure", 36, 40),
            _ent("T7", "Biological_structure", 41, 45),
        ],
        relations=[
            Relation("R1", "MODIFY", "T2", "T1"),  # modifier first: reordered
            Relation("R2", "MODIFY", "T6", "T5"),  # main first: kept in order
            Relation("R3", "CAUSE", "T3", "T1"),
            Relation("R4", "MODIFY", "T4", "T1"),  # Detailed_description is unmapped
            Relation("R5", "BEFORE", "T3", "T6"),  # BEFORE is unmapped
            Relation("R6", "MODIFY", "T1", "T6"),  # two main entities
            Relation("R7", "MODIFY", "T7", "T2"),  # two modifiers
        ],
        attributes=[Attribute("A1", "POLARITY", "T1", "NEG"),
                    Attribute("A2", "POLARITY", "T4", "NEG")],
        groups=[Group("*1", "OVERLAP", ("T1", "T3")), Group("*2", "OVERLAP", ("T1", "T4"))],
        source_split="train",
    )


def test_builtin_presets_load_and_are_consistent() -> None:
    assert available_presets() == BUILT_IN
    for name in BUILT_IN:
        preset = load_preset(name)
        assert preset.name == name and preset.format in FORMATS
        assert set(preset.entity_map.values()) == set(preset.entity_types)
        assert set(preset.entity_types) <= set(ENTITY_TYPES)
    assert load_preset("ade").score_by == "relations-and-entity-recall"
    assert load_preset("maccrobat").score_by is None
    assert load_preset("chia").strict is False
    assert load_preset("ddi").source_splits == {"Train": "train", "Test": "test"}


def test_modifier_relations_are_typed_and_reordered_and_drops_counted() -> None:
    stats = MappingStats()
    doc = apply_preset(_maccrobat_doc(), load_preset("maccrobat"), stats)
    types = {e.id: e.type for e in doc.entities}
    assert types == {"T1": "problem", "T2": "severity", "T3": "drug", "T5": "labvalue",
                     "T6": "test", "T7": "bodyloc"}
    assert doc.relations == [
        Relation("R1", "severity", "T1", "T2"),
        Relation("R2", "labvalue", "T6", "T5"),
        Relation("R3", "causes", "T3", "T1"),
    ]
    assert doc.attributes == [Attribute("A1", "POLARITY", "T1", "NEG")]
    assert doc.groups == [Group("*1", "OVERLAP", ("T1", "T3"))]
    assert doc.source_split == "train" and doc.text == "x" * 100
    assert stats.dropped == {
        ENTITY_TYPE_UNMAPPED: 1, RELATION_ARGUMENT_DROPPED: 1, RELATION_TYPE_UNMAPPED: 1,
        RELATION_NOT_MAIN_MODIFIER: 2, ATTRIBUTE_TARGET_DROPPED: 1, GROUP_MEMBER_DROPPED: 1,
    }
    assert stats.dropped_entity_types == {"Detailed_description": 1}
    assert stats.dropped_relation_types == {"BEFORE": 1}
    assert (stats.entities, stats.relations, stats.attributes, stats.groups) == (6, 3, 1, 1)
    # The input is left alone.
    assert _maccrobat_doc().entities[0].type == "Sign_symptom"


def test_n2c2_reverses_reason_and_ade_so_the_drug_comes_first() -> None:
    doc = Document("n", "x" * 40, entities=[
        _ent("T1", "Drug", 0, 5), _ent("T2", "Strength", 6, 10), _ent("T3", "ADE", 11, 15),
        _ent("T4", "Reason", 16, 20)],
        relations=[Relation("R1", "Strength-Drug", "T2", "T1"),
                   Relation("R2", "ADE-Drug", "T3", "T1"),
                   Relation("R3", "Reason-Drug", "T4", "T1")])
    mapped = apply_preset(doc, load_preset("n2c2_2018"))
    assert mapped.relations == [Relation("R1", "strength", "T1", "T2"),
                                Relation("R2", "causes", "T1", "T3"),
                                Relation("R3", "reason", "T1", "T4")]


def test_user_toml_preset_and_narrowing(tmp_path: Path) -> None:
    path = tmp_path / "my_site.toml"
    path.write_text(
        'format = "jsonl"\n'
        'entity_types = ["problem", "drug", "dosage"]\n'
        'relation_types = ["dosage", "treats"]\n'
        '[entity_map]\nDisease = "problem"\nMed = "drug"\nDose = "dosage"\n'
        '[relation_map]\nhas_dose = "@modifier"\ntreats = "treats"\n',
        encoding="utf-8",
    )
    preset = load_preset(path)
    assert preset.name == "my_site" and preset.path == path and preset.score_by is None
    assert load_preset(str(path)).entity_map == preset.entity_map
    doc = Document("d", "x" * 30, entities=[
        _ent("T1", "Med", 0, 5), _ent("T2", "Dose", 6, 10), _ent("T3", "Disease", 11, 15)],
        relations=[Relation("R1", "has_dose", "T2", "T1"), Relation("R2", "treats", "T1", "T3")])
    assert apply_preset(doc, preset).relations == [Relation("R1", "dosage", "T1", "T2"),
                                                   Relation("R2", "treats", "T1", "T3")]
    # A site annotating less: the modifier relation goes with its modifier type.
    narrow = narrow_preset(preset, entity_types=("problem", "drug"))
    assert narrow.relation_types == ("treats",) and "Dose" not in narrow.entity_map
    stats = MappingStats()
    mapped = apply_preset(doc, narrow, stats)
    assert [e.id for e in mapped.entities] == ["T1", "T3"]
    assert mapped.relations == [Relation("R2", "treats", "T1", "T3")]
    assert stats.dropped == {ENTITY_TYPE_UNMAPPED: 1, RELATION_ARGUMENT_DROPPED: 1}
    stats = MappingStats()
    only_treats = narrow_preset(preset, relation_types=("treats",))
    assert apply_preset(doc, only_treats, stats).relations == [
        Relation("R2", "treats", "T1", "T3")]
    assert stats.dropped == {RELATION_TYPE_NOT_DECLARED: 1}
    with pytest.raises(ValueError, match=r"site.json: key 'entity_types' lists \['test'\]"):
        narrow_preset(preset, entity_types=("test",), where="site.json")
    with pytest.raises(ValueError, match=r"key 'relation_types' lists \['dosage'\], whose"):
        narrow_preset(preset, entity_types=("drug",), relation_types=("dosage",))


_GOOD = (
    'format = "brat"\nentity_types = ["problem", "severity"]\nrelation_types = ["severity"]\n'
    '[entity_map]\nSymptom = "problem"\nSev = "severity"\n[relation_map]\nMOD = "@modifier"\n'
)


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ("colour = 1\n" + _GOOD, "colour", "unknown key"),
        (_GOOD.replace('"brat"', '"xml"'), "format", "expected one of ['brat'"),
        (_GOOD.replace('format = "brat"\n', ""), "format", "expected one of"),
        (_GOOD.replace('Sev = "severity"', 'Sev = "grade"'), "entity_map.Sev",
         "maps to 'grade', which 'entity_types'"),
        (_GOOD.replace('"problem", "severity"]', '"problem", "severity", "sign"]'),
         "entity_types", "'sign' is not a type of the common schema"),
        (_GOOD.replace('"problem", "severity"]', '"problem", "severity", "drug"]'),
         "entity_types", "lists ['drug'], which no entry of 'entity_map' produces"),
        (_GOOD.replace('MOD = "@modifier"', 'MOD = "@modifier"\nCAUSE = "causes"'),
         "relation_map.CAUSE", "maps to 'causes', which 'relation_types'"),
        (_GOOD.replace('relation_types = ["severity"]', 'relation_types = ["bodyloc"]'),
         "relation_types", "lists 'bodyloc', which no entry of 'relation_map' produces"),
        (_GOOD.replace('relation_types = ["severity"]', 'relation_types = "severity"'),
         "relation_types", "expected a list"),
        (_GOOD.replace('relation_types = ["severity"]\n', ""), "relation_types", "missing"),
        ('score_by = "f1"\n' + _GOOD, "score_by", "expected one of"),
        ('strict = "no"\n' + _GOOD, "strict", "expected true or false"),
        ('reverse_relations = ["MOD"]\n' + _GOOD, "reverse_relations", "maps to '@modifier'"),
        (_GOOD.replace('Sev = "severity"', 'Sev = "severity"\nOther = "a b"'),
         "entity_map.Other", "without whitespace"),
        (_GOOD.replace('entity_types = ["problem", "severity"]', 'entity_types = []')
         .replace('Symptom = "problem"\nSev = "severity"\n', ""), "entity_types", "is empty"),
    ],
)
def test_bad_preset_names_file_and_key(tmp_path: Path, text: str, key: str, expected: str
                                       ) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError) as info:
        load_preset(path)
    assert str(info.value).startswith(f"{path}: key {key!r}: ")
    assert expected in str(info.value)


def test_preset_lookup_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown preset 'macrobat'; built-in presets are "
                                         r"\['ade', 'chia'"):
        load_preset("macrobat")
    with pytest.raises(FileNotFoundError, match="nowhere.toml"):
        load_preset(tmp_path / "nowhere.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("format = \n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken.toml: invalid TOML: .*line 1"):
        load_preset(broken)
