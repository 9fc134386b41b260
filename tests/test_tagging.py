"""BIO tags over words and back (clinical_ie/tagging.py): spans from tags are always pieces of
their sentence, the round trip on real MACCROBAT sentences, the label set and its checks."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from clinical_ie.instances import GoldEntity
from clinical_ie.tagging import (
    LabelSetError,
    bio_labels,
    check_label_types,
    decode_bio,
    encode_bio,
    label_ids,
    words,
)
from clinical_ie.token_classification import label_types
from support.paths import DATASETS, REPO

SENTENCES = [
    "Chest pain radiating to the left arm, relieved by nitroglycerin 0.4mg SL.",
    "BP 150/90 mmHg; HbA1c 7.2% (ref <5.7%).",
    "Pt denies n/v/d -- x-ray of the L-spine was unremarkable.",
    "  Mixed   whitespace\tand\u00a0non-ASCII: café, naïve, 5×10^9/L  ",
    "",
]


def test_words_are_letters_digits_or_one_symbol_and_cover_every_non_space():
    text = "5mg x-ray HbA1c café"
    assert [text[s:e] for s, e in words(text)] == ["5", "mg", "x", "-", "ray", "HbA", "1", "c", "café"]
    for sentence in SENTENCES:
        spans = words(sentence)
        covered = {i for s, e in spans for i in range(s, e)}
        assert covered == {i for i, c in enumerate(sentence) if not c.isspace()}


@pytest.mark.parametrize("seed", range(20))
def test_spans_from_any_tags_are_substrings_of_the_sentence(seed):
    rng = random.Random(seed)
    labels = bio_labels(("problem", "drug", "dosage"))
    for sentence in SENTENCES:
        spans = words(sentence)
        tags = [rng.choice(labels) for _ in spans]
        starts, ends = {s for s, _ in spans}, {e for _, e in spans}
        found = decode_bio(sentence, spans, tags)
        assert len(found) <= len(spans)
        for typ, start, end in found:
            assert typ in ("problem", "drug", "dosage")
            assert 0 <= start < end <= len(sentence) and start in starts and end in ends
            piece = sentence[start:end]
            assert piece and piece == piece.strip() and piece in sentence
        # Spans do not overlap and keep the sentence's order.
        assert all(a[2] <= b[1] for a, b in zip(found, found[1:]))


def test_decoding_reads_b_and_i_and_starts_an_entity_at_a_stray_i():
    text = "severe chest pain and aspirin 81 mg"
    spans = words(text)
    tags = ["I-severity", "B-problem", "I-problem", "O", "I-drug", "B-dosage", "I-dosage"]
    assert [(t, text[s:e]) for t, s, e in decode_bio(text, spans, tags)] == [
        ("severity", "severe"), ("problem", "chest pain"), ("drug", "aspirin"), ("dosage", "81 mg")]
    # B after B of the same type: two entities; I of another type: a new entity.
    tags = ["B-problem", "B-problem", "I-drug", "O", "O", "O", "O"]
    assert [text[s:e] for _, s, e in decode_bio(text, spans, tags)] == ["severe", "chest", "pain"]
    with pytest.raises(ValueError, match="3 words but 2 tags"):
        decode_bio("a b c", words("a b c"), ["O", "O"])


def test_overlapping_discontiguous_and_mid_word_entities():
    text = "left arm pain and nausea"
    entity = lambda typ, *spans: GoldEntity(typ, tuple(spans), "")  # noqa: E731
    encoding = encode_bio(words(text), [
        entity("problem", (0, 13)),  # "left arm pain"
        entity("bodyloc", (0, 8)),  # nested in it: dropped
        entity("problem", (14, 17), (18, 24)),  # discontiguous: its covering extent "and nausea"
        entity("drug", (19, 22)),  # inside a word and inside the kept entity: dropped
    ])
    assert encoding.tags == ("B-problem", "I-problem", "I-problem", "B-problem", "I-problem")
    assert encoding.dropped == 2 and encoding.widened == 0
    widened = encode_bio(words(text), [entity("problem", (15, 24))])  # starts inside "and"
    assert widened.widened == 1 and widened.kept[0].spans == ((14, 24),)


def _maccrobat_instances():
    from clinical_ie.evaluate import site_instances
    from data_loaders.sites import load_site

    prepared = REPO / "data" / "maccrobat"
    if (prepared / "site.json").is_file():
        site = load_site(prepared)
    elif (DATASETS / "maccrobat2020" / "MACCROBAT2020").is_dir():
        import json
        import tempfile

        folder = Path(tempfile.mkdtemp()) / "maccrobat"
        folder.mkdir()
        (folder / "site.json").write_text(json.dumps({
            "name": "maccrobat", "preset": "maccrobat", "source": str(DATASETS / "maccrobat2020" / "MACCROBAT2020")}))
        site = load_site(folder)
    else:
        pytest.skip("MACCROBAT not found (data/maccrobat or the shared datasets)")
    return [i for split in ("train", "validation", "test") for i in site_instances(site, split, ("ner",))]


def test_bio_round_trip_on_maccrobat_sentences_keeps_what_bio_can_hold():
    """Every entity the tags hold comes back exactly (as its extent); BIO loses only the
    nested or crossing ones and those whose edge is inside a word, under 1% of MACCROBAT's."""
    instances = _maccrobat_instances()
    total = exact = lost = 0
    for instance in instances:
        spans = words(instance.text)
        encoding = encode_bio(spans, instance.entities)
        decoded = decode_bio(instance.text, spans, encoding.tags)
        assert decoded == [(g.type, g.start, g.end) for g in encoding.kept]
        assert len(encoding.kept) + encoding.dropped == len(instance.entities)
        gold = {(g.type, g.start, g.end) for g in instance.entities}
        exact += sum(1 for d in decoded if d in gold)
        lost += encoding.dropped + encoding.widened
        total += len(instance.entities)
    assert total > 10_000 and exact + lost >= total
    assert exact / total > 0.99


def test_label_set_order_and_allowed_ids():
    labels = bio_labels(("problem", "drug"))
    assert labels == ("O", "B-problem", "I-problem", "B-drug", "I-drug")
    assert label_types(labels) == ("problem", "drug")
    assert label_ids(labels, ("drug",)) == (0, 3, 4)
    with pytest.raises(ValueError, match="not a BIO label set"):
        label_types(("O", "B-drug"))


def test_a_site_type_outside_the_label_set_is_refused_by_site_and_type():
    check_label_types("ddi", ("drug",), ("problem", "drug"))
    with pytest.raises(LabelSetError) as err:
        check_label_types("maccrobat", ("problem", "bodyloc", "dosage"), ("problem", "drug"))
    assert "'maccrobat'" in str(err.value) and "['bodyloc', 'dosage']" in str(err.value)
    assert "model.label-types" in str(err.value)
