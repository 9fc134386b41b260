"""Relation extraction with given entities (data.re-mode): instances list the sentence's
entities, answers are pairs of their numbers, evaluation scores the relation step on gold
entities and the pipeline on predicted ones, extraction chains entities then relations."""

from __future__ import annotations

import re

import pytest

import clinical_ie.evaluate as evaluate_module
import clinical_ie.extract as extract_module
from clinical_ie.evaluate import METRIC_KEYS, InstanceEvaluator, evaluation_from_outputs, task_instances
from clinical_ie.instances import (
    DEFAULT_RE_MODE,
    END_TO_END,
    GIVEN_ENTITIES,
    RE_MODES,
    GoldEntity,
    Instance,
    make_instances,
    make_re_instances,
)
from clinical_ie.parsing import parse_numbered_relations
from clinical_ie.prompt import PREFIX_END, build_messages, target_text
from clinical_ie.scoring import PRF, RelationScorer
from data_loaders.document import Document, Entity, Relation
from settings.config import KEYS, ConfigError, validate
from support.annotate import entity

TEXT = ("Aspirin 81 mg daily was started for pain in chest and back. "
        "Later she took aspirin 325 mg. No rash.")
SITE_TYPES = ("drug", "dosage", "problem")  # frequency and bodyloc are not the site's
RELATION_TYPES = ("dosage", "frequency", "bodyloc")
S1, S2, S3 = "Aspirin 81 mg daily was started for pain in chest and back.", "Later she took aspirin 325 mg.", "No rash."


def _doc() -> Document:
    entities = [
        entity(TEXT, "T1", "drug", "Aspirin"),
        entity(TEXT, "T2", "dosage", "81 mg"),
        entity(TEXT, "T3", "frequency", "daily"),  # not a site type, but a relation argument
        entity(TEXT, "T4", "problem", "pain", "back"),  # discontiguous: "pain ... back"
        entity(TEXT, "T5", "bodyloc", "back"),  # not a site type, but a relation argument
        entity(TEXT, "T6", "bodyloc", "chest"),  # neither: not listed
        entity(TEXT, "T7", "drug", "aspirin"),
        entity(TEXT, "T8", "dosage", "325 mg"),
        entity(TEXT, "T9", "problem", "rash"),
    ]
    relations = [
        Relation("R1", "dosage", "T1", "T2"),
        Relation("R2", "frequency", "T1", "T3"),
        Relation("R3", "bodyloc", "T4", "T5"),
        Relation("R4", "dosage", "T7", "T8"),
    ]
    return Document("doc1", TEXT, entities, relations)


def _re(re_mode: str = GIVEN_ENTITIES) -> list[Instance]:
    return make_re_instances(_doc(), RELATION_TYPES, SITE_TYPES, re_mode=re_mode)[0]


def _listed(inst: Instance) -> list[tuple[str, str]]:
    return [(e.text, e.type) for e in inst.entities]


# --- instances -----------------------------------------------------------------------------

def test_default_mode_is_end_to_end_everywhere() -> None:
    assert DEFAULT_RE_MODE == END_TO_END and RE_MODES == (GIVEN_ENTITIES, END_TO_END)
    assert KEYS["data.re-mode"].default == DEFAULT_RE_MODE
    assert not any(i.given_entities for i in make_re_instances(_doc(), RELATION_TYPES, SITE_TYPES)[0])


def test_given_entity_instances_list_site_entities_and_every_argument() -> None:
    first, second, third = _re()
    assert [i.text for i in (first, second, third)] == [S1, S2, S3]
    assert all(i.given_entities and i.task == "re" for i in (first, second, third))
    # In order of appearance; arguments outside the site's types are listed, "chest" is not.
    assert _listed(first) == [("Aspirin", "drug"), ("81 mg", "dosage"), ("daily", "frequency"),
                              ("pain back", "problem"), ("back", "bodyloc")]
    assert first.entities[3].spans == ((36, 40), (54, 58))
    assert _listed(second) == [("aspirin", "drug"), ("325 mg", "dosage")]
    assert _listed(third) == [("rash", "problem")] and third.relations == ()
    # The gold relations are the same as end to end; only the entity list is new.
    e2e = _re(END_TO_END)
    assert [i.relations for i in e2e] == [i.relations for i in (first, second, third)]
    assert all(not i.given_entities and i.entities == () for i in e2e)


def test_unknown_re_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="joint.*given-entities.*end-to-end"):
        make_re_instances(_doc(), RELATION_TYPES, SITE_TYPES, re_mode="joint")
    with pytest.raises(ValueError, match="joint"):
        make_instances(_doc(), SITE_TYPES, RELATION_TYPES, tasks=("ner",), re_mode="joint")


# --- prompt and target ---------------------------------------------------------------------

def test_given_entity_prompt_lists_entities_after_the_sentence() -> None:
    first, _, third = _re()
    system, user = (m["content"] for m in build_messages(first))
    assert "relations" in system
    assert user.endswith(f"Sentence: {S1}\nEntities: 1. Aspirin (drug); 2. 81 mg (dosage); "
                         "3. daily (frequency); 4. pain in chest and back (problem); 5. back (bodyloc)")
    assert "- dosage: a drug and its dosage" in user and "numbers of entities" in user
    assert build_messages(third)[1]["content"].endswith("Entities: 1. rash (problem)")
    empty = Instance("d", 0, "x", (), (), task="re", relation_types=RELATION_TYPES, given_entities=True)
    assert build_messages(empty)[1]["content"].endswith("Sentence: x\nEntities: none")


@pytest.mark.parametrize("re_mode", RE_MODES)
def test_instruction_before_the_sentence_is_shared(re_mode: str) -> None:
    docs = [_doc(), Document("doc2", "Ibuprofen 200 mg.", [
        Entity("T1", "drug", ((0, 9),), "Ibuprofen"), Entity("T2", "dosage", ((10, 16),), "200 mg")],
        [Relation("R1", "dosage", "T1", "T2")])]
    instances = [i for i in task_instances(docs, SITE_TYPES, RELATION_TYPES, re_mode=re_mode) if i.task == "re"]
    prefixes = set()
    for inst in instances:
        system, user = (m["content"] for m in build_messages(inst))
        head, sep, tail = user.partition(PREFIX_END)
        assert sep and tail.startswith(f" {inst.text}")  # everything per instance after the marker
        prefixes.add((system, head))
    assert len(instances) == 4 and len(prefixes) == 1


def test_given_entity_target_is_pairs_of_numbers() -> None:
    first, second, third = _re()
    assert target_text(first) == '{"dosage":[[1,2]],"frequency":[[1,3]],"bodyloc":[[4,5]]}'
    assert target_text(second) == '{"dosage":[[1,2]]}'
    assert target_text(third) == "{}"
    # Shorter than copying the argument texts: fewer answer tokens to train on.
    assert len(target_text(first)) < len(target_text(_re(END_TO_END)[0]))


def test_given_entity_target_round_trips_to_gold() -> None:
    for inst in _re():
        scorer = RelationScorer()
        scorer.add(inst, target_text(inst))
        res = scorer.result()
        assert res.strict == PRF(len(inst.relations), 0, 0) and res.lenient == res.strict
        assert res.malformed == 0 and res.unaligned == 0


# --- parsing -------------------------------------------------------------------------------

LISTED = ("Aspirin", "81 mg", "daily")

NUMBERED_CASES = [
    # (id, output, relations, malformed, unresolved)
    ("clean", '{"dosage":[[1,2]],"frequency":[[1,3]]}', [("dosage", 0, 1), ("frequency", 0, 2)], False, {}),
    ("spaces", '{"dosage": [[1, 2]]}', [("dosage", 0, 1)], False, {}),
    ("empty", "{}", [], False, {}),
    ("out-of-range", '{"dosage":[[1,2]],"frequency":[[1,4]]}', [("dosage", 0, 1)], False, {"frequency": 1}),
    ("zero-and-negative", '{"dosage":[[0,2],[-1,2]]}', [], False, {"dosage": 2}),
    ("numbers-as-strings", '{"dosage":[["1","#2"]]}', [("dosage", 0, 1)], True, {}),
    ("texts-instead", '{"dosage":[["aspirin","81 mg"]],"frequency":[["Aspirin","weekly"]]}',
     [("dosage", 0, 1)], True, {"frequency": 1}),
    ("truncated-mid-number", '{"dosage":[[1,2],[3,1', [("dosage", 0, 1)], True, {}),
    ("truncated-after-pair", '{"dosage":[[1,2],[3,1]', [("dosage", 0, 1), ("dosage", 2, 0)], True, {}),
    ("truncated-mid-key", '{"dosage":[[1,2]],"freq', [("dosage", 0, 1)], True, {}),
    ("one-number", '{"dosage":[[1]]}', [], True, {}),
    ("bare-pair", '{"dosage":[1,2]}', [("dosage", 0, 1)], True, {}),
    ("records", '[{"type":"dosage","arg1":1,"arg2":2}]', [("dosage", 0, 1)], True, {}),
    ("float", '{"dosage":[[1.0,2]]}', [("dosage", 0, 1)], True, {}),
    ("booleans", '{"dosage":[[true,2]]}', [], True, {}),
    ("code-fence", '```json\n{"dosage":[[1,2]]}\n```', [("dosage", 0, 1)], True, {}),
    ("garbage", "no relations", [], True, {}),
]


@pytest.mark.parametrize("output,relations,malformed,unresolved", [c[1:] for c in NUMBERED_CASES],
                         ids=[c[0] for c in NUMBERED_CASES])
def test_parse_numbered_relations(output, relations, malformed, unresolved) -> None:
    parsed = parse_numbered_relations(output, RELATION_TYPES, LISTED)
    assert parsed.relations == relations
    assert parsed.malformed is malformed
    assert parsed.unresolved == unresolved


def test_parse_numbered_relations_counts_unknown_types_and_never_raises() -> None:
    assert parse_numbered_relations('{"route":[[1,2],[2,3]]}', RELATION_TYPES, LISTED).unknown_types == 2
    for output in (None, 3, "{" * 1000, '{"dosage": ' * 200, "\x00\xff", '{"dosage":[[99999999999,1]]}'):
        parsed = parse_numbered_relations(output, RELATION_TYPES, LISTED)
        assert isinstance(parsed.relations, list)
    assert parse_numbered_relations('{"dosage":[[1,2]]}', RELATION_TYPES, ()).unresolved == {"dosage": 1}


# --- scoring: gold entities and predicted ones ---------------------------------------------

def test_scores_through_gold_entities() -> None:
    first = _re()[0]
    scorer = RelationScorer()
    # dosage right; frequency reversed; bodyloc numbered out of the list.
    scorer.add(first, '{"dosage":[[1,2]],"frequency":[[3,1]],"bodyloc":[[4,9]]}')
    res = scorer.result()
    assert res.strict == PRF(1, 2, 2) and res.lenient == PRF(1, 2, 2)
    assert res.unaligned == 1 and res.malformed == 0
    assert res.per_type["bodyloc"] == (PRF(0, 1, 1), PRF(0, 1, 1))


def test_scores_through_predicted_entities_strict_and_lenient() -> None:
    first = _re()[0]
    s = S1.index
    predicted = (  # as entity extraction found them: "81" for "81 mg", "pain" for "pain ... back"
        GoldEntity("drug", ((0, 7),), "Aspirin"),
        GoldEntity("dosage", ((8, 10),), "81"),
        GoldEntity("problem", ((s("pain"), s("pain") + 4),), "pain"),
        GoldEntity("problem", ((s("back"), s("back") + 4),), "back"),
        GoldEntity("drug", ((s("started"), s("started") + 7),), "started"),
    )
    pipeline = Instance(first.doc_id, first.offset, first.text, first.entity_types, predicted, task="re",
                        relation_types=first.relation_types, relations=first.relations, given_entities=True)
    scorer = RelationScorer()
    # dosage: overlapping argument (lenient only); bodyloc: partial first argument, exact
    # second (lenient only); dosage from a spurious entity: wrong under both.
    scorer.add(pipeline, '{"dosage":[[1,2],[5,2]],"bodyloc":[[3,4]]}')
    res = scorer.result()
    assert res.strict == PRF(0, 3, 3)
    assert res.lenient == PRF(2, 1, 1)


# --- evaluation ----------------------------------------------------------------------------

NER_ANSWERS = {  # entity extraction as a model might do it: "81" short of "81 mg"
    S1: '{"drug": ["Aspirin"], "dosage": ["81"]}',
    S2: '{"drug": ["aspirin"], "dosage": ["325 mg"]}',
    S3: '{"problem": ["rash"]}',
}


class FakeGenerator:
    """Answers entity prompts from NER_ANSWERS and every relation prompt with one pair;
    records the prompts of each call."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, model, tokenizer, prompts, max_new_tokens, batch_size, description, prefix_end=None,
                 constraints=None):
        assert prefix_end == PREFIX_END and constraints is None  # eval.constrained is off by default
        users = [m[1]["content"] for m in prompts]
        self.calls.append(users)
        return [self._answer(u) for u in users]

    @staticmethod
    def _answer(user: str) -> str:
        sentence = user.split("Sentence: ", 1)[1].split("\nEntities: ")[0]
        if user.startswith("Entity types"):
            return NER_ANSWERS[sentence]
        if "\nEntities: " in user:
            return '{"dosage":[[1,2]]}'
        return '{"dosage": [["Aspirin", "81 mg"], ["aspirin", "325 mg"]]}'  # end to end


@pytest.fixture()
def fake_generation(monkeypatch):
    fake = FakeGenerator()
    monkeypatch.setattr(evaluate_module, "generate_answers", fake)
    monkeypatch.setattr(evaluate_module, "mean_answer_loss", lambda *args, **kwargs: 0.5)
    return fake


@pytest.fixture(scope="module")
def tokenizer(default_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model_dir)


@pytest.mark.parametrize("tasks", [("ner", "re"), ("re",)])
def test_evaluate_scores_gold_entities_and_the_pipeline(fake_generation, tokenizer, tasks) -> None:
    instances = task_instances([_doc()], SITE_TYPES, RELATION_TYPES, tasks, GIVEN_ENTITIES)
    evaluation = InstanceEvaluator(tokenizer, instances, 1024).evaluate(None, "test")
    metrics = evaluation.to_metrics()
    assert tuple(metrics) == METRIC_KEYS and metrics["re-instances"] == 3
    # First pass: the instances, plus entity prompts for sentences the set lacks (none
    # lacking with tasks ner,re); second pass: relations among predicted entities, only
    # where two or more were found (not "No rash.").
    assert len(fake_generation.calls) == 2
    assert len(fake_generation.calls[0]) == 6
    assert [u.split("\nEntities: ")[1] for u in fake_generation.calls[1]] == [
        "1. Aspirin (drug); 2. 81 (dosage)", "1. aspirin (drug); 2. 325 mg (dosage)"]
    # With gold entities: two dosages right; frequency and bodyloc missed; "[[1,2]]" for
    # the one-entity sentence names no listed entity (unaligned).
    gold = evaluation.relations
    assert gold.strict == PRF(2, 1, 2) and gold.unaligned == 1
    # Pipeline: "81" overlaps "81 mg": lenient only.
    e2e = evaluation.relations_e2e
    assert e2e.strict == PRF(1, 1, 3) and e2e.lenient == PRF(2, 0, 2) and e2e.unaligned == 0
    assert metrics["re-e2e-strict-f1"] == pytest.approx(e2e.strict.f1)
    assert metrics["re-e2e-lenient-recall"] == pytest.approx(0.5)
    text = evaluation.to_markdown()
    assert "### Relations with gold entities (3 instances)" in text
    assert "### Relations end to end (entities predicted, then relations) (3 instances)" in text


def test_evaluate_without_the_pipeline_pass(fake_generation, tokenizer) -> None:
    instances = task_instances([_doc()], SITE_TYPES, RELATION_TYPES, ("ner", "re"), GIVEN_ENTITIES)
    metrics = InstanceEvaluator(tokenizer, instances, 1024).evaluate(None, end_to_end=False).to_metrics()
    assert len(fake_generation.calls) == 1 and tuple(metrics) == METRIC_KEYS
    assert metrics["re-strict-recall"] == 0.5 and metrics["re-e2e-strict-recall"] == 0.0


def test_end_to_end_mode_reports_its_scores_under_both_keys(fake_generation, tokenizer) -> None:
    instances = task_instances([_doc()], SITE_TYPES, RELATION_TYPES, ("ner", "re"), END_TO_END)
    evaluation = InstanceEvaluator(tokenizer, instances, 1024).evaluate(None)
    metrics = evaluation.to_metrics()
    assert len(fake_generation.calls) == 1  # one pass, as before given entities existed
    assert tuple(metrics) == METRIC_KEYS
    assert metrics["re-strict-recall"] == 0.5
    assert {k: v for k, v in metrics.items() if k.startswith("re-e2e-")} == \
        {k.replace("re-", "re-e2e-", 1): v for k, v in metrics.items()
         if k.startswith("re-") and not k.startswith("re-e2e-") and k != "re-instances"}
    assert "### Relations end to end (3 instances)" in evaluation.to_markdown()


@pytest.mark.parametrize("re_mode", RE_MODES)
@pytest.mark.parametrize("tasks", [("ner",), ("re",), ("ner", "re")])
def test_metric_keys_identical_in_both_modes(re_mode: str, tasks) -> None:
    instances = task_instances([_doc()], SITE_TYPES, RELATION_TYPES, tasks, re_mode)
    for outputs in ([target_text(i) for i in instances], ["?"] * len(instances)):
        metrics = evaluation_from_outputs(instances, outputs, 0.1).to_metrics()
        assert tuple(metrics) == METRIC_KEYS
    perfect = evaluation_from_outputs(instances, [target_text(i) for i in instances], 0.1).to_metrics()
    assert perfect["re-strict-f1"] == (1.0 if "re" in tasks else 0.0)
    # Outputs alone cannot run the pipeline for given entities: 0.0 (not measured).
    assert perfect["re-e2e-strict-f1"] == (1.0 if "re" in tasks and re_mode == END_TO_END else 0.0)


# --- extraction ----------------------------------------------------------------------------

def test_extract_chains_entities_then_relations(monkeypatch) -> None:
    fake = FakeGenerator()
    monkeypatch.setattr(extract_module, "generate_answers", fake)
    result = extract_module.extract(None, None, TEXT, SITE_TYPES, RELATION_TYPES, re_mode=GIVEN_ENTITIES)
    assert len(fake.calls) == 2
    assert all(u.startswith("Entity types") for u in fake.calls[0]) and len(fake.calls[0]) == 3
    assert len(fake.calls[1]) == 2  # "No rash." has one entity: no relation asked
    got = [(r.type, r.arg1.type, r.arg1.text, r.arg1.start, r.arg2.type, r.arg2.text, r.arg2.start)
           for r in result.relations]
    offset = TEXT.index(S2)
    assert got == [("dosage", "drug", "Aspirin", 0, "dosage", "81", 8),
                   ("dosage", "drug", "aspirin", offset + 15, "dosage", "325 mg", offset + 23)]
    assert [(e.type, e.text) for e in result.entities] == [
        ("drug", "Aspirin"), ("dosage", "81"), ("drug", "aspirin"), ("dosage", "325 mg"), ("problem", "rash")]
    assert result.not_in_text == 0
    # End to end: one pass, arguments copied.
    fake.calls.clear()
    e2e = extract_module.extract(None, None, TEXT, SITE_TYPES, RELATION_TYPES, re_mode=END_TO_END)
    assert len(fake.calls) == 1 and len(fake.calls[0]) == 6
    assert [(r.arg1.text, r.arg2.text) for r in e2e.relations] == [("Aspirin", "81 mg"), ("aspirin", "325 mg")]


def test_extract_counts_numbers_naming_no_entity(monkeypatch) -> None:
    def fake(model, tokenizer, prompts, *args, **kwargs):
        return ['{"drug": ["Aspirin"], "dosage": ["81 mg"]}' if m[1]["content"].startswith("Entity")
                else '{"dosage":[[1,2],[1,7]]}' for m in prompts]

    monkeypatch.setattr(extract_module, "generate_answers", fake)
    result = extract_module.extract(None, None, S1, ["drug", "dosage"], ["dosage"], re_mode=GIVEN_ENTITIES)
    assert [(r.arg1.text, r.arg2.text) for r in result.relations] == [("Aspirin", "81 mg")]
    assert result.not_in_text == 1
    with pytest.raises(ValueError, match="need entity_types"):
        extract_module.extract(None, None, S1, [], ["dosage"], re_mode=GIVEN_ENTITIES)
    with pytest.raises(ValueError, match="re_mode"):
        extract_module.extract(None, None, S1, ["drug"], ["dosage"], re_mode="both")


# --- configuration -------------------------------------------------------------------------

def test_config_key_names_the_valid_values() -> None:
    assert validate({}).data.re_mode == DEFAULT_RE_MODE
    assert validate({"data.re-mode": "end-to-end"}).data.re_mode == END_TO_END
    with pytest.raises(ConfigError, match=re.escape("data.re-mode: 'joint' is not one of "
                                                    "['given-entities', 'end-to-end']")):
        validate({"data.re-mode": "joint"})
    with pytest.raises(ConfigError, match="data.re-mode: expected str"):
        validate({"data.re-mode": 1})

