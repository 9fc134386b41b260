"""Constrained decoding (modeling/constrained.py): with the processor an answer's strings
are copied from its own sentence, numbers name listed entities, keys are types asked;
without it the same logits produce the strings it refuses (so every test can fail).

Most tests drive the processor with a scripted logit source: each step prefers the next
token of a scripted answer (random noise elsewhere), as a model that has made up its mind
would; the real tokenizer of the embedded default gives the token texts. The last tests
run the tiny random model through `generate_answers`, the evaluator, `extract` and the CLI,
steered toward a scripted answer the same way."""

from __future__ import annotations

import json
import re

import pytest
import torch
from transformers import AutoTokenizer, LogitsProcessor, LogitsProcessorList

from clinical_ie.evaluate import InstanceEvaluator
from clinical_ie.extract import extract
from clinical_ie.instances import RE, GoldEntity, Instance
from clinical_ie.parsing import parse_entities, parse_numbered_relations, parse_relations
from clinical_ie.prompt import PREFIX_END, answer_constraint, build_messages
from modeling.constrained import Constraint, SentenceConstraint, vocabulary
from modeling.generation import generate_answers

SENTENCE = "He had chest pain and a heart rate of 90 after aspirin 81 mg."
TYPES = ("problem", "drug")


@pytest.fixture(scope="module")
def tokenizer(default_model_dir):
    return AutoTokenizer.from_pretrained(default_model_dir)


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def _greedy(tokenizer, scripts: list[list[int]], constraints: list[Constraint | None] | None,
            steps: int = 60, seed: int = 0) -> list[str]:
    """Greedy decoding from a fake model: at step k row r prefers scripts[r][k] (then the
    end of sequence) by a wide margin over noise. With ``constraints`` the processor masks
    first. Returns each row's decoded answer."""
    rows, eos = len(scripts), tokenizer.eos_token_id
    processor = SentenceConstraint(tokenizer, constraints, eos) if constraints is not None else None
    ids = torch.full((rows, 7), tokenizer.pad_token_id)  # a stand-in prompt
    done = [False] * rows
    generator = torch.Generator().manual_seed(seed)
    for step in range(steps):
        scores = torch.randn(rows, len(tokenizer), generator=generator)
        for row, script in enumerate(scripts):
            scores[row, script[step] if step < len(script) else eos] += 20.0
        if processor is not None:
            scores = processor(ids, scores)
        chosen = scores.argmax(-1)
        chosen = torch.where(torch.tensor(done), torch.tensor(tokenizer.pad_token_id), chosen)
        done = [d or int(c) == eos for d, c in zip(done, chosen)]
        ids = torch.cat([ids, chosen[:, None]], dim=1)
        if all(done):
            break
    return [tokenizer.decode(row[7:], skip_special_tokens=True) for row in ids.tolist()]


def _strings(answer: str) -> list[str]:
    """Every JSON string of an answer, decoded (keys included)."""
    return [json.loads(f'"{s}"') for s in re.findall(r'"((?:[^"\\]|\\.)*)"', answer)]


def test_an_out_of_sentence_string_is_produced_without_the_constraint_and_refused_with_it(tokenizer):
    script = _ids(tokenizer, '{"problem": ["chest pain", "heart attack"], "drug": ["aspirin"]}')
    free = _greedy(tokenizer, [script], None)[0]
    assert parse_entities(free, TYPES).entities == [("problem", "chest pain"), ("problem", "heart attack"),
                                                    ("drug", "aspirin")]
    held = _greedy(tokenizer, [script], [Constraint(SENTENCE, TYPES)])[0]
    entities = parse_entities(held, TYPES).entities
    assert entities and all(text in SENTENCE for _, text in entities), held
    assert ("problem", "chest pain") in entities and "heart attack" not in held
    assert all(s in SENTENCE or s in TYPES for s in _strings(held))


def test_an_entity_copied_more_often_than_the_sentence_holds_it_is_not_closed(tokenizer):
    """Scoring maps the k-th copy of a string to its k-th occurrence: a model looping on one
    mention wrote copies with no occurrence left, unaligned although each is a substring.
    A string the sentence holds once closes once per type; an argument may take part in
    several relations."""
    from clinical_ie.align import align_predictions

    looping = _ids(tokenizer, '{"problem": ["chest pain", "chest pain", "chest pain"], "drug": ["aspirin"]}')
    free = _greedy(tokenizer, [looping], None)[0]
    assert parse_entities(free, TYPES).entities.count(("problem", "chest pain")) == 3
    held = _greedy(tokenizer, [looping], [Constraint(SENTENCE, TYPES)])[0]
    entities = parse_entities(held, TYPES).entities
    assert entities.count(("problem", "chest pain")) == 1, held
    assert align_predictions(entities, SENTENCE)[1] == 0, held  # nothing unaligned
    twice = "A pain in the chest, then pain in the arm."
    script = _ids(tokenizer, '{"problem": ["pain", "pain"]}')
    assert parse_entities(_greedy(tokenizer, [script], [Constraint(twice, TYPES)])[0], TYPES).entities == [
        ("problem", "pain"), ("problem", "pain")]
    relation = _ids(tokenizer, '{"dosage": [["aspirin", "81 mg"], ["aspirin", "90"]]}')
    held = _greedy(tokenizer, [relation], [Constraint(SENTENCE, ("dosage",))])[0]
    assert held == tokenizer.decode(relation)


def test_a_relation_pair_copied_more_often_than_the_sentence_can_place_it_is_not_closed(tokenizer):
    """The k-th copy of a pair takes the k-th pair of its arguments' occurrences: a model
    looping on one pair wrote copies scoring dropped (hundreds per arm). A pair of strings
    that occur once each closes once; with two occurrences of one, twice."""
    from clinical_ie.align import align_relations

    looping = _ids(tokenizer, '{"dosage": [["aspirin", "81 mg"], ["aspirin", "81 mg"], ["aspirin", "81 mg"]]}')
    free = _greedy(tokenizer, [looping], None)[0]
    assert parse_relations(free, ["dosage"]).relations.count(("dosage", "aspirin", "81 mg")) == 3
    held = _greedy(tokenizer, [looping], [Constraint(SENTENCE, ("dosage",))])[0]
    relations = parse_relations(held, ["dosage"]).relations
    assert relations.count(("dosage", "aspirin", "81 mg")) == 1, held
    assert align_relations(relations, SENTENCE)[1] == 0, held  # nothing dropped
    twice = "Aspirin 81 mg, then aspirin again at 81 mg."
    relations = parse_relations(_greedy(tokenizer, [looping], [Constraint(twice, ("dosage",))])[0],
                                ["dosage"]).relations
    assert relations.count(("dosage", "aspirin", "81 mg")) == 2, relations
    assert align_relations(relations, twice)[1] == 0


def test_a_spent_copy_at_the_sentence_end_closes_the_list_instead_of_looping(tokenizer):
    """A string at the end of the sentence cannot grow, so a spent copy of it still closes
    (seen: ["English", "English"] 12 times for "do not speak English"). Greedy decoding that
    wrote one would write it again: the list under that key is closed instead, and another
    key may follow."""
    sentence = "do not speak English"
    pairs = ", ".join(['["English", "English"]'] * 6)
    looping = _ids(tokenizer, '{"labvalue": [' + pairs + ']}')
    free = _greedy(tokenizer, [looping], None, steps=120)[0]
    assert parse_relations(free, ["labvalue"]).relations.count(("labvalue", "English", "English")) == 6
    held = _greedy(tokenizer, [looping], [Constraint(sentence, ("labvalue", "problem"))], steps=120)[0]
    relations = parse_relations(held, ["labvalue", "problem"]).relations
    assert relations.count(("labvalue", "English", "English")) <= 2, held  # the copy, and at most one spent
    entities = _ids(tokenizer, '{"problem": [' + ", ".join(['"English"'] * 6) + ']}')
    held = _greedy(tokenizer, [entities], [Constraint(sentence, ("problem", "drug"))], steps=120)[0]
    assert parse_entities(held, ("problem", "drug")).entities.count(("problem", "English")) <= 2, held

    def allowed(prefix: str, token: str) -> bool:
        processor = SentenceConstraint(tokenizer, [Constraint(sentence, ("labvalue", "problem"))],
                                       tokenizer.eos_token_id)
        ids = torch.tensor([[tokenizer.pad_token_id] * 3])
        processor(ids, torch.zeros(1, len(tokenizer)))
        scores = processor(torch.cat([ids, torch.tensor([_ids(tokenizer, prefix)])], dim=1),
                           torch.zeros(1, len(tokenizer)))
        return bool(scores[0, _ids(tokenizer, token)[0]] == 0.0)

    spent = '{"labvalue": [["English", "English"], ["English", "English"]'
    assert allowed('{"labvalue": [["English", "English"]', ",")  # before any spent copy
    assert not allowed(spent, ",") and allowed(spent, "]")  # after one: the list closes
    assert allowed(spent + "]", ",")  # and another key may follow


@pytest.mark.parametrize(("prefix", "stray", "valid"), [
    ('{"drug": ["droperidol"', "[", ","),  # a closed string, then a bracket: no comma
    ('{"drug"', ' "', ":"),  # a key without its colon
    ('{"drug": ["aspirin"', ' "', ","),  # two values without a comma
    ('{"drug": ["aspirin",', "]", ' "'),  # a trailing comma
    ('{"drug": [', "}", "]"),  # a closer of another container
])
def test_punctuation_follows_json_grammar_so_no_repair_invents_a_string(tokenizer, prefix, stray, valid):
    """Without the grammar, stray punctuation reached the parser's repair, which read
    strings the sentence does not hold out of it ('["droperidol"["aspirin"]' gave
    'droperidol"["aspirin'). With it, the stray token is masked where it would come, and
    JSON's next token is not."""
    sentence = "He got droperidol, then aspirin 81 mg for chest pain."
    if stray == "[":  # the hole as scoring met it: the repaired answer holds non-sentence strings
        free = parse_entities('{"drug": ["droperidol"["aspirin"]]}', ("drug",)).entities
        assert any(text not in sentence for _, text in free), free
    stray_id, valid_id = _ids(tokenizer, stray), _ids(tokenizer, valid)
    assert len(stray_id) == len(valid_id) == 1
    processor = SentenceConstraint(tokenizer, [Constraint(sentence, ("drug", "problem"))], tokenizer.eos_token_id)
    ids = torch.tensor([[tokenizer.pad_token_id] * 3])
    processor(ids, torch.zeros(1, len(tokenizer)))  # the prompt
    scores = processor(torch.cat([ids, torch.tensor([_ids(tokenizer, prefix)])], dim=1), torch.zeros(1, len(tokenizer)))
    assert scores[0, stray_id[0]] == float("-inf"), (prefix, stray)
    assert scores[0, valid_id[0]] == 0.0, (prefix, valid)


@pytest.mark.parametrize("split", ["alone", "characters", "in-word"])
def test_a_span_tokenised_unlike_the_sentence_can_still_be_copied(tokenizer, split):
    """The sentence has " chest" and " pain" (leading spaces); the model may write the
    span as it tokenises alone, one character at a time, or cut mid-word."""
    sentence = "Hypertension and chest pain."
    in_sentence = _ids(tokenizer, sentence)
    span_alone = _ids(tokenizer, "chest pain")
    assert not any(in_sentence[i:i + len(span_alone)] == span_alone for i in range(len(in_sentence)))
    span = {"alone": span_alone,
            "characters": [_ids(tokenizer, c)[0] for c in "chest pain"],
            "in-word": [_ids(tokenizer, "ert")[0], _ids(tokenizer, "ension")[0]]}[split]
    assert all(len(_ids(tokenizer, c)) == 1 for c in "chest pain")
    script = _ids(tokenizer, '{"problem": ["') + span + _ids(tokenizer, '"]}')
    free = _greedy(tokenizer, [script], None)[0]
    held = _greedy(tokenizer, [script], [Constraint(sentence, TYPES)])[0]
    assert held == free == tokenizer.decode(script)


def test_given_entities_answers_name_only_the_entities_listed(tokenizer):
    script = _ids(tokenizer, '{"dosage": [[1, 12], [3, 7], ["aspirin", 2], [0, 2]]}')
    free = _greedy(tokenizer, [script], None)[0]
    assert {"12", "7", "0"} <= set(re.findall(r"\d+", free)) and "aspirin" in free
    held = _greedy(tokenizer, [script], [Constraint(SENTENCE, ("dosage",), numbers=3)])[0]
    outside = re.sub(r'"(?:[^"\\]|\\.)*"', "", held)
    assert re.findall(r"\d+", outside) and all(1 <= int(n) <= 3 for n in re.findall(r"\d+", outside)), held
    assert _strings(held) == ["dosage"], held  # no string but the key
    assert not parse_numbered_relations(held, ["dosage"], ["aspirin", "81 mg", "chest pain"]).unresolved
    # Inside the answer object: numbers and JSON punctuation only (no bare word a JSON
    # repair would read as an entity's text).
    body = outside[outside.index("{") + 1: outside.rindex("}")]
    assert set(body) <= set("0123456789 \t\r\n[]{},:"), held
    # No entity listed: no number at all.
    none = _greedy(tokenizer, [script], [Constraint(SENTENCE, ("dosage",), numbers=0)])[0]
    assert not re.findall(r"\d", none)


def test_batch_rows_are_held_to_their_own_sentences(tokenizer):
    first, second = "Fever and cough.", "Aspirin 81 mg daily."
    scripts = [_ids(tokenizer, '{"drug": ["Aspirin"]}'), _ids(tokenizer, '{"drug": ["Aspirin"]}'),
               _ids(tokenizer, '{"problem": ["Fever and chills"]}'), _ids(tokenizer, '{"drug": ["Aspirin"]}')]
    constraints = [Constraint(first, TYPES), Constraint(second, TYPES), Constraint(first, TYPES), None]
    held = _greedy(tokenizer, scripts, constraints)
    assert "Aspirin" not in held[0]
    assert parse_entities(held[1], TYPES).entities == [("drug", "Aspirin")]
    assert "chills" not in held[2] and ("problem", "Fever and") in parse_entities(held[2], TYPES).entities
    assert held[3] == '{"drug": ["Aspirin"]}'  # an unconstrained row is left alone
    for answer, sentence in zip(held[:3], (first, second, first)):
        assert all(s in sentence or s in TYPES for s in _strings(answer)), answer


def test_keys_are_held_to_the_types_asked(tokenizer):
    script = _ids(tokenizer, '{"disease": ["chest pain"], "drug": ["aspirin"]}')
    assert parse_entities(_greedy(tokenizer, [script], None)[0], ("disease", *TYPES)).entities[0][0] == "disease"
    held = _greedy(tokenizer, [script], [Constraint(SENTENCE, TYPES)])[0]
    assert "disease" not in held and held.startswith('{"problem"'), held
    assert all(s in SENTENCE or s in TYPES for s in _strings(held)), held
    # Without keys to hold to, any key is allowed.
    assert "disease" in _greedy(tokenizer, [script], [Constraint(SENTENCE)])[0]


def test_empty_strings_are_not_closed_and_escapes_copy_quotes(tokenizer):
    script = _ids(tokenizer, '{"problem": ["", " ", "chest pain"]}')
    held = _greedy(tokenizer, [script], [Constraint(SENTENCE, TYPES)])[0]
    assert '""' not in held and '" "' not in held
    assert all(text.strip() and text in SENTENCE for _, text in parse_entities(held, TYPES).entities), held

    quoted = 'He said "ouch" twice and felt\tpain.'
    script = _ids(tokenizer, json.dumps({"problem": ['"ouch"', "felt\tpain", "ouch\nnow"]}))
    free = _greedy(tokenizer, [script], None)[0]
    assert parse_entities(free, TYPES).entities[2] == ("problem", "ouch\nnow")
    held = _greedy(tokenizer, [script], [Constraint(quoted, TYPES)])[0]
    entities = [text for _, text in parse_entities(held, TYPES).entities]
    assert entities[:2] == ['"ouch"', "felt\tpain"], held
    assert all(text in quoted for text in entities)


def test_the_end_of_sequence_waits_for_the_string_to_close(tokenizer):
    script = _ids(tokenizer, '{"problem": ["chest')  # then the script prefers to stop
    free = _greedy(tokenizer, [script], None)[0]
    assert free == '{"problem": ["chest'
    held = _greedy(tokenizer, [script], [Constraint(SENTENCE, TYPES)], steps=80)[0]
    assert held.startswith('{"problem": ["chest') and held.count('"') % 2 == 0, held
    assert all(text in SENTENCE for _, text in parse_entities(held, TYPES).entities)


def test_token_bytes_rebuild_the_decoded_text(tokenizer):
    """Token texts are bytes: a character split over two tokens still matches."""
    vocab = vocabulary(tokenizer)
    assert vocabulary(tokenizer) is vocab  # built once per tokenizer
    sentence = "Temp 38.5 °C, 5 µg/kg of ß-blocker; naïve."
    ids = _ids(tokenizer, sentence)
    assert b"".join(vocab.texts[i] for i in ids).decode("utf-8") == tokenizer.decode(ids)
    assert any(vocab.texts[i] and not _is_utf8(vocab.texts[i]) for i in ids)  # a split character
    script = _ids(tokenizer, '{"dosage": ["5 µg/kg", "ß-blocker"]}')
    held = _greedy(tokenizer, [script], [Constraint(sentence, ("dosage",))])[0]
    assert held == '{"dosage": ["5 µg/kg", "ß-blocker"]}'


def test_indexed_allowed_sets_equal_the_rules_applied_to_every_token(tokenizer):
    """The per-sentence index and the grouped checks give exactly the tokens that the
    state machine, token by token over the whole vocabulary, allows."""
    from modeling.constrained import _ARRAY, _KEY, _OBJECT_KEY, _OBJECT_VALUE, _TEXT, _rules, _State

    vocab = vocabulary(tokenizer)
    sentence = 'Pain "8/10" in the left\tknee; 5 µg/kg, pain again.'
    rules = _rules(Constraint(sentence, ("problem", "pain-scale")), vocab)
    given = _rules(Constraint(sentence, ("dosage",), numbers=12), vocab)
    in_list = (_OBJECT_VALUE, _ARRAY)
    cases = [(rules, _State(in_list, _TEXT, content)) for content in (b"", b"pain", b"Pain ", b"\"8", b"\xc2")]
    cases += [(rules, _State(in_list, _TEXT, b"left", escape=True)), (rules, _State((_OBJECT_KEY,), _KEY, b"pa")),
              (rules, _State((_OBJECT_KEY,), _KEY, b"problem")), (given, _State((_OBJECT_KEY,), _KEY, b""))]
    for r, state in cases:
        only, ids = r.allowed(state)
        every = {i for i, t in enumerate(vocab.texts) if t and r.advance(state, t, True) is not None}
        assert only and set(ids.tolist()) == every, state
    # Outside strings inside the answer, tokens are judged by their bytes: a subset.
    for r, state in [(rules, _State(in_list)), (given, _State((_OBJECT_VALUE, _ARRAY, _ARRAY), digits=b"1"))]:
        only, ids = r.allowed(state)
        every = {i for i, t in enumerate(vocab.texts) if not t or r.advance(state, t, True) is not None}
        assert only and set(ids.tolist()) <= every and len(ids) > 100, state


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_masking_keeps_the_allowed_scores_in_any_dtype(tokenizer, dtype):
    """float32 on a CPU is masked in numpy, anything else (and CUDA) by torch."""
    processor = SentenceConstraint(tokenizer, [Constraint(SENTENCE, TYPES), None])
    ids = torch.tensor([_ids(tokenizer, '{"problem": ["'), _ids(tokenizer, '{"problem": ["')])
    processor(ids[:, :0], torch.zeros(2, len(tokenizer), dtype=dtype))  # the first call: nothing generated
    scores = torch.randn(2, len(tokenizer)).to(dtype)
    out = processor(ids, scores)
    assert out.dtype == dtype and torch.equal(out[1], scores[1])
    allowed = torch.isfinite(out[0])
    assert torch.equal(out[0][allowed], scores[0][allowed])
    texts = {tokenizer.decode([i]) for i in allowed.nonzero().flatten().tolist()}
    assert {" chest", "che", " pain", "8", "He", "asp"} <= texts, texts
    assert all(t.split('"')[0] in SENTENCE for t in texts)  # "." and '."' (a closing quote after it) alike


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


# --- the tiny model through generate_answers, the evaluator, extract and the CLI ---------------


class _Steer(LogitsProcessor):
    """Prefers, per row, the next token of a scripted answer chosen from the row's prompt:
    the tiny random model then behaves like one that copies badly."""

    def __init__(self, tokenizer, script_for):
        self.tokenizer, self.script_for = tokenizer, script_for
        self.scripts: list[list[int]] | None = None
        self.start = 0

    def __call__(self, input_ids, scores):
        if self.scripts is None:
            self.start = input_ids.shape[1]
            prompts = self.tokenizer.batch_decode(input_ids, skip_special_tokens=True)
            self.scripts = [self.tokenizer.encode(self.script_for(p), add_special_tokens=False) for p in prompts]
        step = input_ids.shape[1] - self.start
        scores = scores.clone()
        for row, script in enumerate(self.scripts):
            scores[row, script[step] if step < len(script) else self.tokenizer.eos_token_id] += 1e4
        return scores


def _script_for(prompt: str, bad: bool) -> str:
    """A copier's answer: the first and last words of the sentence; a bad copier's: the
    first word and a string not in the sentence (a number not listed, given entities)."""
    sentence = prompt.split(PREFIX_END)[-1].split("\n")[0].strip()
    first, last = sentence.split()[0].strip(".,"), sentence.split()[-1].strip(".,")
    if "Entities: " in prompt:
        return '{"dosage":[[1,2],[1,9]]}' if bad else '{"dosage":[[1,2]]}'
    if "Relation types" in prompt:
        return json.dumps({"dosage": [[first, "ninety grams" if bad else last]]})
    return json.dumps({"problem": [first, "heart attack" if bad else last]})


@pytest.fixture
def steered(tiny_llama, monkeypatch):
    """The tiny model, steered toward `_script_for`'s answers; ``bad`` chooses which."""
    from modeling.base import load_base_model

    model, tokenizer = load_base_model(str(tiny_llama), "none", "float32")
    generate, mode = model.generate, {"bad": True}

    def steered_generate(*args, logits_processor=None, **kwargs):
        steer = _Steer(tokenizer, lambda prompt: _script_for(prompt, mode["bad"]))
        return generate(*args, logits_processor=LogitsProcessorList([steer, *(logits_processor or [])]), **kwargs)

    monkeypatch.setattr(model, "generate", steered_generate)
    return model, tokenizer, mode


def _instances() -> list[Instance]:
    texts = ["Fever and cough since Monday.", "Aspirin 81 mg daily for chest pain.", "No rash."]
    ner = [Instance("d", i * 40, t, TYPES, ()) for i, t in enumerate(texts)]
    e2e = [Instance("d", i * 40, t, TYPES, (), task=RE, relation_types=("dosage",)) for i, t in enumerate(texts)]
    listed = (GoldEntity("drug", ((0, 7),), "Aspirin"), GoldEntity("dosage", ((8, 13),), "81 mg"))
    given = Instance("d", 40, texts[1], TYPES, listed, task=RE, relation_types=("dosage",), given_entities=True)
    return ner + e2e + [given]


def _parsed(inst: Instance, answer: str):
    """The parser's reading of an answer and the strings (or 0-based numbers) it names."""
    if inst.task == RE and inst.given_entities:
        parsed = parse_numbered_relations(answer, inst.relation_types, [e.text for e in inst.entities])
        return parsed, [n for _, a, b in parsed.relations for n in (a, b)]
    if inst.task == RE:
        parsed = parse_relations(answer, inst.relation_types)
        return parsed, [s for _, a, b in parsed.relations for s in (a, b)]
    parsed = parse_entities(answer, inst.entity_types)
    return parsed, [s for _, s in parsed.entities]


def test_constrained_generation_with_the_tiny_model_parses_and_stays_in_the_sentence(steered):
    """Through generate_answers (shared prefix, left-padded batches of mixed tasks): a
    correct answer passes unchanged and parses cleanly; a bad one keeps to its sentence."""
    model, tokenizer, mode = steered
    instances = _instances()
    prompts = [build_messages(i) for i in instances]
    constraints = [answer_constraint(i) for i in instances]
    kwargs = dict(max_new_tokens=40, batch_size=4, prefix_end=PREFIX_END)

    mode["bad"] = False
    free = generate_answers(model, tokenizer, prompts, **kwargs)
    held = generate_answers(model, tokenizer, prompts, constraints=constraints, **kwargs)
    assert held == free
    for inst, answer in zip(instances, held):
        parsed, named = _parsed(inst, answer)
        assert named and not parsed.malformed and parsed.unknown_types == 0, answer
    assert _parsed(instances[0], held[0])[1] == ["Fever", "Monday"]
    assert _parsed(instances[-1], held[-1])[1] == [0, 1]

    mode["bad"] = True
    free = generate_answers(model, tokenizer, prompts, **kwargs)
    held = generate_answers(model, tokenizer, prompts, constraints=constraints, **kwargs)
    assert "heart attack" in free[0] and "ninety grams" in free[3] and "[1,9]" in free[6]
    for inst, answer in zip(instances, held):
        parsed, named = _parsed(inst, answer)
        assert named or inst.task == RE, answer  # a pair cut short by the deviation is dropped whole
        if inst.given_entities:
            assert not parsed.unresolved and all(0 <= n < len(inst.entities) for n in named), answer
        else:
            assert all(s in inst.text for s in named), answer


def test_the_evaluator_and_extract_drop_nothing_when_constrained(steered):
    model, tokenizer, _ = steered
    instances = _instances()
    metrics = {}
    for constrained in (False, True):
        evaluator = InstanceEvaluator(tokenizer, instances, 256, 40, 4, constrained=constrained)
        metrics[constrained] = evaluator.evaluate(model, end_to_end=False).to_metrics()
    assert metrics[False]["unaligned"] > 0 and metrics[False]["re-unaligned"] > 0
    assert metrics[True]["unaligned"] == 0 and metrics[True]["re-unaligned"] == 0

    note = "Fever and cough since Monday. Aspirin 81 mg daily for chest pain."
    free = extract(model, tokenizer, note, TYPES, ("dosage",), 40, 4)
    held = extract(model, tokenizer, note, TYPES, ("dosage",), 40, 4, constrained=True)
    assert free.not_in_text > 0 and held.not_in_text == 0
    assert {e.text for e in held.entities} >= {"Fever", "Aspirin"}


def test_cli_evaluate_and_extract_take_the_constrained_flag(tmp_path, tiny_llama, capsys):
    from data_loaders.sites import ensure_demo_corpus
    from fedmedlora.cli import main

    sets = ["--set", f"model.name={tiny_llama}", "--set", "eval.max-new-tokens=8"]
    result = tmp_path / "metrics.json"
    assert main(["evaluate", "--data", str(ensure_demo_corpus() / "site-a"), "--split", "validation",
                 "--limit", "4", "--constrained", "--json", str(result), *sets]) == 0
    assert json.loads(result.read_text())["constrained"] is True
    assert main(["evaluate", "--data", str(ensure_demo_corpus() / "site-a"), "--split", "validation",
                 "--limit", "4", "--json", str(result), *sets, "--set", "eval.constrained=true",
                 "--no-constrained"]) == 0
    assert json.loads(result.read_text())["constrained"] is False
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.txt").write_text("Fever and cough. Started aspirin.")
    assert main(["extract", "--input", str(notes), "--out", str(tmp_path / "ann"), "--types", "problem,drug",
                 "--constrained", *sets]) == 0
    assert "0 predicted strings not in the text" in capsys.readouterr().out
