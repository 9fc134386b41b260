"""The protocol's sites, arms and profiles: what an invocation trains and scores, with
which budget."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modeling.base import EMBEDDED_DEFAULT
from settings.config import EvalSection

TRAINING_SITES = ("maccrobat", "chia", "ddi-drugbank")
EXTERNAL = "ade"
NEW_SITE = "ddi-medline"
FEDERATED_ARMS: dict[str, dict[str, Any]] = {
    "fedmedlora": {"strategy.name": "fedmedlora"},
    "fedmedlora-plus": {"strategy.name": "fedmedlora-plus", "strategy.validation-instances": 48},
    "fedmedlora-plus-sites": {"strategy.name": "fedmedlora-plus", "strategy.validation": "sites"},
    "fedmedlora-equal": {"strategy.name": "fedmedlora-equal"},  # every site weighted 1/K
    "exact": {"strategy.name": "exact"},
    # Fed-MedLoRA with its adapters encoded on the wire (both directions, every round)
    "fedmedlora-float16": {"strategy.name": "fedmedlora", "transport.encoding": "float16"},
    "fedmedlora-int8": {"strategy.name": "fedmedlora", "transport.encoding": "int8"},
}
ENCODING_ARMS = {"float32": "fedmedlora", "float16": "fedmedlora-float16", "int8": "fedmedlora-int8"}
# Fed-MedLoRA and Fed-MedLoRA+ on the label-skew sites (prepare_label_skew_sites), tested on MACCROBAT.
SKEW_ARMS: dict[str, dict[str, Any]] = {
    "fedmedlora-skew": {"strategy.name": "fedmedlora"},
    "fedmedlora-plus-skew": {"strategy.name": "fedmedlora-plus", "strategy.validation-instances": 48},
}
# Entity recognition as token classification (docs/token-classification.md), opt-in
# (`--token-classification`, `--only token-classification`): new keys, under this prefix.
TOKEN_PREFIX = "token-classification/"
TOKEN_ARMS = tuple(f"{TOKEN_PREFIX}{arm}" for arm in (*(f"single-{n}" for n in TRAINING_SITES), "centralized",
                                                     "fedmedlora"))
# The single sites at their own validation-chosen rate (benchmarks/protocol/tuned_singles.py),
# opt-in (`--only tuned-singles`): new keys, under this prefix.
TUNED_PREFIX = "tuned-rate/"
BUDGETS = ("equal-local-steps", "equal-instances")
# The trained arms twice: with the training defaults (LoRA+ at ratio 16, chosen for the
# federation's 72 steps per site) and as plain LoRA, the reference paper's setting.
NEW_SITE_ARMS = ("zero-shot", "fedmedlora", "new-site-alone", "new-site-from-global",
                 "new-site-alone/plain-lora", "new-site-from-global/plain-lora")


@dataclass(frozen=True)
class Profile:
    model: str
    quantization: str
    rounds: int
    steps: int  # per site and round; 0 = the paper's 2 local epochs
    max_length: int
    test_instances: int  # per test split, chosen by hash; 0 = all
    round_eval_instances: int  # per-round validation F1 inside the federated runs
    new_site_documents: int
    new_site_steps: int
    max_new_tokens: int
    eval_batch_size: int
    overhead_rounds: int
    overhead_steps: int
    federated_arms: tuple[str, ...] = tuple(FEDERATED_ARMS)
    label_skew: bool = False  # also the label-skew arms (SKEW_ARMS)
    external_instances: int = 0  # instances of the external test set; 0 = test_instances
    measure_speed: bool = True  # the training-loop comparison and the federation overhead
    # "equal-local-steps" (the paper's shape): a single site trains the steps it spends in the
    # federation, centralized the sum of the sites' steps on the pooled data.
    # "equal-instances": every arm the federation's total. equal_instances_arms adds that
    # shape's single-site arms (`equal-instances/single-*`) to an equal-local-steps profile.
    budget: str = "equal-local-steps"
    equal_instances_arms: bool = False
    constrained: bool = EvalSection.constrained  # constrained decoding when scoring (eval.constrained's default)

    def test_limit(self, test: str) -> int:
        return self.external_instances if test == EXTERNAL and self.external_instances else self.test_instances


PROFILES = {
    # This 2-core CPU, the embedded default: a smoke test of every arm (docs/architecture.md, "Benchmark profiles").
    "quick": Profile(model=EMBEDDED_DEFAULT, quantization="auto", rounds=3, steps=6, max_length=512,
                     test_instances=40, round_eval_instances=8, new_site_documents=8, new_site_steps=12,
                     max_new_tokens=96, eval_batch_size=16, overhead_rounds=2, overhead_steps=2),
    # This 2-core CPU, the embedded default, sized for 150 minutes from an empty --out (measured:
    # 131 min, docs/benchmarks.md): the arms that decide the paper's claims, in-domain test
    # sets for paired verdicts, label skew; no wire encodings, exact, loop speed or overhead
    # (quick has them).
    "standard": Profile(model=EMBEDDED_DEFAULT, quantization="auto", rounds=3, steps=24, max_length=512,
                        test_instances=120, round_eval_instances=8, new_site_documents=8, new_site_steps=24,
                        max_new_tokens=96, eval_batch_size=16, overhead_rounds=2, overhead_steps=2,
                        federated_arms=("fedmedlora", "fedmedlora-plus", "fedmedlora-equal"),
                        label_skew=True, external_instances=60, measure_speed=False, equal_instances_arms=True),
    # A GPU: 4-bit, a larger model (--model), all data, every test instance.
    "full": Profile(model=EMBEDDED_DEFAULT, quantization="4bit", rounds=3, steps=0, max_length=512,
                    test_instances=0, round_eval_instances=64, new_site_documents=10, new_site_steps=60,
                    max_new_tokens=160, eval_batch_size=32, overhead_rounds=2, overhead_steps=10),
}


def single_site_steps(profile: Profile, site_steps: dict[str, int]) -> dict[str, int]:
    """Steps per round of each single-site arm: the site's own steps in the federation (the
    paper's shape), or the federation's whole budget, all sites' steps (equal instances)."""
    if profile.budget == "equal-local-steps":
        return dict(site_steps)
    return {name: sum(site_steps.values()) for name in site_steps}
