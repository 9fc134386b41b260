"""Sentence templates of the synthetic demo corpus, in three writing styles.

Every template annotates the union of the types the corpus uses; a site later keeps only
the types it annotates (the partial-annotation setting of the reference work). Offsets are
recorded while the text is written, so they cannot drift from it.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from dataclasses import dataclass, field

from data_loaders import synthetic_vocab as V

# Each modifier relation, typed by its modifier, and the main entity types it links to.
RELATION_ARGS: dict[str, tuple[str, ...]] = {
    "dosage": ("drug",),
    "duration": ("drug",),
    "form": ("drug",),
    "frequency": ("drug",),
    "labvalue": ("test",),
    "negation": ("problem",),
    "route": ("drug",),
    "severity": ("problem",),
    "temporal": ("problem", "test", "drug"),
}

STYLES: tuple[str, ...] = ("narrative", "problem_list", "med_list")

Slot = str | tuple[str, str]  # literal text, or (text, entity type)


@dataclass(frozen=True)
class Mention:
    start: int
    end: int
    type: str


@dataclass(frozen=True)
class Link:
    type: str
    main: int  # index into NoteBuilder.mentions
    modifier: int


class NoteBuilder:
    """Appends text and records the entity mentions and links written with it."""

    def __init__(self) -> None:
        self._chunks: list[str] = []
        self._length = 0
        self.mentions: list[Mention] = []
        self.links: list[Link] = []

    @property
    def text(self) -> str:
        return "".join(self._chunks)

    def write(self, text: str) -> None:
        self._chunks.append(text)
        self._length += len(text)

    def add(self, template: str, **slots: Slot) -> dict[str, int]:
        """Write ``template`` with its ``{name}`` slots filled; returns name -> mention index
        for the slots given as ``(text, type)``."""
        handles: dict[str, int] = {}
        for literal, name, _, _ in string.Formatter().parse(template):
            self.write(literal)
            if name is None:
                continue
            value = slots[name]
            if isinstance(value, str):
                self.write(value)
                continue
            text, ent_type = value
            handles[name] = len(self.mentions)
            self.mentions.append(Mention(self._length, self._length + len(text), ent_type))
            self.write(text)
        return handles

    def link(self, rel_type: str, main: int, modifier: int) -> None:
        main_type = self.mentions[main].type
        mod_type = self.mentions[modifier].type
        # Template bugs, not input errors: fail loudly while generating.
        if mod_type != rel_type or main_type not in RELATION_ARGS.get(rel_type, ()):
            raise AssertionError(f"bad link {rel_type}: {main_type} -> {mod_type}")
        self.links.append(Link(rel_type, main, modifier))


@dataclass
class Patient:
    noun: str  # man / woman
    he: str  # He / She
    his: str  # his / her


@dataclass
class NoteContext:
    rng: random.Random
    patient: Patient
    problems: list[str] = field(default_factory=list)  # mentioned so far, for repeats

    def pick(self, options: tuple[str, ...] | list[str]) -> str:
        return options[self.rng.randrange(len(options))]

    def picks(self, options: tuple[str, ...], k: int) -> list[str]:
        return self.rng.sample(list(options), k)

    def problem(self, text: str) -> tuple[str, str]:
        self.problems.append(text)
        return (text, "problem")


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _lab(ctx: NoteContext, name: str | None = None) -> tuple[str, str]:
    """(test name, value) for a named or random lab test."""
    if name is None:
        test = ctx.pick(V.LAB_TESTS)
    else:
        test = next(t for t in V.LAB_TESTS if t.names[0] == name)
    return ctx.pick(test.names), test.value(ctx.rng)


def _drug(ctx: NoteContext) -> V.Drug:
    return V.DRUGS[ctx.rng.randrange(len(V.DRUGS))]


Template = Callable[[NoteBuilder, NoteContext], None]


# --- narrative discharge summaries -------------------------------------------------------

def _intro_admitted(b: NoteBuilder, c: NoteContext) -> None:
    s1, s2 = c.picks(V.SYMPTOMS, 2)
    b.add("The patient is a {age}-year-old {sex} admitted with {s1} and {s2}.",
          age=str(c.rng.randint(*V.AGES)), sex=c.patient.noun,
          s1=c.problem(s1), s2=c.problem(s2))


def _intro_history(b: NoteBuilder, c: NoteContext) -> None:
    d1, d2 = c.picks(V.DISEASES, 2)
    b.add("The patient is a {age}-year-old {sex} with a history of {d1} and {d2} "
          "who presented with {s1}.",
          age=str(c.rng.randint(*V.AGES)), sex=c.patient.noun,
          d1=c.problem(d1), d2=c.problem(d2), s1=c.problem(c.pick(V.SYMPTOMS)))


def _intro_onset(b: NoteBuilder, c: NoteContext) -> None:
    h = b.add("{He} is a {age}-year-old {sex} with {d1} who presents with {s1} "
              "that started {t}.",
              He=c.patient.he, age=str(c.rng.randint(*V.AGES)), sex=c.patient.noun,
              d1=c.problem(c.pick(V.DISEASES)), s1=c.problem(c.pick(V.SYMPTOMS)),
              t=(c.pick(V.TIMES), "temporal"))
    b.link("temporal", h["s1"], h["t"])


def _intro_for(b: NoteBuilder, c: NoteContext) -> None:
    b.add("This {age}-year-old {sex} was admitted for {d1}.",
          age=str(c.rng.randint(*V.AGES)), sex=c.patient.noun, d1=c.problem(c.pick(V.DISEASES)))


def _neg_denies(b: NoteBuilder, c: NoteContext) -> None:
    k = c.rng.choice((2, 3))
    syms = c.picks(V.SYMPTOMS, k)
    slots: dict[str, Slot] = {"He": c.patient.he,
                              "cue": (c.pick(("denies", "denied")), "negation")}
    slots.update({f"s{i}": c.problem(s) for i, s in enumerate(syms)})
    template = ("{He} {cue} {s0}, {s1} or {s2}." if k == 3 else "{He} {cue} {s0} or {s1}.")
    h = b.add(template, **slots)
    for i in range(k):
        b.link("negation", h[f"s{i}"], h["cue"])


def _neg_no_evidence(b: NoteBuilder, c: NoteContext) -> None:
    study = c.pick(V.IMAGING)
    h = b.add("{Test} showed {cue} {f}.", Test=(_cap(c.pick(study.names)), "test"),
              cue=("no", "negation"), f=c.problem(c.pick(study.findings)))
    b.link("negation", h["f"], h["cue"])


def _neg_no_evidence_of(b: NoteBuilder, c: NoteContext) -> None:
    study = c.pick(V.IMAGING)
    h = b.add("There was {cue} {f} on {test}.", cue=("no evidence of", "negation"),
              f=c.problem(c.pick(study.findings)), test=(c.pick(study.names), "test"))
    b.link("negation", h["f"], h["cue"])


def _neg_history(b: NoteBuilder, c: NoteContext) -> None:
    h = b.add("{He} has {cue} history of {d}.", He=c.patient.he, cue=("no", "negation"),
              d=c.problem(c.pick(V.DISEASES)))
    b.link("negation", h["d"], h["cue"])


def _neg_ros(b: NoteBuilder, c: NoteContext) -> None:
    s1, s2 = c.picks(V.SYMPTOMS, 2)
    h = b.add("Review of systems was {cue} {s1} and {s2}.", cue=("negative for", "negation"),
              s1=c.problem(s1), s2=c.problem(s2))
    b.link("negation", h["s1"], h["cue"])
    b.link("negation", h["s2"], h["cue"])


def _neg_without(b: NoteBuilder, c: NoteContext) -> None:
    h = b.add("On examination {he} was comfortable {cue} {s}.", he=c.patient.he.lower(),
              cue=("without", "negation"), s=c.problem(c.pick(V.SYMPTOMS)))
    b.link("negation", h["s"], h["cue"])


def _lab_admission(b: NoteBuilder, c: NoteContext) -> None:
    name, value = _lab(c)
    h = b.add("{Test} was {v} on admission.", Test=(_cap(name), "test"), v=(value, "labvalue"))
    b.link("labvalue", h["Test"], h["v"])


def _lab_two(b: NoteBuilder, c: NoteContext) -> None:
    (n1, v1), (n2, v2) = _lab(c), _lab(c)
    if n1 == n2:
        n2, v2 = _lab(c, "glucose") if n1 != "glucose" else _lab(c, "sodium")
    h = b.add("Labs were notable for {t1} of {v1} and {t2} of {v2}.",
              t1=(n1, "test"), v1=(v1, "labvalue"), t2=(n2, "test"), v2=(v2, "labvalue"))
    b.link("labvalue", h["t1"], h["v1"])
    b.link("labvalue", h["t2"], h["v2"])


def _lab_trend(b: NoteBuilder, c: NoteContext) -> None:
    test = c.pick(V.LAB_TESTS)
    h = b.add("Initial {t} was {v1}, which improved to {v2}.", t=(c.pick(test.names), "test"),
              v1=(test.value(c.rng), "labvalue"), v2=(test.value(c.rng), "labvalue"))
    b.link("labvalue", h["t"], h["v1"])
    b.link("labvalue", h["t"], h["v2"])


def _lab_qualitative(b: NoteBuilder, c: NoteContext) -> None:
    h = b.add("{His} {t} was {v}.", His=_cap(c.patient.his),
              t=(c.pick(c.pick(V.LAB_TESTS).names), "test"),
              v=(c.pick(V.QUALITATIVE_VALUES), "labvalue"))
    b.link("labvalue", h["t"], h["v"])


def _imaging_finding(b: NoteBuilder, c: NoteContext) -> None:
    study = c.pick(V.IMAGING)
    b.add("{Test} showed {f}.", Test=(_cap(c.pick(study.names)), "test"),
          f=c.problem(c.pick(study.findings)))


def _imaging_normal(b: NoteBuilder, c: NoteContext) -> None:
    b.add("{Test} was unremarkable.", Test=(_cap(c.pick(c.pick(V.IMAGING).names)), "test"))


def _drug_started(b: NoteBuilder, c: NoteContext) -> None:
    drug = _drug(c)
    h = b.add("{He} was started on {d} {dose} {freq}.", He=c.patient.he,
              d=(drug.name, "drug"), dose=(c.pick(drug.doses), "dosage"),
              freq=(c.pick(V.FREQUENCIES), "frequency"))
    b.link("dosage", h["d"], h["dose"])
    b.link("frequency", h["d"], h["freq"])


def _drug_two(b: NoteBuilder, c: NoteContext) -> None:
    d1, d2 = c.rng.sample(list(V.DRUGS), 2)
    b.add("{He} was treated with {d1} and {d2} for {p}.", He=c.patient.he,
          d1=(d1.name, "drug"), d2=(d2.name, "drug"), p=c.problem(c.pick(d1.indications)))


def _drug_given(b: NoteBuilder, c: NoteContext) -> None:
    drug = _drug(c)
    h = b.add("{D} {dose} was given {route} for {p}.", D=(_cap(drug.name), "drug"),
              dose=(c.pick(drug.doses), "dosage"), route=(c.pick(drug.routes), "route"),
              p=c.problem(c.pick(drug.indications)))
    b.link("dosage", h["D"], h["dose"])
    b.link("route", h["D"], h["route"])


def _drug_held(b: NoteBuilder, c: NoteContext) -> None:
    b.add("{His} home {d} was held because of {p}.", His=_cap(c.patient.his),
          d=(_drug(c).name, "drug"),
          p=c.problem(c.pick(("acute kidney injury", "hypotension", "bradycardia",
                              "hyperkalemia", "gastrointestinal bleeding", "confusion"))))


def _drug_course(b: NoteBuilder, c: NoteContext) -> None:
    drug = _drug(c)
    h = b.add("{He} received {d} for {dur}.", He=c.patient.he, d=(drug.name, "drug"),
              dur=(c.pick(V.DURATIONS), "duration"))
    b.link("duration", h["d"], h["dur"])


def _treatment_day(b: NoteBuilder, c: NoteContext) -> None:
    b.add("{He} underwent {t} on hospital day {n}.", He=c.patient.he,
          t=(c.pick(V.TREATMENTS), "treatment"), n=str(c.rng.randint(1, 6)))


def _treatment_for(b: NoteBuilder, c: NoteContext) -> None:
    b.add("{T} was performed for {p}.", T=(_cap(c.pick(V.TREATMENTS)), "treatment"),
          p=c.problem(c.pick(V.DISEASES)))


def _treatment_required(b: NoteBuilder, c: NoteContext) -> None:
    b.add("{He} required {t} and was monitored closely.", He=c.patient.he,
          t=(c.pick(V.TREATMENTS), "treatment"))


def _severity_symptom(b: NoteBuilder, c: NoteContext) -> None:
    h = b.add("{He} reported {sev} {s}.", He=c.patient.he,
              sev=(c.pick(V.SYMPTOM_SEVERITIES), "severity"), s=c.problem(c.pick(V.SYMPTOMS)))
    b.link("severity", h["s"], h["sev"])


def _repeat_resolved(b: NoteBuilder, c: NoteContext) -> None:
    # Reuses a problem named earlier: the same string twice in one note.
    problem = c.pick(c.problems) if c.problems else c.pick(V.SYMPTOMS)
    b.add("{His} {p} resolved by the time of discharge.", His=_cap(c.patient.his),
          p=c.problem(problem))


def _repeat_improved(b: NoteBuilder, c: NoteContext) -> None:
    problem = c.pick(c.problems) if c.problems else c.pick(V.SYMPTOMS)
    b.add("{His} {p} improved over the next {n} days.", His=_cap(c.patient.his),
          p=c.problem(problem), n=c.pick(("two", "three", "several")))


_NARRATIVE_PLAIN: tuple[str, ...] = (
    "{He} was discharged home in stable condition.",
    "The family was updated at the bedside.",
    "{He} will follow up with {his} primary care physician in one week.",
    "Code status was discussed with {his} daughter.",
    "{He} lives alone and is independent at baseline.",
    "Social work was consulted for discharge planning.",
    "{He} was seen by the consulting team.",
    "The remainder of the hospital course was uneventful.",
)


def _narrative_plain(b: NoteBuilder, c: NoteContext) -> None:
    b.add(c.pick(_NARRATIVE_PLAIN), He=c.patient.he, his=c.patient.his)


_NARRATIVE_INTROS: tuple[Template, ...] = (
    _intro_admitted, _intro_history, _intro_onset, _intro_for,
)
_NARRATIVE_BODY: tuple[tuple[Template, int], ...] = (
    (_neg_denies, 3), (_neg_no_evidence, 1), (_neg_no_evidence_of, 1), (_neg_history, 1),
    (_neg_ros, 1), (_neg_without, 1), (_lab_admission, 2), (_lab_two, 1), (_lab_trend, 1),
    (_lab_qualitative, 1), (_imaging_finding, 3), (_imaging_normal, 1), (_drug_started, 3),
    (_drug_two, 1), (_drug_given, 2), (_drug_held, 1), (_drug_course, 1),
    (_treatment_day, 2), (_treatment_for, 1), (_treatment_required, 1),
    (_severity_symptom, 1), (_repeat_resolved, 1), (_repeat_improved, 1),
    (_narrative_plain, 4),
)


def _narrative(b: NoteBuilder, c: NoteContext, n: int) -> None:
    c.pick(_NARRATIVE_INTROS)(b, c)
    previous = None
    for _ in range(n - 1):
        b.write(" ")
        previous = _weighted(c.rng, _NARRATIVE_BODY, previous)
        previous(b, c)
    b.write("\n")


# --- terse problem lists / assessment notes ----------------------------------------------

def _pl_lab(b: NoteBuilder, c: NoteContext) -> None:
    disease, test = c.pick(V.DISEASE_TESTS)
    name, value = _lab(c, test)
    h = b.add("{P} - {t} {v}, {ctl}.", P=c.problem(_cap(disease)), t=(name, "test"),
              v=(value, "labvalue"), ctl=c.pick(V.CONTROL_WORDS))
    b.link("labvalue", h["t"], h["v"])


def _pl_severity_dated(b: NoteBuilder, c: NoteContext) -> None:
    disease, severities = c.pick(V.STAGED_DISEASES)
    h = b.add("{sev} {p}, diagnosed {date}.", sev=(_cap(c.pick(severities)), "severity"),
              p=c.problem(disease), date=(c.pick(V.DATES), "temporal"))
    b.link("severity", h["p"], h["sev"])
    b.link("temporal", h["p"], h["date"])


def _pl_staged_lab(b: NoteBuilder, c: NoteContext) -> None:
    tested = {d for d, _ in V.DISEASE_TESTS}
    with_tests = [(d, sev) for d, sev in V.STAGED_DISEASES if d in tested]
    disease, severities = c.pick(with_tests)
    name, value = _lab(c, c.pick([t for d, t in V.DISEASE_TESTS if d == disease]))
    severity = c.pick(severities)
    # "CKD stage 3" but "Severe aortic stenosis": stage words follow the disease.
    template = ("{P} {sev}, {t} {v}." if severity.split()[0] in ("stage", "class", "grade")
                else "{P}, {sev}, {t} {v}.")
    h = b.add(template, P=c.problem(_cap(disease)), sev=(severity, "severity"),
              t=(name, "test"), v=(value, "labvalue"))
    b.link("severity", h["P"], h["sev"])
    b.link("labvalue", h["t"], h["v"])


def _pl_stable(b: NoteBuilder, c: NoteContext) -> None:
    b.add("{P}: {ctl}.", P=c.problem(_cap(c.pick(V.DISEASES))), ctl=c.pick(V.CONTROL_WORDS))


def _pl_lab_dated(b: NoteBuilder, c: NoteContext) -> None:
    disease, test = c.pick(V.DISEASE_TESTS)
    name, value = _lab(c, test)
    h = b.add("{P}: {t} {v} on {date}.", P=c.problem(_cap(disease)), t=(name, "test"),
              v=(value, "labvalue"), date=(c.pick(V.DATES[7:10]), "temporal"))
    b.link("labvalue", h["t"], h["v"])
    b.link("temporal", h["t"], h["date"])


def _pl_symptom(b: NoteBuilder, c: NoteContext) -> None:
    h = b.add("{sev} {s}, onset {t}.", sev=(_cap(c.pick(V.SYMPTOM_SEVERITIES)), "severity"),
              s=c.problem(c.pick(V.SYMPTOMS)), t=(c.pick(V.TIMES), "temporal"))
    b.link("severity", h["s"], h["sev"])
    b.link("temporal", h["s"], h["t"])


def _pl_history(b: NoteBuilder, c: NoteContext) -> None:
    h = b.add("H/o {p} ({date}).", p=c.problem(c.pick(V.DISEASES)),
              date=(c.pick(V.DATES), "temporal"))
    b.link("temporal", h["p"], h["date"])


def _pl_on_drug(b: NoteBuilder, c: NoteContext) -> None:
    drug = _drug(c)
    h = b.add("{P} - on {d} {dose} {freq}, {ctl}.", P=c.problem(_cap(c.pick(drug.indications))),
              d=(drug.name, "drug"), dose=(c.pick(drug.doses), "dosage"),
              freq=(c.pick(V.FREQUENCIES), "frequency"), ctl=c.pick(V.CONTROL_WORDS))
    b.link("dosage", h["d"], h["dose"])
    b.link("frequency", h["d"], h["freq"])


def _pl_continue(b: NoteBuilder, c: NoteContext) -> None:
    b.add("{P} - {ctl}, continue current regimen.", P=c.problem(_cap(c.pick(V.DISEASES))),
          ctl=c.pick(V.CONTROL_WORDS))


def _pl_rule_out(b: NoteBuilder, c: NoteContext) -> None:
    study = c.pick(V.IMAGING)
    b.add("Rule out {p}, {t} ordered.", p=c.problem(c.pick(study.findings)),
          t=(c.pick(study.names), "test"))


def _pl_negated(b: NoteBuilder, c: NoteContext) -> None:
    h = b.add("{P}, {cue} {s} today.", P=c.problem(_cap(c.pick(V.DISEASES))),
              cue=("no", "negation"), s=c.problem(c.pick(V.SYMPTOMS)))
    b.link("negation", h["s"], h["cue"])


def _pl_repeat(b: NoteBuilder, c: NoteContext) -> None:
    problem = c.pick(c.problems) if c.problems else _cap(c.pick(V.DISEASES))
    b.add("{P}: see above.", P=c.problem(_cap(problem)))


_PROBLEM_LINES: tuple[tuple[Template, int], ...] = (
    (_pl_lab, 4), (_pl_severity_dated, 3), (_pl_staged_lab, 3), (_pl_stable, 2),
    (_pl_lab_dated, 2), (_pl_symptom, 2), (_pl_history, 2), (_pl_on_drug, 2),
    (_pl_continue, 1), (_pl_rule_out, 1), (_pl_negated, 1), (_pl_repeat, 1),
)
_PROBLEM_HEADERS: tuple[str, ...] = ("Assessment and plan:", "Problem list:", "Assessment:",
                                     "Active problems:")
_PROBLEM_TRAILERS: tuple[str, ...] = (
    "Follow-up with PCP.", "Diet and exercise counseling provided.",
    "Labs reviewed with patient.", "Will reassess at next visit.",
    "Return precautions discussed.", "Health maintenance up to date.",
)


def _problem_list(b: NoteBuilder, c: NoteContext, n: int) -> None:
    lines: list[str | Template] = []
    if c.rng.random() < 0.5:
        lines.append(c.pick(_PROBLEM_HEADERS))
    trailers = c.rng.choice((0, 0, 1, 2))
    while len(lines) < n - trailers:
        lines.append(_weighted(c.rng, _PROBLEM_LINES, lines[-1] if lines else None))
    while len(lines) < n:
        lines.append(c.pick(_PROBLEM_TRAILERS))
    number = 0
    for line in lines:
        if isinstance(line, str):
            b.write(line)
        else:
            number += 1
            b.write(f"{number}. ")
            line(b, c)
        b.write("\n")


# --- medication lists / reconciliation ---------------------------------------------------

def _drug_slots(drug: V.Drug, c: NoteContext, name: str | None = None) -> dict[str, Slot]:
    form = c.pick(drug.forms)
    return {"D": (name or _cap(drug.name), "drug"), "dose": (c.pick(drug.doses), "dosage"),
            "route": (c.pick(drug.routes_for(form)), "route"), "form": (form, "form"),
            "freq": (c.pick(V.FREQUENCIES), "frequency")}


def _link_drug(b: NoteBuilder, h: dict[str, int], *modifiers: str) -> None:
    kinds = {"dose": "dosage", "route": "route", "form": "form", "freq": "frequency",
             "prn": "frequency", "dur": "duration", "t": "temporal"}
    for slot in modifiers:
        b.link(kinds[slot], h["D"], h[slot])


def _ml_indication(b: NoteBuilder, c: NoteContext) -> None:
    drug = _drug(c)
    h = b.add("{D} {dose} {route} {freq} for {p}.", **_drug_slots(drug, c),
              p=c.problem(c.pick(drug.indications)))
    _link_drug(b, h, "dose", "route", "freq")


def _ml_form(b: NoteBuilder, c: NoteContext) -> None:
    h = b.add("{D} {dose} {form} {freq}.", **_drug_slots(_drug(c), c))
    _link_drug(b, h, "dose", "form", "freq")


def _ml_full(b: NoteBuilder, c: NoteContext) -> None:
    h = b.add("{D} {dose} {form} {route} {freq} for {dur}.", **_drug_slots(_drug(c), c),
              dur=(c.pick(V.DURATIONS), "duration"))
    _link_drug(b, h, "dose", "form", "route", "freq", "dur")


_PRN_DRUGS: tuple[V.Drug, ...] = tuple(d for d in V.DRUGS if d.prn)


def _ml_prn(b: NoteBuilder, c: NoteContext) -> None:
    drug = _PRN_DRUGS[c.rng.randrange(len(_PRN_DRUGS))]
    h = b.add("{D} {dose} {route} {prn} for {p}.", **_drug_slots(drug, c),
              prn=(c.pick(V.PRN_FREQUENCIES), "frequency"),
              p=c.problem(c.pick(drug.indications)))
    _link_drug(b, h, "dose", "route", "prn")


def _ml_take(b: NoteBuilder, c: NoteContext) -> None:
    drug = _drug(c)
    h = b.add("Take {dose} of {D} {route} {freq}.", **_drug_slots(drug, c, drug.name))
    _link_drug(b, h, "dose", "route", "freq")


_START_TIMES: tuple[str, ...] = V.TIMES[:8] + (
    "in March 2022", "in June 2020", "in January 2023", "on 03/12/2024", "last year",
)


def _ml_started(b: NoteBuilder, c: NoteContext) -> None:
    h = b.add("{D} {dose} {freq}, started {t}.", **_drug_slots(_drug(c), c),
              t=(c.pick(_START_TIMES), "temporal"))
    _link_drug(b, h, "dose", "freq", "t")


def _ml_stopped(b: NoteBuilder, c: NoteContext) -> None:
    drug = _drug(c)
    b.add("Discontinued {D} due to {p}.", D=(drug.name, "drug"),
          p=c.problem(c.pick(("rash", "cough", "dizziness", "nausea", "diarrhea",
                              "acute kidney injury", "hyperkalemia", "myalgias",
                              "bradycardia", "angioedema"))))


def _ml_held(b: NoteBuilder, c: NoteContext) -> None:
    h = b.add("{D} {dose} - held for {p}.", **_drug_slots(_drug(c), c),
              p=c.problem(c.pick(("hypotension", "bradycardia", "acute kidney injury",
                                  "low blood sugar", "upcoming surgery"))))
    _link_drug(b, h, "dose")


def _ml_course(b: NoteBuilder, c: NoteContext) -> None:
    h = b.add("{D} {form} {dose} {route} {freq} x {dur}.", **_drug_slots(_drug(c), c),
              dur=(c.pick(V.DURATIONS), "duration"))
    _link_drug(b, h, "form", "dose", "route", "freq", "dur")


def _ml_continue(b: NoteBuilder, c: NoteContext) -> None:
    drug = _drug(c)
    h = b.add("Continue {D} {dose} {freq} for {p}.", **_drug_slots(drug, c, drug.name),
              p=c.problem(c.pick(drug.indications)))
    _link_drug(b, h, "dose", "freq")


_MED_LINES: tuple[tuple[Template, int], ...] = (
    (_ml_indication, 4), (_ml_form, 3), (_ml_full, 2), (_ml_prn, 2), (_ml_take, 1),
    (_ml_started, 1), (_ml_stopped, 1), (_ml_held, 1), (_ml_course, 1), (_ml_continue, 2),
)
_MED_HEADERS: tuple[str, ...] = ("Current medications:", "Discharge medications:",
                                 "Medication reconciliation:", "Home medications:")
_MED_TRAILERS: tuple[str, ...] = (
    "Medication list reviewed with the patient.", "Patient verbalized understanding.",
    "Allergies reviewed.", "Pharmacy confirmed fill history.",
    "Pill box organized by daughter.",
)


def _med_list(b: NoteBuilder, c: NoteContext, n: int) -> None:
    bullet = c.pick(("- ", "numbered", "", "* "))
    lines: list[str | Template] = []
    if c.rng.random() < 0.6:
        lines.append(c.pick(_MED_HEADERS))
    trailers = c.rng.choice((0, 0, 1, 1, 2))
    while len(lines) < n - trailers:
        lines.append(_weighted(c.rng, _MED_LINES, lines[-1] if lines else None))
    while len(lines) < n:
        lines.append(c.pick(_MED_TRAILERS))
    number = 0
    for line in lines:
        if isinstance(line, str):
            b.write(line)
        else:
            number += 1
            b.write(f"{number}. " if bullet == "numbered" else bullet)
            line(b, c)
        b.write("\n")


# --- notes -------------------------------------------------------------------------------

def _weighted(
    rng: random.Random, options: tuple[tuple[Template, int], ...], avoid: object = None
) -> Template:
    """A template drawn by weight, other than ``avoid`` (no template twice in a row)."""
    allowed = [(t, w) for t, w in options if t is not avoid]
    return rng.choices([t for t, _ in allowed], weights=[w for _, w in allowed])[0]


_STYLE_WRITERS: dict[str, Callable[[NoteBuilder, NoteContext, int], None]] = {
    "narrative": _narrative,
    "problem_list": _problem_list,
    "med_list": _med_list,
}


def generate_note(style: str, rng: random.Random) -> NoteBuilder:
    """One note of 3-8 sentences or lines in ``style``, annotated with every type."""
    if style not in _STYLE_WRITERS:
        raise ValueError(f"unknown note style {style!r}; expected one of {list(STYLES)}")
    noun, he, his = V.SEXES[rng.randrange(len(V.SEXES))]
    ctx = NoteContext(rng, Patient(noun, he, his))
    builder = NoteBuilder()
    _STYLE_WRITERS[style](builder, ctx, rng.randint(3, 8))
    return builder
