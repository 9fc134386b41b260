"""What a corpus read kept, skipped or doubted: one counter set for every reader."""

from __future__ import annotations

from dataclasses import dataclass

# The counters each format reports (stats.json, logs), in this order; the others stay 0.
REPORTED: dict[str, tuple[str, ...]] = {
    "brat": ("documents", "entities", "relations", "attributes", "groups", "text_mismatches",
             "normalizations_skipped", "notes_ignored", "continuation_lines", "malformed_skipped"),
    "i2b2": ("documents", "entities", "relations", "attributes", "text_mismatches"),
    "jsonl": ("documents", "entities", "relations", "attributes", "groups", "text_mismatches"),
    # One ADE line is one relation between two mentions of a sentence.
    "ade": ("lines", "documents", "entities", "relations", "mentions", "repeated_mentions", "mentions_not_found"),
}


@dataclass
class ReadStats:
    """Counts over one read, or several: pass one to each read to accumulate."""

    format: str
    documents: int = 0
    entities: int = 0
    relations: int = 0
    attributes: int = 0
    groups: int = 0
    text_mismatches: int = 0  # entities whose offsets do not cover their annotated text
    normalizations_skipped: int = 0  # BRAT: N lines
    notes_ignored: int = 0  # BRAT: # lines
    continuation_lines: int = 0  # BRAT: a note's text running over several lines
    malformed_skipped: int = 0  # BRAT, not strict: lines that could not be read
    lines: int = 0  # ADE
    mentions: int = 0  # ADE: both mentions of every line
    repeated_mentions: int = 0  # ADE: the string occurs more than once in its sentence
    mentions_not_found: int = 0  # ADE: their relations are dropped

    def __post_init__(self) -> None:
        if self.format not in REPORTED:
            raise ValueError(f"ReadStats format: expected one of {sorted(REPORTED)}, got {self.format!r}")

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in REPORTED[self.format]}
