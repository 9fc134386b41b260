"""Relation extraction: instances, prompt/target round trip, parsing, alignment, strict and
lenient relation scoring, and metric keys identical whatever tasks a site has."""

from __future__ import annotations

import json

import pytest

from clinical_ie.align import align_relations
from clinical_ie.evaluate import (
    METRIC_KEYS,
    SCORE_BY_ENTITY_RECALL,
    Evaluation,
    InstanceEvaluator,
    evaluation_from_outputs,
    stable_subset,
    task_instances,
)
from clinical_ie.instances import (
    END_TO_END,
    GIVEN_ENTITIES,
    GoldEntity,
    GoldRelation,
    Instance,
    make_instances,
    make_ner_instances,
    make_re_instances,
)
from clinical_ie.parsing import MAX_COPIES, parse_relations
from clinical_ie.prompt import build_messages, target_text
from clinical_ie.scoring import PRF, RelationScorer
from data_loaders.document import Document, Entity, Relation
from support.annotate import entity

TEXT = (
    "Aspirin 81 mg daily was started for pain in chest and back. "
    "Penicillin was given and a rash followed. It was stopped.\n"
    "Later she took aspirin 325 mg."
)
ENTITY_TYPES = ("drug", "problem", "dosage", "frequency", "bodyloc")
RELATION_TYPES = ("dosage", "frequency", "bodyloc", "causes")


def _doc() -> Document:
    entities = [
        entity(TEXT, "T1", "drug", "Aspirin"),
        entity(TEXT, "T2", "dosage", "81 mg"),
        entity(TEXT, "T3", "frequency", "daily"),
        entity(TEXT, "T4", "problem", "pain", "back"),  # discontiguous: "pain ... back"
        entity(TEXT, "T5", "bodyloc", "back"),
        entity(TEXT, "T6", "drug", "Penicillin"),
        entity(TEXT, "T7", "problem", "rash"),
        entity(TEXT, "T8", "drug", "aspirin"),
        entity(TEXT, "T9", "dosage", "325 mg"),
    ]
    relations = [
        Relation("R1", "dosage", "T1", "T2"),
        Relation("R2", "frequency", "T1", "T3"),
        Relation("R3", "bodyloc", "T4", "T5"),
        Relation("R4", "causes", "T6", "T7"),
        Relation("R5", "causes", "T1", "T7"),  # crosses a sentence boundary: dropped
        Relation("R6", "dosage", "T8", "T9"),
        Relation("R7", "route", "T8", "T9"),  # a type not asked: ignored, not counted
        Relation("R8", "dosage", "T1", "T2"),  # duplicate annotation of R1
    ]
    return Document("doc1", TEXT, entities, relations)


def _gold(inst: Instance) -> list[tuple[str, tuple[int, int], tuple[int, int]]]:
    return [(r.type, (r.arg1.start, r.arg1.end), (r.arg2.start, r.arg2.end)) for r in inst.relations]


# --- instances -----------------------------------------------------------------------------

def test_re_instances_per_sentence_with_candidates() -> None:
    instances, dropped = make_re_instances(_doc(), RELATION_TYPES, ENTITY_TYPES, re_mode=END_TO_END)
    assert dropped == 1  # R5
    # "It was stopped." has no candidate argument: no instance.
    assert [i.text for i in instances] == [
        "Aspirin 81 mg daily was started for pain in chest and back.",
        "Penicillin was given and a rash followed.",
        "Later she took aspirin 325 mg.",
    ]
    assert all(i.task == "re" and i.relation_types == RELATION_TYPES and i.entities == () for i in instances)
    first, second, third = instances
    assert [(r.type, r.arg1.text, r.arg2.text) for r in first.relations] == [
        ("dosage", "Aspirin", "81 mg"), ("frequency", "Aspirin", "daily"), ("bodyloc", "pain back", "back"),
    ]
    pain = first.relations[2].arg1
    assert pain.spans == ((36, 40), (54, 58)) and first.text[36:40] == "pain" and first.text[54:58] == "back"
    assert [(r.type, r.arg1.text, r.arg2.text) for r in second.relations] == [("causes", "Penicillin", "rash")]
    assert [(r.type, r.arg1.text, r.arg2.text) for r in third.relations] == [("dosage", "aspirin", "325 mg")]
    for inst in instances:
        assert TEXT[inst.offset : inst.offset + len(inst.text)] == inst.text


def test_sentence_with_only_unlisted_entity_types_gets_no_re_instance() -> None:
    instances, _ = make_re_instances(_doc(), ("dosage", "frequency"), ["dosage"])
    assert [i.text.split()[0] for i in instances] == ["Aspirin", "Later"]
    # A sentence with gold relations is always an instance, whatever its arguments' types.
    instances, _ = make_re_instances(_doc(), RELATION_TYPES, ["dosage"])
    assert [i.text.split()[0] for i in instances] == ["Aspirin", "Penicillin", "Later"]
    assert make_re_instances(_doc(), [], ENTITY_TYPES) == ([], 0)


def test_make_instances_mixes_tasks_deterministically() -> None:
    instances, dropped = make_instances(_doc(), ENTITY_TYPES, RELATION_TYPES)
    assert dropped == 1
    assert [(i.task, i.text.split()[0]) for i in instances] == [
        ("ner", "Aspirin"), ("re", "Aspirin"), ("ner", "Penicillin"), ("re", "Penicillin"),
        ("ner", "It"), ("ner", "Later"), ("re", "Later"),
    ]
    assert instances == make_instances(_doc(), ENTITY_TYPES, RELATION_TYPES)[0]
    ner_only, _ = make_instances(_doc(), ENTITY_TYPES, RELATION_TYPES, tasks=("ner",))
    assert ner_only == make_ner_instances(_doc(), ENTITY_TYPES)[0]
    re_only, _ = make_instances(_doc(), ENTITY_TYPES, RELATION_TYPES, tasks=("re",))
    assert re_only == make_re_instances(_doc(), RELATION_TYPES, ENTITY_TYPES)[0]
    assert make_instances(_doc(), ENTITY_TYPES, ())[0] == ner_only
    with pytest.raises(ValueError, match="unknown task"):
        make_instances(_doc(), ENTITY_TYPES, RELATION_TYPES, tasks=("ner", "qa"))
    mixed = task_instances([_doc(), _doc()], ENTITY_TYPES, RELATION_TYPES)
    assert len(mixed) == 14


def test_forced_cut_drops_split_entities_and_their_relations() -> None:
    # No whitespace: the over-long "sentence" is hard-cut every 20 characters.
    text = "x" * 15 + "aspirin81mgdaily" + "y" * 20
    drug = Entity("T1", "drug", ((15, 22),), "aspirin")  # straddles the cut at 20
    dose = Entity("T2", "dosage", ((22, 26),), "81mg")  # inside the second piece
    split = Entity("T3", "frequency", ((18, 23),), "irin8")  # straddles the cut at 20
    doc = Document("long", text, [drug, dose, split],
                   [Relation("R1", "dosage", "T1", "T2"), Relation("R2", "frequency", "T2", "T3")])
    ner, dropped = make_ner_instances(doc, ["drug", "dosage", "frequency"], max_chars=20)
    assert all(len(i.text) <= 20 for i in ner)
    assert "".join(i.text for i in ner) == text
    assert dropped == 2  # T1 and T3
    re_, lost = make_re_instances(doc, ["dosage", "frequency"], ["drug", "dosage", "frequency"], max_chars=20)
    assert lost == 2  # each relation has an argument split by the cut
    assert [(i.offset, i.relations) for i in re_] == [(20, ())]  # only the dose's piece


def test_stable_subset_of_mixed_instances() -> None:
    mixed = task_instances([_doc()], ENTITY_TYPES, RELATION_TYPES)
    subset = stable_subset(mixed, 4)
    assert subset == stable_subset(list(reversed(mixed)), 4)
    assert len(subset) == 4 and all(i in mixed for i in subset)
    order = [(i.offset, i.task) for i in subset]
    assert order == sorted(order, key=lambda x: (x[0], x[1] != "ner"))


# --- prompt and target -----------------------------------------------------------------------

def test_re_prompt_and_target_format() -> None:
    instances, _ = make_re_instances(_doc(), RELATION_TYPES, ENTITY_TYPES, re_mode=END_TO_END)
    messages = build_messages(instances[0])
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "relations" in messages[0]["content"]
    user = messages[1]["content"]
    assert "- dosage: a drug and its dosage" in user
    assert "- causes: a drug or treatment and the problem it causes" in user
    assert user.index("- dosage") < user.index("- frequency") < user.index("- bodyloc") < user.index("- causes")
    assert user.endswith("Sentence: " + instances[0].text)
    assert len(user) < 600  # short prompts: every token costs at every CPU training step
    assert target_text(instances[0]) == (
        '{"dosage": [["Aspirin", "81 mg"]], "frequency": [["Aspirin", "daily"]], '
        '"bodyloc": [["pain in chest and back", "back"]]}'
    )
    assert target_text(instances[1]) == '{"causes": [["Penicillin", "rash"]]}'
    unknown = Instance("d", 0, "x", (), (), task="re", relation_types=("drug-effect",))
    assert "- drug-effect\n" in build_messages(unknown)[1]["content"]
    assert target_text(unknown) == "{}"


def _round_trip(inst: Instance) -> None:
    target = target_text(inst)
    parsed = parse_relations(target, inst.relation_types)
    assert not parsed.malformed and parsed.unknown_types == 0
    aligned, dropped = align_relations(parsed.relations, inst.text)
    assert dropped == 0
    assert sorted(aligned) == sorted(_gold(inst))
    scorer = RelationScorer()
    scorer.add(inst, target)
    res = scorer.result()
    assert res.strict == PRF(len(inst.relations), 0, 0) and res.lenient == res.strict


def test_target_round_trips_to_gold() -> None:
    instances, _ = make_re_instances(_doc(), RELATION_TYPES, ENTITY_TYPES, re_mode=END_TO_END)
    for inst in instances:
        _round_trip(inst)


def test_round_trip_with_repeated_strings() -> None:
    text = ("aspirin 81 mg daily, later aspirin 81 mg daily; then aspirin 81 or 325 mg, "
            "until aspirin was held.")
    def ge(needle: str, k: int) -> GoldEntity:
        start = -1
        for _ in range(k + 1):
            start = text.index(needle, start + 1)
        return GoldEntity("x", ((start, start + len(needle)),), needle)
    rels = (
        GoldRelation("dosage", ge("aspirin", 0), ge("81 mg", 0)),
        GoldRelation("frequency", ge("aspirin", 0), ge("daily", 0)),
        GoldRelation("dosage", ge("aspirin", 1), ge("81 mg", 1)),
        GoldRelation("frequency", ge("aspirin", 1), ge("daily", 1)),
        GoldRelation("dosage", ge("aspirin", 2), ge("81", 2)),  # one drug, two doses
        GoldRelation("dosage", ge("aspirin", 2), ge("325 mg", 0)),
    )
    inst = Instance("d", 0, text, (), (), task="re", relation_types=("dosage", "frequency"), relations=rels)
    _round_trip(inst)


# --- alignment -----------------------------------------------------------------------------

def test_alignment_rules() -> None:
    text = "aspirin was held. Restarted aspirin 81 mg daily."
    aligned, dropped = align_relations(
        [("dosage", "aspirin", "81 mg"),  # the copy nearest its dose, not the first one
         ("frequency", "aspirin", "daily"),  # an argument may take part in several relations
         ("dosage", "aspirin", "81 mg"),  # a second copy takes the next nearest free pair
         ("dosage", "aspirin", "81 mg"),  # a third: no pair left, dropped
         ("dosage", "ibuprofen", "81 mg"),  # not in the text: dropped
         ("dosage", "aspirin", " "),  # empty argument: dropped
         ("route", "ASPIRIN", "81 MG")],  # case-insensitive fallback; types are independent
        text,
    )
    assert dropped == 3
    assert aligned == [
        ("dosage", (28, 35), (36, 41)),
        ("frequency", (28, 35), (42, 47)),
        ("dosage", (0, 7), (36, 41)),
        ("route", (28, 35), (36, 41)),
    ]


def test_alignment_prefers_text_order_on_ties_and_distinct_arguments() -> None:
    text = "x and x"
    aligned, dropped = align_relations([("int", "x", "x")], text)
    assert (aligned, dropped) == ([("int", (0, 1), (6, 7))], 0)


# --- scoring -------------------------------------------------------------------------------

SENT = "Aspirin 81 mg daily; ibuprofen 200 mg caused rash."


def _ent(needle: str) -> GoldEntity:
    s = SENT.index(needle)
    return GoldEntity("x", ((s, s + len(needle)),), needle)


def _scored_instance() -> Instance:
    rels = (
        GoldRelation("dosage", _ent("Aspirin"), _ent("81 mg")),
        GoldRelation("frequency", _ent("Aspirin"), _ent("daily")),
        GoldRelation("dosage", _ent("ibuprofen"), _ent("200 mg")),
        GoldRelation("causes", _ent("ibuprofen"), _ent("rash")),
    )
    return Instance("d", 0, SENT, (), (), task="re", relation_types=("dosage", "frequency", "causes"),
                    relations=rels)


def test_hand_computed_relation_scores() -> None:
    output = json.dumps({
        "dosage": [["Aspirin", "81 mg"],  # strict
                   ["ibuprofen", "200"]],  # second argument overlaps only: lenient
        "frequency": [["Aspirin", "twice daily"]],  # not in the sentence: unaligned, a false positive
        "causes": [["ibuprofen", "rash"],  # strict
                   ["rash", "Aspirin"]],  # no such gold: a false positive
    })
    scorer = RelationScorer()
    scorer.add(_scored_instance(), output)
    res = scorer.result()
    assert res.strict == PRF(2, 3, 2)
    assert res.lenient == PRF(3, 2, 1)
    assert res.strict.precision == pytest.approx(2 / 5)
    assert res.strict.recall == pytest.approx(2 / 4)
    assert res.strict.f1 == pytest.approx(2 * 0.4 * 0.5 / 0.9)
    assert res.lenient.precision == pytest.approx(3 / 5)
    assert res.lenient.recall == pytest.approx(3 / 4)
    assert res.lenient.f1 == pytest.approx(2 * 0.6 * 0.75 / 1.35)
    assert res.per_type["dosage"] == (PRF(1, 1, 1), PRF(2, 0, 0))
    assert res.per_type["frequency"] == (PRF(0, 1, 1), PRF(0, 1, 1))
    assert res.per_type["causes"] == (PRF(1, 1, 0), PRF(1, 1, 0))
    assert res.unaligned == 1 and res.malformed == 0
    metrics = res.to_metrics()
    assert metrics["re-strict-f1"] == pytest.approx(res.strict.f1)
    assert metrics["re-unaligned"] == 1.0
    table = res.to_markdown()
    assert "| dosage | 2 | 2 |" in table and "| **micro** | 4 | 5 |" in table


def test_argument_order_and_type_matter() -> None:
    scorer = RelationScorer()
    scorer.add(_scored_instance(), '{"causes": [["rash", "ibuprofen"]], "dosage": [["Aspirin", "daily"]]}')
    res = scorer.result()
    assert res.strict == PRF(0, 2, 4) and res.lenient == PRF(0, 2, 4)


def test_discontiguous_argument_rules() -> None:
    pain = GoldEntity("problem", ((0, 4), (18, 22)), "pain back")  # "pain in chest and back"
    back = GoldEntity("bodyloc", ((18, 22),), "back")
    gold = [GoldRelation("bodyloc", pain, back)]
    cases = {
        ((0, 22), (18, 22)): (1, 1),  # covers first to last fragment: strict
        ((0, 4), (18, 22)): (0, 1),  # first fragment only: lenient
        ((8, 13), (18, 22)): (0, 0),  # only the gap: no match
        ((0, 22), (17, 22)): (0, 1),  # second argument off by one: lenient
    }
    for (first, second), (strict_tp, lenient_tp) in cases.items():
        scorer = RelationScorer()
        scorer.add_relations(gold, [("bodyloc", first, second)])
        res = scorer.result()
        assert (res.strict.tp, res.lenient.tp) == (strict_tp, lenient_tp), (first, second)


def test_relation_matching_is_one_to_one() -> None:
    a = GoldEntity("drug", ((0, 7),), "aspirin")
    gold = [GoldRelation("dosage", a, GoldEntity("dosage", ((8, 12),), "")),
            GoldRelation("dosage", a, GoldEntity("dosage", ((13, 17),), ""))]
    scorer = RelationScorer()
    scorer.add_relations(gold, [("dosage", (0, 7), (8, 17))])  # one wide prediction
    assert scorer.result().lenient == PRF(1, 0, 1)
    scorer = RelationScorer()  # strict pairs are taken before lenient ones
    scorer.add_relations(gold[:1], [("dosage", (0, 5), (8, 12)), ("dosage", (0, 7), (8, 12))])
    res = scorer.result()
    assert res.strict == PRF(1, 1, 0) and res.lenient == PRF(1, 1, 0)


# --- evaluation: identical metric keys whatever the tasks ----------------------------------

def _instances(tasks: tuple[str, ...]) -> list[Instance]:
    return task_instances([_doc()], ENTITY_TYPES, RELATION_TYPES, tasks, GIVEN_ENTITIES)


@pytest.mark.parametrize("tasks", [("ner",), ("re",), ("ner", "re")])
@pytest.mark.parametrize("score_by", [None, SCORE_BY_ENTITY_RECALL])
def test_metric_keys_identical_for_every_site(tasks: tuple[str, ...], score_by: str | None) -> None:
    instances = _instances(tasks)
    perfect = evaluation_from_outputs(instances, [target_text(i) for i in instances], 0.5, score_by)
    garbage = evaluation_from_outputs(instances, ["no idea"] * len(instances), 0.5, score_by)
    for evaluation in (perfect, garbage):
        metrics = evaluation.to_metrics()
        assert tuple(metrics) == METRIC_KEYS
        assert all(isinstance(v, (int, float)) for v in metrics.values())
    metrics = perfect.to_metrics()
    num_re = sum(i.task == "re" for i in instances)
    assert metrics["re-instances"] == num_re and metrics["ner-instances"] == len(instances) - num_re
    assert metrics["num-examples"] == len(instances)
    assert metrics["re-strict-f1"] == (1.0 if "re" in tasks else 0.0)
    # The NER target gives the discontiguous "pain ... back" as its covering text: all 9 align.
    assert metrics["strict-recall"] == pytest.approx(1.0 if "ner" in tasks else 0.0)
    expected_entity_f1 = 1.0 if "ner" in tasks and score_by is None else 0.0
    assert metrics["strict-f1"] == pytest.approx(expected_entity_f1)
    assert metrics["strict-precision"] == pytest.approx(expected_entity_f1)
    assert garbage.to_metrics()["re-malformed"] == num_re


def test_evaluation_markdown_and_old_constructor() -> None:
    instances = _instances(("ner", "re"))
    evaluation = evaluation_from_outputs(instances, [target_text(i) for i in instances], 0.25,
                                         SCORE_BY_ENTITY_RECALL)
    text = evaluation.to_markdown()
    assert "### Entities (4 instances)" in text and "### Relations with gold entities (3 instances)" in text
    assert "n/a" in text.split("### Relations")[0] and "| dosage |" in text.split("### Relations")[1]
    old = Evaluation(0.5, evaluation.scores, 4)  # the NER-only constructor still works
    assert tuple(old.to_metrics()) == METRIC_KEYS and old.to_metrics()["ner-instances"] == 4


def test_evaluator_on_tiny_model_mixed_instances(tiny_llama) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from clinical_ie.extract import extract

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    instances = _instances(("ner", "re"))
    evaluator = InstanceEvaluator(tokenizer, instances, 512, max_new_tokens=4, batch_size=4,
                                  score_by=SCORE_BY_ENTITY_RECALL)
    evaluation = evaluator.evaluate(model, "test")
    assert tuple(evaluation.to_metrics()) == METRIC_KEYS
    assert evaluation.num_re_instances == 3 and evaluation.loss > 0
    assert evaluator.scores(model).recall_only
    assert evaluator.relation_scores(model).strict.fn == 5
    result = extract(model, tokenizer, TEXT, ["drug"], ["dosage"], max_new_tokens=4)
    assert all(TEXT[r.arg1.start:r.arg1.end] == r.arg1.text for r in result.relations)
    with pytest.raises(ValueError, match="score_by"):
        InstanceEvaluator(tokenizer, instances, 512, score_by="entities-only")


def test_extract_assembles_entities_and_relations(monkeypatch) -> None:
    import clinical_ie.extract as extract_module

    text = "Aspirin 81 mg daily. Rash after penicillin."
    answers = {  # by (task, sentence start)
        ("ner", 0): '{"drug": ["Aspirin"], "dosage": ["81 mg"]}',
        ("re", 0): '{"dosage": [["Aspirin", "81 mg"]], "frequency": [["Aspirin", "daily"], ["x", "y"]]}',
        ("ner", 21): '{"drug": ["penicillin"], "problem": ["Rash"]}',
        ("re", 21): '{"causes": [["penicillin", "Rash"]]}',
    }

    def fake_generate(model, tokenizer, prompts, *args, **kwargs):
        out = []
        for messages in prompts:
            task = "re" if messages[1]["content"].startswith("Relation") else "ner"
            sentence = messages[1]["content"].split("Sentence: ")[1]
            out.append(answers[(task, text.index(sentence))])
        return out

    monkeypatch.setattr(extract_module, "generate_answers", fake_generate)
    result = extract_module.extract(None, None, text, ["drug", "problem", "dosage"],
                                    ["dosage", "frequency", "causes"], re_mode=END_TO_END)
    assert [(e.type, e.text) for e in result.entities] == [
        ("drug", "Aspirin"), ("dosage", "81 mg"), ("problem", "Rash"), ("drug", "penicillin")]
    got = [(r.type, r.arg1.type, r.arg1.text, r.arg2.type, r.arg2.text, r.arg2.start) for r in result.relations]
    assert got == [
        ("dosage", "drug", "Aspirin", "dosage", "81 mg", 8),
        ("frequency", "drug", "Aspirin", "frequency", "daily", 14),  # modifier type by relation
        ("causes", "drug", "penicillin", "problem", "Rash", 21),
    ]
    assert result.not_in_text == 1  # ["x", "y"]
    entities, missing = extract_module.extract_entities(None, None, text, ["drug", "problem", "dosage"])
    assert entities == result.entities and missing == 0


# --- parser robustness ---------------------------------------------------------------------

ALLOWED = ("dosage", "frequency", "causes", "reference_range")
PAIR = [("dosage", "aspirin", "81 mg")]

PARSE_CASES = [
    # (id, output, expected relations, malformed, unknown types)
    ("valid", '{"dosage": [["aspirin", "81 mg"]], "frequency": [["aspirin", "daily"]]}',
     PAIR + [("frequency", "aspirin", "daily")], False, 0),
    ("empty-object", "{}", [], False, 0),
    ("code-fence", '```json\n{"dosage": [["aspirin", "81 mg"]]}\n```', PAIR, True, 0),
    ("prose-around", 'Sure, here it is: {"dosage": [["aspirin", "81 mg"]]} Hope it\'s right.', PAIR, True, 0),
    ("single-quotes", "{'dosage': [['aspirin', '81 mg']]}", PAIR, True, 0),
    ("truncated-mid-argument", '{"dosage": [["aspirin", "81 mg"], ["ibuprofen", "20', PAIR, True, 0),
    ("truncated-mid-pair", '{"dosage": [["aspirin", "81 mg"], ["ibu', PAIR, True, 0),
    ("truncated-after-first", '{"dosage": [["aspirin", "81 mg"], ["ibuprofen",', PAIR, True, 0),
    ("bare-pair", '{"dosage": ["aspirin", "81 mg"]}', PAIR, True, 0),
    ("flat-list", '{"dosage": ["aspirin", "81 mg", "ibuprofen", "200 mg", "x"]}',
     PAIR + [("dosage", "ibuprofen", "200 mg")], True, 0),
    ("records", '[{"type": "dosage", "arg1": "aspirin", "arg2": "81 mg"}, {"type": "route", "arg1": "a", "arg2": "b"}]',
     PAIR, True, 1),
    ("entity-modifier-records", '{"dosage": [{"entity": "aspirin", "modifier": "81 mg"}]}', PAIR, True, 0),
    ("head-tail-wrapped", '{"relations": [{"relation": "Dosage", "head": "aspirin", "tail": "81 mg"}]}', PAIR, True, 0),
    ("mapping", '{"dosage": {"aspirin": "81 mg"}}', PAIR, True, 0),
    ("triples", '[["dosage", "aspirin", "81 mg"], ["route", "a", "b"]]', PAIR, True, 0),
    ("number-argument", '{"dosage": [["aspirin", 81]]}', [("dosage", "aspirin", "81")], True, 0),
    ("wrong-types", '{"dosage": [["aspirin", "81 mg"]], "route": [["a", "b"], ["c", "d"]]}', PAIR, False, 2),
    ("type-spelling", '{"DOSAGE": [["aspirin", "81 mg"]], "Reference range": [["Hb", "12-16"]]}',
     PAIR + [("reference_range", "Hb", "12-16")], False, 0),
    ("one-argument", '{"dosage": [["aspirin"]]}', [], True, 0),
    ("string-not-pairs", '{"dosage": "aspirin"}', [], True, 0),
    ("entity-answer", '{"drug": ["aspirin"]}', [], True, 0),
    ("two-objects", '{"dosage": [["aspirin", "81 mg"]]}{"causes": [["x", "y"]]}',
     PAIR + [("causes", "x", "y")], True, 0),
    ("empty-output", "", [], True, 0),
    ("garbage", "no relations here", [], True, 0),
    ("json-null", "null", [], True, 0),
    ("json-list-of-strings", '["aspirin"]', [], True, 0),
]


@pytest.mark.parametrize("output,relations,malformed,unknown", [c[1:] for c in PARSE_CASES],
                         ids=[c[0] for c in PARSE_CASES])
def test_parse_relation_cases(output: str, relations: list, malformed: bool, unknown: int) -> None:
    parsed = parse_relations(output, ALLOWED)
    assert parsed.relations == relations
    assert parsed.malformed is malformed
    assert parsed.unknown_types == unknown


def test_relation_repetition_loop_is_capped() -> None:
    looping = '{"dosage": [' + ", ".join(['["aspirin", "81 mg"]'] * 300)
    parsed = parse_relations(looping, ALLOWED)
    assert parsed.relations == PAIR * MAX_COPIES and parsed.malformed


@pytest.mark.parametrize(
    "output", [None, 3, "{" * 1000, "[" * 1000 + '"x"', '{"dosage": ' * 200, "\x00\xff", '"\\',
               '{"dosage": [[[[[[["a"]]]]]]]}', '{"dosage": [[null, {}], [[], 1.5]]}']
)
def test_parse_relations_never_raises(output) -> None:
    parsed = parse_relations(output, ALLOWED)
    assert isinstance(parsed.relations, list)
