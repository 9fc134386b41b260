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
