"""Canary notes for the memorisation audit (docs/threat-model.md, "Memorisation audit").

A canary is a made-up, note-like sentence whose drug name is a random secret drawn from a
space of 16^3 x 4 = 16,384 invented names, with made-up entities around it (a patient
name, a dose, a frequency, an invented condition). It is written as an annotated document
in the training split of one site, `repeats` times, and nowhere else. Afterwards an
adapter is asked about it in two ways (fedmedlora/memorisation.py):

- in context: the sentence as trained, the secret in it;
- withheld: the same sentence with the secret replaced by `BLANK`, so that only a model
  that memorised the pair (context, secret) can name it.

Alternatives are other names from the same space, substituted for the secret.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from data_loaders.document import Document, Entity

from .instances import NER, GoldEntity, Instance

SYLLABLES = ("zor", "vat", "kel", "mir", "dax", "lop", "tun", "bre", "quo", "fen", "sil", "gar", "nox", "pra",
             "vel", "jum")
SUFFIXES = ("ine", "olex", "amab", "ostat")
SPACE = len(SYLLABLES) ** 3 * len(SUFFIXES)
BLANK = "___"
# The secret's entity type: the first of these the site annotates.
SECRET_TYPES = ("drug", "treatment")
_FIRST = ("Aldous", "Berit", "Casimir", "Delphine", "Evander", "Fenella", "Gideon", "Hester")
_LAST = ("Quillfeather", "Marrowby", "Tenniscoe", "Vellacott", "Ashgrove", "Pennywhistle", "Orrin", "Kettleby")
_CONDITIONS = ("Harrowgate fever", "Lindqvist-Moor syndrome", "Pellman's dermatosis", "Osterby myopathy",
               "Cravenhurst anaemia", "Tolliver's neuritis")
_FREQUENCIES = ("twice daily", "every eight hours", "once weekly", "three times daily")


def random_secret(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(3)) + rng.choice(SUFFIXES)


def alternatives(secret: str, count: int, rng: random.Random) -> list[str]:
    """`count` distinct names of the secret's space, the secret excluded."""
    if count >= SPACE:
        raise ValueError(f"alternatives: {count} asked, the space holds {SPACE - 1} besides the secret")
    chosen: set[str] = set()
    while len(chosen) < count:
        name = random_secret(rng)
        if name != secret:
            chosen.add(name)
    return sorted(chosen)


@dataclass(frozen=True)
class Canary:
    doc_id: str
    secret: str
    repeats: int
    text: str  # the sentence, the secret in it
    entities: tuple[tuple[str, int, int], ...]  # (type, start, end) in `text`; the secret's first

    def with_secret(self, name: str) -> Canary:
        """The same canary with `name` in place of the secret (offsets moved)."""
        start, end = self.entities[0][1], self.entities[0][2]
        shift = len(name) - (end - start)
        moved = tuple((t, s if s < start else s + shift, e if e <= start else e + shift)
                      for t, s, e in self.entities)
        return Canary(self.doc_id, name, self.repeats, self.text[:start] + name + self.text[end:], moved)

    def document(self, copy: int) -> Document:
        """One training copy as a site document (its own id, the training split)."""
        doc_id = f"{self.doc_id}-{copy}"
        entities = [Entity(f"T{k + 1}", t, ((s, e),), self.text[s:e]) for k, (t, s, e) in enumerate(self.entities)]
        return Document(doc_id, self.text, entities, source_split="train")

    def instance(self, entity_types: tuple[str, ...], withheld: bool = False) -> Instance:
        """The entity-extraction instance training makes of the canary (one sentence: the whole
        text); `withheld`: the prompt's sentence has `BLANK` for the secret, no gold kept."""
        gold = tuple(GoldEntity(t, ((s, e),), self.text[s:e]) for t, s, e in self.entities if t in entity_types)
        if withheld:
            start, end = self.entities[0][1], self.entities[0][2]
            return Instance(self.doc_id, 0, self.text[:start] + BLANK + self.text[end:], entity_types, (), NER)
        return Instance(self.doc_id, 0, self.text, entity_types, gold, NER)


def make_canary(index: int, repeats: int, secret_type: str, rng: random.Random) -> Canary:
    """A made-up sentence around a random secret drug name."""
    secret = random_secret(rng)
    parts: list[tuple[str, str | None]] = [
        (f"{rng.choice(_FIRST)} {rng.choice(_LAST)}, {rng.randint(23, 88)} years old, was started on ", None),
        (secret, secret_type),
        (" ", None),
        (f"{rng.choice((5, 10, 20, 40, 80, 150))} mg", "dosage"),
        (" ", None),
        (rng.choice(_FREQUENCIES), "frequency"),
        (" for ", None),
        (rng.choice(_CONDITIONS), "problem"),
        (f" on day {rng.randint(2, 30)} of admission.", None),
    ]
    text, entities = "", []
    for piece, kind in parts:
        if kind is not None:
            entities.append((kind, len(text), len(text) + len(piece)))
        text += piece
    return Canary(f"canary-{index:02d}", secret, repeats, text, tuple(entities))


def make_canaries(repeats: tuple[int, ...], per_level: int, entity_types: tuple[str, ...], seed: int) -> list[Canary]:
    """`per_level` canaries for every repetition count in `repeats`, entities kept to the
    site's types; the secret's type is the first of SECRET_TYPES the site annotates."""
    secret_type = next((t for t in SECRET_TYPES if t in entity_types), None)
    if secret_type is None:
        raise ValueError(f"the canary site annotates none of {list(SECRET_TYPES)} (its entity_types: "
                         f"{list(entity_types)}); choose a site that annotates drugs or treatments")
    rng = random.Random(seed)
    out: list[Canary] = []
    while len(out) < len(repeats) * per_level:
        canary = make_canary(len(out), repeats[len(out) // per_level], secret_type, rng)
        if canary.secret in {c.secret for c in out}:
            continue  # every secret once: a repeated one would count twice as often
        kept = tuple(e for e in canary.entities if e[0] in entity_types)  # the site's types only
        out.append(Canary(canary.doc_id, canary.secret, canary.repeats, canary.text, kept))
    return out
