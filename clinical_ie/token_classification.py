"""Entity recognition as token classification (docs/token-classification.md): the NER
instances of the generative task (the same sentences, from the same documents and splits) as
BIO-tagged words for a tagger (modeling/token_classification.py), its tags read back as spans
and scored with the generative task's strict and lenient entity scorer.

Every instance asks only for its own entity types, as a generative prompt does: its gold is
tagged over those types, and in training and prediction the tagger may choose only "O" and the
B/I tags of those types (`allowed`), whatever else the run's label set holds.
"""

from __future__ import annotations

from collections.abc import Sequence

from data_loaders.schema import check_types
from modeling.token_classification import Tagged, encode_words, run_tagger
from modeling.training import drop_too_long

from .evaluate import Evaluation, check_score_by, score_spans
from .extract import Extracted, ExtractionResult
from .instances import NER, Instance
from .segment import split_sentences
from .tagging import LabelSetError, bio_labels, decode_bio, encode_bio, label_ids, words

PredictedSpans = list[tuple[str, int, int]]


def label_types(labels: Sequence[str]) -> tuple[str, ...]:
    """The entity types of a BIO label set (`tagging.bio_labels`), in order; ValueError for a
    label set that is not one."""
    types = tuple(label[2:] for label in labels[1::2])
    if tuple(labels) != bio_labels(types):
        raise ValueError(f"labels {list(labels)} are not a BIO label set (O, then B-<type> and I-<type> per type)")
    return types


def tag_instance(tokenizer, instance: Instance, labels: Sequence[str], max_length: int) -> Tagged:
    """One NER instance as the tagger's input, its gold tags over its own types."""
    if instance.task != NER:
        raise ValueError(f"token classification tags entities only; got a {instance.task!r} instance")
    index = {label: i for i, label in enumerate(labels)}
    missing = [t for t in instance.entity_types if f"B-{t}" not in index]
    if missing:
        # No document id: it may hold an MRN, and this error may travel to the coordinator.
        raise LabelSetError(f"an instance asks for entity type(s) {missing}, which the labels {list(labels)} lack")
    spans = words(instance.text)
    encoding = encode_bio(spans, instance.entities)
    return encode_words(tokenizer, instance.text, spans, max_length, [index[t] for t in encoding.tags],
                        label_ids(labels, instance.entity_types))


def training_examples(tokenizer, instances: Sequence[Instance], labels: Sequence[str],
                      max_length: int) -> tuple[list[Tagged], int]:
    """The NER instances as tagged examples; those longer than `max_length` tokens are dropped
    (and counted), as generative training drops them, since a cut sentence teaches a wrong end."""
    tagged = (tag_instance(tokenizer, i, labels, max_length) for i in instances if i.task == NER)
    return drop_too_long(tagged, lambda example: example.cut > 0, max_length)


def spans_of(instance: Instance, labels: Sequence[str], predicted: Sequence[int]) -> PredictedSpans:
    """The (type, start, end) spans, sentence-relative, that a word's predicted label ids name."""
    return decode_bio(instance.text, words(instance.text), [labels[i] for i in predicted])


class TaggerEvaluator:
    """Scores a tagger on a fixed set of instances (the NER ones of what it is given): loss on
    the gold tags, and strict and lenient entity F1 of the spans its tags name, with the
    generative task's scorer. Sentences longer than `max_length` tokens are cut: their later
    words are predicted "O" (and count as misses where they hold entities)."""

    def __init__(self, tokenizer, instances: Sequence[Instance], labels: Sequence[str], max_length: int,
                 batch_size: int = 16, score_by: str | None = None) -> None:
        self.instances = [i for i in instances if i.task == NER]
        if not self.instances:
            raise ValueError("no entity instances to evaluate a tagger on")
        check_score_by(score_by)
        self.labels = tuple(labels)
        self.tokenizer = tokenizer
        self.encoded = [tag_instance(tokenizer, i, self.labels, max_length) for i in self.instances]
        self.batch_size = batch_size
        self.score_by = score_by

    def _run(self, model) -> tuple[float, list[PredictedSpans]]:
        loss, count, predicted = run_tagger(model, self.encoded, self.tokenizer.pad_token_id, self.batch_size)
        spans = [spans_of(i, self.labels, p) for i, p in zip(self.instances, predicted)]
        return loss / max(count, 1), spans

    def loss(self, model, description: str | None = None) -> float:
        """Mean cross-entropy per tagged word (what Fed-MedLoRA+ weighs sites by)."""
        del description  # one pass, no progress bar
        return self._run(model)[0]

    def predict(self, model) -> list[PredictedSpans]:
        """The spans each instance's predicted tags name."""
        return self._run(model)[1]

    def evaluate(self, model, description: str = "score") -> Evaluation:
        """Loss and entity scores in one pass (relation scores stay 0: tags hold no relations)."""
        del description
        loss, spans = self._run(model)
        entities, _ = score_spans(self.instances, spans, self.score_by)
        return Evaluation(loss, entities, len(self.instances))


def extract_tagged(model, tokenizer, labels: Sequence[str], text: str, entity_types: Sequence[str],
                   max_length: int = 512, batch_size: int = 16, where: str = "adapter") -> ExtractionResult:
    """Entities of `entity_types` in `text`, sentence by sentence, as the tagger's tags name
    them (spans of the text: nothing to drop). `where` names the adapter in errors."""
    check_types(list(entity_types), "entity_types")
    missing = [t for t in entity_types if t not in label_types(labels)]
    if missing:
        raise ValueError(f"{where}: its labels have no entity type(s) {missing}; it tags {list(label_types(labels))}")
    instances = [Instance("text", start, text[start:end], tuple(entity_types), ())
                 for start, end in split_sentences(text)]
    allowed = label_ids(labels, entity_types)
    encoded = [encode_words(tokenizer, i.text, words(i.text), max_length, allowed=allowed) for i in instances]
    _, _, predicted = run_tagger(model, encoded, tokenizer.pad_token_id, batch_size)
    result = ExtractionResult()
    for instance, tags in zip(instances, predicted):
        for typ, start, end in spans_of(instance, labels, tags):
            s, e = instance.offset + start, instance.offset + end
            result.entities.append(Extracted(typ, s, e, text[s:e]))
    result.entities.sort(key=lambda x: (x.start, x.end, x.type))
    return result
