"""The paper's claims as paired comparisons, each with a verdict the numbers decide.

Each claim compares two arms on the in-domain test sets (NER strict F1, the mean over the
three sets) by `benchmarks.bootstrap.paired_difference`: the same resampled documents score
both arms. A claim holds when the difference clears a threshold:

- "within 2 points of centralized": federated - centralized >= -2 points;
- "beats the best single site": federated - best single site > 0;
- "Fed-MedLoRA+ beats Fed-MedLoRA": plus - plain > 0;
- "generative Fed-MedLoRA beats token-classification Fed-MedLoRA": generative - tagger > 0
  (the tagger's arms are opt-in: benchmarks/protocol/token_arms.py); the first two claims
  also for the tagger, against its own centralized and single-site arms;
- "beats the best single site at its own rate": against the single sites trained at their
  own validation-chosen setting (opt-in: benchmarks/protocol/tuned_singles.py).

Each claim states its budget: `equal-local-steps` (the paper's shape: a single site trains
the steps it spends in the federation, centralized the sum of the sites' steps on the pooled
data) or `equal-instances` (every arm sees as many instances as the federation as a whole;
the single-site arms named `equal-instances/single-*`). On the external set (ADE), whose
gold annotates only entities in relations, the measure is entity recall.

Verdict: `confirmed` when the whole 95% interval clears the threshold, `refuted` when the
whole interval is on the other side, `undecided` when it straddles it (this budget cannot
tell). docs/architecture.md, "Benchmark profiles", says why the verdicts are paired.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks.bootstrap import paired_difference
from benchmarks.protocol.profiles import TOKEN_PREFIX as TOKEN
from benchmarks.protocol.profiles import TUNED_PREFIX as TUNED

MEASURE = "ner-strict"


@dataclass(frozen=True)
class ClaimSpec:
    claim: str  # what the paper says, as one sentence with {a} and {b}
    a: str  # arm, or "best-single": the single-site arm with the highest mean point F1
    b: str
    threshold: float  # in F1 points
    at_least: bool  # True: a - b >= threshold holds it; False: a - b > threshold holds it
    tests: tuple[str, ...] | None = None  # None: the in-domain test sets `evaluate_claims` gets
    budget: str = "equal-local-steps"  # which single-site arms "best-single" picks among (see above)
    statistic: str = "f1"  # "recall" where the gold is partial (ADE)
    family: str = ""  # prefix of the arms "best-single" picks among ("token-classification/": the taggers)


EQUAL_INSTANCES = "equal-instances/"  # prefix of the single-site arms trained at the federation's total budget
EXTERNAL_TEST = "ade"


CLAIMS: tuple[ClaimSpec, ...] = (
    ClaimSpec("{a} is within 2 points of {b}", "fedmedlora", "centralized", -2.0, True),
    ClaimSpec("{a} is within 2 points of {b}", "fedmedlora-plus", "centralized", -2.0, True),
    ClaimSpec("{a} beats the best single site ({b})", "fedmedlora", "best-single", 0.0, False),
    ClaimSpec("{a} beats the best single site ({b})", "fedmedlora-plus", "best-single", 0.0, False),
    ClaimSpec("{a} beats {b}", "fedmedlora-plus", "fedmedlora", 0.0, False),
    # The weighting: where size weighting loses (the smallest site's test set, the external
    # set), validation-scored and equal weights against it.
    *(ClaimSpec("{a} beats {b} on " + where, arm, "fedmedlora", 0.0, False, on, statistic=statistic)
      for arm in ("fedmedlora-plus", "fedmedlora-equal")
      for where, on, statistic in (("MACCROBAT", ("maccrobat",), "f1"),
                                   ("the external set", (EXTERNAL_TEST,), "recall"))),
    # Label skew (sites annotating different entity types), tested on MACCROBAT with all types.
    ClaimSpec("{a} beats {b} under label skew", "fedmedlora-plus-skew", "fedmedlora-skew", 0.0, False,
              ("maccrobat",)),
    ClaimSpec("{a} beats the best single site ({b}) on the external set", "fedmedlora", "best-single", 0.0, False,
              (EXTERNAL_TEST,), statistic="recall"),
    ClaimSpec("{a} beats the best single site ({b}) at equal instances", "fedmedlora", "best-single", 0.0, False,
              budget="equal-instances"),
    ClaimSpec("{a} beats the best single site ({b}) on the external set at equal instances", "fedmedlora",
              "best-single", 0.0, False, (EXTERNAL_TEST,), budget="equal-instances", statistic="recall"),
    # The paper's BERT baseline: the same federation with a tagger (docs/token-classification.md).
    ClaimSpec("generative {a} beats {b}", "fedmedlora", TOKEN + "fedmedlora", 0.0, False),
    # The paper's two federation claims for the tagger, against the tagger's own arms.
    ClaimSpec("{a} is within 2 points of {b}", TOKEN + "fedmedlora", TOKEN + "centralized", -2.0, True),
    ClaimSpec("{a} beats the best single site ({b})", TOKEN + "fedmedlora", "best-single", 0.0, False,
              family=TOKEN),
    # Against the single sites at their own validation-chosen rate (opt-in arms,
    # benchmarks/protocol/tuned_singles.py): the defaults were chosen for the federation.
    ClaimSpec("{a} beats the best single site ({b}) at its own rate", "fedmedlora", "best-single", 0.0, False,
              family=TUNED),
    ClaimSpec("{a} beats the best single site ({b}) on the external set at its own rate", "fedmedlora",
              "best-single", 0.0, False, (EXTERNAL_TEST,), statistic="recall", family=TUNED),
)


def verdict(low: float, high: float, threshold: float, at_least: bool) -> str:
    """confirmed / refuted / undecided for an interval [low, high] against the threshold."""
    holds = low >= threshold if at_least else low > threshold
    fails = high < threshold if at_least else high <= threshold
    return "confirmed" if holds else "refuted" if fails else "undecided"


def best_single(scores: Mapping[str, Mapping[str, Any]], tests: Sequence[str],
                budget: str = "equal-local-steps", family: str = "") -> str | None:
    """The single-site arm of `budget` (among the arms named `family`...) with the highest mean
    NER strict score over `tests` (point values: F1, or recall where only recall is measured)."""
    prefix = family + ("single-" if budget == "equal-local-steps" else EQUAL_INSTANCES + "single-")
    singles = [arm for arm in scores if arm.startswith(prefix) and all(t in scores[arm] for t in tests)]
    if not singles:
        return None
    return max(singles, key=lambda arm: statistics.fmean(point(scores, arm, t) for t in tests))


def point(scores: Mapping[str, Mapping[str, Any]], arm: str, test: str) -> float:
    values = scores[arm][test]["scores"]
    return values.get(f"{MEASURE}-f1", values.get(f"{MEASURE}-recall", {"value": 0.0}))["value"]


def evaluate_claims(scores: Mapping[str, Mapping[str, Any]], tests: Sequence[str], profile: str,
                    specs: Sequence[ClaimSpec] = CLAIMS, resamples: int = 1000) -> list[dict[str, Any]]:
    """One object per claim whose two arms were scored with per-document counts on every test:
    `claim`, `profile`, `a`, `b`, `estimate`, `low`, `high` (F1 points) and `verdict`."""
    out = []
    for spec in specs:
        on = spec.tests or tuple(tests)
        b = best_single(scores, on, spec.budget, spec.family) if spec.b == "best-single" else spec.b
        if b is None or not all(_has_counts(scores, arm, on) for arm in (spec.a, b)):
            continue
        pairs = [(_counts(scores, spec.a, t), _counts(scores, b, t)) for t in on]
        diff = paired_difference(pairs, MEASURE, resamples=resamples, statistic=spec.statistic)
        claim = {
            "claim": spec.claim.format(a=spec.a, b=b), "profile": profile, "a": spec.a, "b": b,
            "budget": spec.budget,
            "measure": f"{MEASURE}-{spec.statistic}, mean over {', '.join(on)}", "threshold": spec.threshold,
            "estimate": diff.value, "low": diff.low, "high": diff.high,
            "verdict": verdict(diff.low, diff.high, spec.threshold, spec.at_least),
        }
        if not any(point(scores, arm, t) for arm in (spec.a, b) for t in on):
            # Two arms that find nothing differ by exactly 0 on every resample: that interval
            # says nothing about which aggregation is better.
            claim.update(verdict="undecided", note="neither arm found a single correct entity")
        out.append(claim)
    return out


def sentence(claim: Mapping[str, Any]) -> str:
    """The claim's sentence for RESULTS.md, from its numbers."""
    numbers = f"{claim['estimate']:+.1f} points, 95% paired interval [{claim['low']:+.1f}, {claim['high']:+.1f}]"
    if claim["verdict"] == "confirmed":
        end = "confirmed: the whole interval clears the threshold"
    elif claim["verdict"] == "refuted":
        end = "refuted: the whole interval is on the other side of the threshold"
    elif claim.get("note"):
        end = f"undecided at this budget: {claim['note']}"
    else:
        end = "undecided at this budget: the interval straddles the threshold"
    return f"- *{claim['claim']}* ({claim['profile']} profile): {numbers}; {end} ({claim['threshold']:+.0f} points)."


def _has_counts(scores: Mapping[str, Mapping[str, Any]], arm: str, tests: Sequence[str]) -> bool:
    return arm in scores and all("document-counts" in scores[arm].get(t, {}) for t in tests)


def _counts(scores: Mapping[str, Mapping[str, Any]], arm: str, test: str) -> np.ndarray:
    return np.asarray(scores[arm][test]["document-counts"], dtype=np.int64)
