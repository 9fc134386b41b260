"""parse_entities survives whatever a small model writes, and never raises."""

from __future__ import annotations

import pytest

from clinical_ie.parsing import MAX_COPIES, parse_entities

ALLOWED = ("problem", "drug")

CASES = [
    # (id, output, expected entities, malformed, unknown types)
    ("valid", '{"problem": ["chest pain", "fever"], "drug": ["aspirin"]}',
     [("problem", "chest pain"), ("problem", "fever"), ("drug", "aspirin")], False, 0),
    ("empty-object", "{}", [], False, 0),
    ("code-fence", '```json\n{"problem": ["chest pain"]}\n```', [("problem", "chest pain")], True, 0),
    ("prose-around", 'Here\'s the answer: {"drug": ["aspirin"]} Hope it\'s right.',
     [("drug", "aspirin")], True, 0),
    ("single-quotes", "{'problem': ['fever']}", [("problem", "fever")], True, 0),
    ("trailing-comma", '{"problem": ["fever", "cough",],}', [("problem", "fever"), ("problem", "cough")], True, 0),
    ("truncated-mid-string", '{"problem": ["chest pain", "fev', [("problem", "chest pain")], True, 0),
    ("truncated-mid-list", '{"problem": ["chest pain", "fever"', [("problem", "chest pain"), ("problem", "fever")], True, 0),
    ("truncated-second-type", '{"problem": ["fever"], "drug": ["asp', [("problem", "fever")], True, 0),
    ("truncated-mid-key", '{"problem": ["fever"], "dr', [("problem", "fever")], True, 0),
    ("string-not-list", '{"problem": "fever"}', [("problem", "fever")], True, 0),
    ("records", '[{"type": "problem", "text": "x"}, {"type": "drug", "text": "y"}]',
     [("problem", "x"), ("drug", "y")], True, 0),
    ("wrapped-records", '{"entities": [{"type": "drug", "text": "y"}]}', [("drug", "y")], True, 0),
    ("non-string-items", '{"problem": [1, null, "x", true, {"text": "y"}]}',
     [("problem", "1"), ("problem", "x"), ("problem", "y")], True, 0),
    ("wrong-types", '{"problem": ["fever"], "test": ["CT", "MRI"], "Drug ": ["aspirin"]}',
     [("problem", "fever"), ("drug", "aspirin")], False, 2),
    ("case-insensitive-type", '{"PROBLEM": ["fever"]}', [("problem", "fever")], False, 0),
    ("apostrophe-in-value", '{"problem": ["patient\'s pain"]}', [("problem", "patient's pain")], False, 0),
    ("two-objects", '{"problem": ["x"]}{"drug": ["y"]}', [("problem", "x"), ("drug", "y")], True, 0),
    ("empty-output", "", [], True, 0),
    ("whitespace", "  \n ", [], True, 0),
    ("garbage", "no entities here", [], True, 0),
    ("garbage-brackets", "}{ ]] :: ,,", [], True, 0),
    ("json-null", "null", [], True, 0),
    ("json-list-of-strings", '["fever"]', [], True, 0),
    ("json-number", "42", [], True, 0),
]


@pytest.mark.parametrize(
    "output,entities,malformed,unknown", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_parse_cases(output: str, entities: list, malformed: bool, unknown: int) -> None:
    parsed = parse_entities(output, ALLOWED)
    assert parsed.entities == entities
    assert parsed.malformed is malformed
    assert parsed.unknown_types == unknown


def test_repetition_loop_is_capped() -> None:
    looping = '{"problem": [' + ", ".join(['"fever"'] * 500)  # truncated mid-loop
    parsed = parse_entities(looping, ALLOWED)
    assert parsed.entities == [("problem", "fever")] * MAX_COPIES
    assert parsed.malformed


def test_repeated_whole_answer_is_capped() -> None:
    parsed = parse_entities('{"problem": ["fever"]}\n' * 100, ALLOWED)
    assert 1 <= len(parsed.entities) <= MAX_COPIES
    assert set(parsed.entities) == {("problem", "fever")}


@pytest.mark.parametrize(
    "output", [None, 3, "{" * 1000, "[" * 1000 + '"x"', '{"problem": ' * 200, "\x00\xff", '"\\']
)
def test_never_raises(output) -> None:
    parsed = parse_entities(output, ALLOWED)
    assert isinstance(parsed.entities, list)
