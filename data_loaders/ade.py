"""ADE corpus v2 (``DRUG-AE.rel``, ``DRUG-DOSE.rel``) into one ``Document`` per sentence.

A line is ``PMID|sentence|effect_or_dose|start|end|drug|start|end``. The offsets are
"document level", in an abstract laid out as ``PMID\\n\\nTitle\\n\\nAbstract`` that is not
shipped, so mentions are located in their sentence by string search. Document offsets
only decide between repeated copies of a string: the sentence's own document offset is
inferred from the mentions that occur once in it, and a repeated mention takes the copy
at its document offset minus that; failing that (no unique mention, or no copy there),
the k-th smallest document offset of a string takes its k-th copy.

Each unique (PMID, sentence) is one document ``<PMID>-s<k>``, k counting the annotated
sentences of that abstract in reading order from 1. Entity types are ``drug``,
``adverse_effect`` and ``dose``; relation types ``drug-effect`` and ``drug-dose`` with
``arg1`` the drug. A mention annotated on several lines is one entity. Only entities in
a pair are annotated (see ``score_by`` in the ``ade`` preset).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from data_loaders.brat import AnnotationError, read_text
from data_loaders.document import Document, Entity, Relation

from .stats import ReadStats

logger = logging.getLogger(__name__)

DRUG = "drug"
# File name -> (type of the first mention, relation type); the drug is always second.
ADE_FILES: dict[str, tuple[str, str]] = {
    "DRUG-AE.rel": ("adverse_effect", "drug-effect"),
    "DRUG-DOSE.rel": ("dose", "drug-dose"),
}


@dataclass(frozen=True)
class _Mention:
    type: str
    text: str
    doc_start: int


@dataclass
class _Line:
    path: Path
    number: int
    pmid: str
    sentence: str
    relation_type: str
    other: _Mention  # the adverse effect or dose
    drug: _Mention


def read_ade(folder: Path, stats: ReadStats | None = None) -> list[Document]:
    """Read ``DRUG-AE.rel`` (required) and ``DRUG-DOSE.rel`` (if present) in ``folder``.

    Documents come sorted by PMID, then sentence order."""
    folder = Path(folder)
    stats = stats if stats is not None else ReadStats("ade")
    if not (folder / "DRUG-AE.rel").is_file():
        raise FileNotFoundError(
            f"{folder / 'DRUG-AE.rel'} not found; expected the ADE-Corpus-V2 folder"
        )
    sentences: dict[tuple[str, str], list[_Line]] = {}
    for name in ADE_FILES:
        if (folder / name).is_file():
            for line in _read_lines(folder / name, stats):
                sentences.setdefault((line.pmid, line.sentence), []).append(line)
    by_pmid: dict[str, list[tuple[int, str, Document]]] = {}
    for (pmid, sentence), lines in sentences.items():
        order, doc = _to_document(sentence, lines, stats)
        by_pmid.setdefault(pmid, []).append((order, sentence, doc))
    docs: list[Document] = []
    for pmid in sorted(by_pmid, key=lambda p: (len(p), p)):  # numeric order of the PMIDs
        for k, (_, _, doc) in enumerate(sorted(by_pmid[pmid], key=lambda t: t[:2]), start=1):
            doc.doc_id = f"{pmid}-s{k}"
            docs.append(doc)
    stats.documents += len(docs)
    logger.info("%s: %s", folder, stats.as_dict())
    return docs


def _read_lines(path: Path, stats: ReadStats) -> list[_Line]:
    other_type, relation_type = ADE_FILES[path.name]
    content = read_text(path)
    lines: list[_Line] = []
    for number, raw in enumerate(content.split("\n"), start=1):
        raw = raw.rstrip("\r")
        if not raw.strip():
            continue
        stats.lines += 1
        pmid, _, rest = raw.partition("|")
        # Split the fixed columns off the right: a sentence may itself hold a '|'.
        cols = rest.rsplit("|", 6)
        if len(cols) != 7:
            raise AnnotationError(path, number, "expected 8 '|'-separated columns: "
                                  "PMID|sentence|mention|start|end|drug|start|end")
        if not pmid.strip().isdigit():
            raise AnnotationError(path, number, "expected a numeric PubMed id in column 1")
        sentence = cols[0]
        other = _mention(path, number, other_type, cols[1:4], sentence, column=3)
        drug = _mention(path, number, DRUG, cols[4:7], sentence, column=6)
        lines.append(_Line(path, number, pmid.strip(), sentence, relation_type, other, drug))
    return lines


def _mention(path: Path, number: int, kind: str, cols: list[str], sentence: str, column: int
             ) -> _Mention:
    text, start, end = cols
    try:
        begin, stop = int(start), int(end)
    except ValueError:
        raise AnnotationError(path, number, f"expected integer offsets in columns "
                              f"{column + 1} and {column + 2} ({kind})") from None
    if not text.strip() or not 0 <= begin < stop:
        raise AnnotationError(path, number, f"expected a non-empty {kind} mention in column "
                              f"{column} with 0 <= start < end")
    if not sentence.strip():
        raise AnnotationError(path, number, "expected a non-empty sentence in column 2")
    return _Mention(kind, text, begin)


def _occurrences(sentence: str, text: str) -> list[int]:
    found, at = [], sentence.find(text)
    while at >= 0:
        found.append(at)
        at = sentence.find(text, at + 1)
    return found


def _sentence_base(sentence: str, lines: list[_Line]) -> int | None:
    """The sentence's document offset, from the mentions that occur exactly once in it."""
    bases: Counter[int] = Counter()
    for line in lines:
        for mention in (line.other, line.drug):
            found = _occurrences(sentence, mention.text)
            if len(found) == 1:
                bases[mention.doc_start - found[0]] += 1
    if not bases:
        return None
    if len(bases) > 1:
        logger.warning("%s:%d: document offsets of this sentence's mentions disagree; "
                       "using the most common", lines[0].path, lines[0].number)
    return min(bases, key=lambda b: (-bases[b], b))


def _to_document(sentence: str, lines: list[_Line], stats: ReadStats
                 ) -> tuple[int, Document]:
    """The sentence as a document (id set by the caller) and a document offset inside
    it, which orders the sentences of an abstract."""
    base = _sentence_base(sentence, lines)
    # Distinct document offsets per (type, string): the rank fallback for repeats.
    ranks: dict[tuple[str, str], list[int]] = {}
    for line in lines:
        for m in (line.other, line.drug):
            ranks.setdefault((m.type, m.text), []).append(m.doc_start)
    ranks = {key: sorted(set(starts)) for key, starts in ranks.items()}

    def place(line: _Line, mention: _Mention) -> tuple[str, int, int] | None:
        stats.mentions += 1
        found = _occurrences(sentence, mention.text)
        if len(found) > 1:
            stats.repeated_mentions += 1
        start: int | None = found[0] if len(found) == 1 else None
        if len(found) > 1 and base is not None and mention.doc_start - base in found:
            start = mention.doc_start - base
        elif len(found) > 1:
            rank = ranks[(mention.type, mention.text)].index(mention.doc_start)
            start = found[rank] if rank < len(found) else None
        if start is None:
            stats.mentions_not_found += 1
            logger.warning("%s:%d: %s mention not found in its sentence; pair dropped",
                           line.path, line.number, mention.type)
            return None
        return (mention.type, start, start + len(mention.text))

    keys: dict[tuple[str, int, int], None] = {}
    pairs: dict[tuple[str, tuple[str, int, int], tuple[str, int, int]], None] = {}
    for line in lines:
        drug, other = place(line, line.drug), place(line, line.other)
        if drug is None or other is None:
            continue
        keys[drug] = keys[other] = None
        pairs[(line.relation_type, drug, other)] = None
    ids = {key: f"T{n}" for n, key in
           enumerate(sorted(keys, key=lambda k: (k[1], k[2], k[0])), start=1)}
    entities = [Entity(ids[k], k[0], ((k[1], k[2]),), sentence[k[1]:k[2]]) for k in ids]
    relations = [Relation(f"R{n}", rel_type, ids[drug], ids[other])
                 for n, (rel_type, drug, other) in enumerate(pairs, start=1)]
    stats.entities += len(entities)
    stats.relations += len(relations)
    # Sentences do not overlap in the abstract, so any mention's offset orders them.
    order = min(m.doc_start for line in lines for m in (line.other, line.drug))
    return order, Document(doc_id="", text=sentence, entities=entities, relations=relations)
