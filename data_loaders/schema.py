"""The common schema of the reference work: four main entity types and the modifier
types linked to them. Every corpus maps into these names; a site annotates a subset."""

from __future__ import annotations

MAIN_ENTITY_TYPES: tuple[str, ...] = ("problem", "treatment", "test", "drug")

MODIFIER_TYPES: tuple[str, ...] = (
    "bodyloc",
    "condition",
    "course",
    "dosage",
    "duration",
    "form",
    "frequency",
    "labvalue",
    "negation",
    "reference_range",
    "route",
    "severity",
    "strength",
    "subject",
    "temporal",
    "uncertain",
)

ENTITY_TYPES: tuple[str, ...] = MAIN_ENTITY_TYPES + MODIFIER_TYPES

# One-line definitions used in the instruction, so the model sees what each label means.
TYPE_DEFINITIONS: dict[str, str] = {
    "problem": "diseases, symptoms, findings and complaints",
    "treatment": "procedures, surgeries and non-drug therapies",
    "test": "examinations, lab tests, imaging and measurements",
    "drug": "medications and drug names",
    "bodyloc": "anatomical locations",
    "condition": "conditions under which something applies",
    "course": "the course or change of a problem",
    "dosage": "amount of a drug per administration",
    "duration": "how long something lasts",
    "form": "drug form, such as tablet or injection",
    "frequency": "how often a drug is given or an event occurs",
    "labvalue": "results and values of tests",
    "negation": "words that negate an entity",
    "reference_range": "normal ranges of tests",
    "route": "route of administration",
    "severity": "how severe a problem is",
    "strength": "drug strength",
    "subject": "who the entity concerns, if not the patient",
    "temporal": "dates and times",
    "uncertain": "words that express uncertainty",
}


def check_types(types: list[str] | tuple[str, ...], where: str) -> None:
    """Raise if any name is not a type of the common schema."""
    unknown = [t for t in types if t not in ENTITY_TYPES]
    if unknown:
        raise ValueError(
            f"{where}: unknown entity type(s) {unknown}; "
            f"valid types are {list(ENTITY_TYPES)}"
        )

# One-line definitions of relation types for the relation instruction: "<first argument>
# and <second argument>", so the model learns which argument goes first. A modifier-typed
# relation links a main entity (first) to a modifier of that type (second).
RELATION_DEFINITIONS: dict[str, str] = {
    "bodyloc": "a problem, treatment or test and its body location",
    "condition": "an entity and the condition under which it applies",
    "course": "a problem and its course or change",
    "dosage": "a drug and its dosage",
    "duration": "a drug, treatment or problem and its duration",
    "form": "a drug and its form",
    "frequency": "a drug or treatment and its frequency",
    "labvalue": "a test and its value",
    "negation": "an entity and the word that negates it",
    "reference_range": "a test and its normal range",
    "route": "a drug and its route",
    "severity": "a problem and its severity",
    "strength": "a drug and its strength",
    "subject": "an entity and who it concerns, if not the patient",
    "temporal": "an entity and its date or time",
    "uncertain": "an entity and the word that makes it uncertain",
    "causes": "a drug or treatment and the problem it causes",
    "reason": "a drug and the problem it is given for",
    # DDI 2013 interaction types: two drugs, in the order the corpus annotates them.
    "effect": "two drugs whose interaction has a stated effect",
    "mechanism": "two drugs whose interaction has a stated pharmacokinetic mechanism",
    "advise": "two drugs with advice about taking them together",
    "int": "two drugs said to interact, without further detail",
    # i2b2 2010 relation types (treatment or test first, as the corpus writes them).
    "TrIP": "a treatment and the problem it improves",
    "TrWP": "a treatment and the problem it worsens",
    "TrCP": "a treatment and the problem it causes",
    "TrAP": "a treatment and the problem it is given for",
    "TrNAP": "a treatment and the problem it is withheld because of",
    "TeRP": "a test and the problem it reveals",
    "TeCP": "a test and the problem it is done to investigate",
    "PIP": "two problems, the first indicating the second",
}
