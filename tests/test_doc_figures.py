"""The measured figures that README.md and docs/ pages quote are the values of the
committed JSON they come from, and committed docs name no folder of the machine they were
made on.

Each entry of FIGURES names the page, a piece of text that picks out the one statement
quoting the figure (a table row, a code line, or a paragraph or list item with its wrapped
lines joined), the JSON values it comes from (file and path, relative to the repository)
and how the page writes them. A page that shows anything else fails, naming the page, the
statement, the text expected and the JSON value. A benchmark run again changes its JSON; this
test then names every figure of the pages to update.
"""

from __future__ import annotations

import json
import re
import reprlib
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]

README = "README.md"
BENCHMARKS = "docs/benchmarks.md"
INSTALLATION = "docs/installation.md"
STRATEGIES = "docs/strategies.md"
TOKEN_DOC = "docs/token-classification.md"

RESULTS = "docs/results.json"
CLAIMS = "docs/benchmarks/standard_claims_so_far.json"
TRAIN_SPEED = "docs/benchmarks/train_speed.json"
SECAGG = "docs/benchmarks/secure_aggregation.json"
DP = "docs/benchmarks/dp_f1.json"
SUITE = "docs/benchmarks/suite_times.json"
OVERHEAD = "docs/benchmarks/overhead.json"
LR_SWEEP = "docs/benchmarks/lr_sweep.json"
FLOAT32_SWEEP = "docs/benchmarks/lr_sweep_float32.json"
AGGREGATION = "docs/benchmarks/aggregation.json"
TASK_SECONDS = "docs/benchmarks/task_seconds.json"
SITES = ("maccrobat", "chia", "ddi-drugbank")  # the standard profile's in-domain test sets
CONSTRAINED = {test: f"docs/benchmarks/constrained_decoding_{test}.json" for test in SITES}
GPU = {"SmolLM2-135M": "docs/gpu/smollm2-135m-4bit.json",
       "SmolLM2-1.7B": "docs/gpu/smollm2-1.7b-shape-4bit.json",
       "LLaMA-3-8B": "docs/gpu/llama3-8b-shape-4bit.json"}
SINGLE_SITE = {  # the rows of the single-site table: their JSON, and whether the row shows its wall time
    "| MACCROBAT | `given-entities` |": ("docs/benchmarks/single_site.json", True),
    "| MACCROBAT | `end-to-end` (default) |": ("docs/benchmarks/single_site_end_to_end.json", False),
    "| MACCROBAT, 300 steps of 8 |": ("docs/benchmarks/single_site_maccrobat_300_steps.json", True),
    "| CHIA | `given-entities` |": ("docs/benchmarks/single_site_chia.json", True),
    "| CHIA | `end-to-end` (default) |": ("docs/benchmarks/single_site_chia_end_to_end.json", True),
    "| DDI | `given-entities` |": ("docs/benchmarks/single_site_ddi.json", True),
    "| DDI | `end-to-end` (default) |": ("docs/benchmarks/single_site_ddi_end_to_end.json", True),
}
STANDARD_RUN = ("profiles", "standard", "arms", "run/fedmedlora", "communication")
STANDARD_ARMS = ("profiles", "standard", "arms")
QUICK = ("profiles", "quick", "results")


@dataclass(frozen=True)
class Figure:
    """`doc`'s one statement containing `line` shows `shown(value)`; `value` is the JSON value at
    `path` in `source`, or, with several (source, path) pairs in `values`, the list of them."""

    doc: str
    line: str
    values: tuple[tuple[str, tuple], ...]
    shown: Callable[[Any], str]

    def value(self, load: Callable[[str], Any] | None = None) -> Any:
        load = load or _json
        found = [_at(load(source), path, source) for source, path in self.values]
        return found[0] if len(self.values) == 1 else found

    @property
    def sources(self) -> str:
        return ", ".join(f"{source} {'/'.join(map(str, path)) or '(whole file)'}" for source, path in self.values)


def fig(doc: str, line: str, source: str, path: Sequence, shown: str | Callable[[Any], str]) -> Figure:
    """One figure from one JSON value; `shown` a format string ("{:.3f}") or a function."""
    return Figure(doc, line, ((source, tuple(path)),), shown.format if isinstance(shown, str) else shown)


def figs(doc: str, line: str, values: Sequence[tuple[str, Sequence]], shown: Callable[[list], str]) -> Figure:
    """One figure made of several JSON values (a range, a mean, a table row)."""
    return Figure(doc, line, tuple((source, tuple(path)) for source, path in values), shown)


@cache
def _json(source: str) -> Any:
    return json.loads((REPO / source).read_text(encoding="utf-8"))


def _at(data: Any, path: tuple, source: str) -> Any:
    """The value at `path`: dict keys, list indices, and `key=value` (or `k1=v1&k2=v2`) for
    the list item with those values."""
    for step in path:
        if isinstance(data, list) and isinstance(step, str):
            wanted = dict(pair.split("=", 1) for pair in step.split("&"))
            matches = [item for item in data if all(str(item.get(k)) == v for k, v in wanted.items())]
            assert len(matches) == 1, f"{source}: {len(matches)} items with {step!r}"
            data = matches[0]
        else:
            data = data[step]
    return data


# --- how the pages write numbers ------------------------------------------------------------

def points(x: float) -> str:
    """F1 points with their sign, as the pages write them (a real minus sign)."""
    return f"{x:+.1f}".replace("-", "\u2212")


def claim(c: dict) -> str:
    return f"{points(c['estimate'])} [{points(c['low'])}, {points(c['high'])}]"


def mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB"


def min_s(seconds: float) -> str:
    whole = round(seconds)
    return f"{whole // 60} min {whole % 60} s"


def span(values: Sequence[float], spec: str, sep: str = "-") -> str:
    return f"{min(values):{spec}}{sep}{max(values):{spec}}"


def seconds_or_zero(x: float) -> str:
    return "0" if x < 0.05 else f"{x:.1f} s"


def own_rate_figures() -> list[Figure]:
    """docs/benchmarks.md, "Each single site's own rate": per site, its best single-site arm
    of the float32 sweep against the arm at the training defaults, with their paired difference."""
    from benchmarks.lr_sweep import best_arm, paired_against
    from modeling.training import TrainSettings

    defaults = TrainSettings()
    default = f"lr={defaults.learning_rate:g},loraplus={defaults.loraplus_lr_ratio:g}"

    def shown(site: str) -> Callable[[Any], str]:
        def text(data: Any) -> str:
            singles = {a: v for a, v in data["arms"].items() if a.startswith(f"single-{site}/")}
            best, _ = best_arm(singles)
            at_defaults = f"single-{site}/{default}"
            return (f"{site} at {power_of_ten(singles[best]['setting']['learning-rate'])} "
                    f"({singles[best]['mean-ner-strict-f1']:.3f} against "
                    f"{singles[at_defaults]['mean-ner-strict-f1']:.3f}, "
                    f"{paired_against(data, at_defaults, best)} points)")
        return text

    return [fig(BENCHMARKS, "**Each single site's own rate.**", FLOAT32_SWEEP, (), shown(site)) for site in SITES]


def power_of_ten(x: float, spec: str = ".0e") -> str:
    """2.5e-4, as the pages write it (Python writes 2.5e-04)."""
    mantissa, exponent = f"{x:{spec}}".split("e")
    return f"{mantissa}e{int(exponent)}"


def in_words(n: int) -> str:
    return ("none", "one", "two", "three", "four", "five")[n] if n <= 5 else f"{n}"


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def strict(arm: str, test: str, measure: str = "ner-strict-f1") -> tuple[str, tuple]:
    return RESULTS, (*STANDARD_ARMS, arm, test, "scores", measure, "value")


def per_type(arm: str, test: str, kind: str) -> tuple[str, tuple]:
    return RESULTS, (*STANDARD_ARMS, arm, test, "per-type", kind)  # [true pos., false pos., false neg.]


def found_by_type(test: str, kind: str, text: str) -> Figure:
    """Mentions of one entity type that Fed-MedLoRA and MACCROBAT alone find on a test set
    (true positives; total = true positives + false negatives)."""
    def shown(counts: list) -> str:
        (found, _, missed), (alone, _, _) = counts
        return text.format(found=found, total=found + missed, alone=alone)
    return figs(BENCHMARKS, LOSES, [per_type("fedmedlora", test, kind), per_type("single-maccrobat", test, kind)],
                shown)


def gpu_row(name: str) -> Figure:
    def row(d: dict) -> str:
        after, speed = [r["loss_after"] for r in d["runs"]], d["median-tokens-per-second"]
        return (f"| {name} | {d['trainable-parameters'] / 1e6:.1f} M | "
                f"{speed['fedmedlora']:,.0f} | {speed['peft-loop']:,.0f} | "
                f"{d['ratio']:.2f} | {d['peak-gpu-mb']['fedmedlora']:,.0f} / {d['peak-gpu-mb']['peft-loop']:,.0f} | "
                f"{d['runs'][0]['loss_before']:.2f} -> {span(after, '.2f')} |")
    return fig(BENCHMARKS, f"| {name} |", GPU[name], (), row)


def overhead_row(label: str, shown: Callable[[dict], str]) -> Figure:
    columns = [(OVERHEAD, ("simulation", "after")), (OVERHEAD, ("deployment", "after")),
               (OVERHEAD, ("deployment", "no_site_workers"))]
    return figs(BENCHMARKS, f"| {label} |", columns,
                lambda ds: f"| {label} | " + " | ".join(shown(d) for d in ds) + " |")


def loads(d: dict) -> str:
    parts = [d["split_per_round"][k] for k in ("imports", "model load", "data load")]
    return "0" if sum(parts) < 0.05 else " + ".join(f"{p:.1f}" for p in parts) + " s"


def single_site_row(row: str, source: str, wall: bool) -> list[Figure]:
    """A row of the single-site table; `wall`: the row shows the run's wall time."""
    found = [fig(BENCHMARKS, row, source, (), lambda d: f"{d['ner_strict_f1']:.3f} / {d['ner_lenient_f1']:.3f}"),
             fig(BENCHMARKS, row, source, (),
                 lambda d: f"{d['re_strict_f1_end_to_end']:.3f} / {d['re_lenient_f1_end_to_end']:.3f}"),
             fig(BENCHMARKS, row, source, (),
                 lambda d: f"| {d['test_instances']} ({d['test_relation_instances']}) |")]
    if _json(source)["re_strict_f1_gold_entities"] is not None:
        found.append(fig(BENCHMARKS, row, source, ("re_strict_f1_gold_entities",), "| {:.3f} |"))
    if wall:
        found.append(fig(BENCHMARKS, row, source, ("seconds",), "| {:,.0f} s"))
    return found


def lr_sweep_rows() -> list[Figure]:
    """The generated sweep table: every arm's rate, F1 per validation set and their mean. An
    arm also in the shapes table (its own file, the same arm name) cannot be picked out by
    its row's first cell; tests/test_lr_sweep.py checks both tables whole against their JSON."""
    found = []
    shapes = _json(FLOAT32_SWEEP)["arms"]
    for arm, record in _json(LR_SWEEP)["arms"].items():
        if arm in shapes:
            continue
        row = f"| {arm} |"
        found.append(fig(BENCHMARKS, row, LR_SWEEP, ("arms", arm, "setting", "learning-rate"), f"{row} {{:g}} |"))
        found.append(fig(BENCHMARKS, row, LR_SWEEP, ("arms", arm, "mean-ner-strict-f1"), "| {:.3f} |"))
        for test in record["scores"]:
            found.append(fig(BENCHMARKS, row, LR_SWEEP,
                             ("arms", arm, "scores", test, "scores", "ner-strict-f1", "value"), "| {:.3f} |"))
    return found


def constrained_rows() -> list[Figure]:
    """The generated constrained-decoding table: every cell of every row."""
    found = []
    for test, source in CONSTRAINED.items():
        n = _json(source)["instances"]
        for arm in _json(source)["arms"]:
            def cells(a: dict, test: str = test, n: int = n, arm: str = arm) -> str:
                processor = f"{a['processor-ms-per-step']:.2f}" if "processor-ms-per-step" in a else "-"
                return (f"| {test} ({n}) | {arm} | {a['strict-f1']:.3f} | {a['lenient-f1']:.3f} | "
                        f"{a['unaligned']:.0f} | {a['malformed']:.0f} | {a['re-strict-f1']:.3f} | "
                        f"{a['answer-tokens-per-second']:.1f} | {processor} |")
            found.append(fig(BENCHMARKS, f"| {test} ({n}) | {arm} |", source, ("arms", arm), cells))
    return found


def gpu_spread(ds: list[dict]) -> str:
    """How far one repeat's tokens/s lies from its arm's median, at worst."""
    worst = max(abs(r["tokens_per_second"] / median - 1)
                for d in ds for arm, median in d["median-tokens-per-second"].items()
                for r in d["runs"] if r["arm"] == arm)
    return f"up to {worst:.0%}"


def claim_row(c: dict) -> str:
    return f"| {points(c['estimate'])} | [{points(c['low'])}, {points(c['high'])}] | {c['verdict']} |"


STANDARD = ("profiles", "standard", "settings", "profile")
ARM_NAMES = {"fedmedlora": "Fed-MedLoRA", "fedmedlora-plus": "Fed-MedLoRA+"}
PROFILE = "The `standard` profile of `benchmarks/protocol/`"
DP_ROW = "| Fed-MedLoRA NER strict F1 with server-side DP"
ONE_SITE = "One site trains the embedded default on its own training split"
ROWS_ARE = "unless they say otherwise"
RE_MODE = "The default `data.re-mode` is the mode with the higher"
SPEED = "this CPU has no fast bfloat16, see"
PROFILES = "Profiles: `quick` is a smoke test of every arm"
QUICK_ITEM = "- `quick` (the embedded default"
UNALIGNED = "`unaligned` is 0 for every arm and test set"
RE_F1 = "relation strict F1 of centralized end to end"
LOSES = "**Where the federation loses, and why.**"
SIZE = "At this benchmark's size"
REPEATS = "A single repeat differs from its arm's median"
GPU_CHECK = "`benchmarks/gpu_check.sh` is the GPU check"
ARMS_RECORDED = ("zero-shot", "single-maccrobat", "single-chia", "single-ddi-drugbank", "centralized", "fedmedlora",
                 "fedmedlora-plus")
OURS = "docs/benchmarks/single_site.json"
END_TO_END = "docs/benchmarks/single_site_end_to_end.json"
STEPS_300 = "docs/benchmarks/single_site_maccrobat_300_steps.json"

def token_row(row: str, arm: str) -> Figure:
    """A row of the generative-against-tagger table: NER strict F1 per set, ADE recall."""
    return figs(TOKEN_DOC, row, [(RESULTS, (*STANDARD_ARMS, arm, test, "scores",
                                            "ner-strict-recall" if test == "ade" else "ner-strict-f1", "value"))
                                 for test in (*SITES, "ade")],
                lambda v: " | ".join(f"{x:.3f}" for x in v) + " |")


FIGURES: list[Figure] = [
    # --- docs/token-classification.md: when to choose which ---------------------------------
    token_row("| Fed-MedLoRA, generative |", "fedmedlora"),
    token_row("| Fed-MedLoRA, tagger |", "token-classification/fedmedlora"),
    token_row("| centralized, generative |", "centralized"),
    token_row("| centralized, tagger |", "token-classification/centralized"),
    fig(TOKEN_DOC, "- *Generative Fed-MedLoRA beats token-classification", CLAIMS,
        ("claims", "a=fedmedlora&b=token-classification/fedmedlora"),
        lambda c: f"{points(c['estimate'])} points [{points(c['low'])}, {points(c['high'])}], {c['verdict']}"),
    fig(TOKEN_DOC, "- The tagger's federation is where the paper puts", CLAIMS,
        ("claims", "a=token-classification/fedmedlora&b=token-classification/centralized"),
        lambda c: f"{points(c['estimate'])} [{points(c['low'])}, {points(c['high'])}] ({c['verdict']})"),
    fig(TOKEN_DOC, "- The tagger's federation is where the paper puts", CLAIMS,
        ("claims", "a=token-classification/fedmedlora&b=token-classification/single-maccrobat"),
        lambda c: f"{points(c['estimate'])} [{points(c['low'])}, {points(c['high'])}] ({c['verdict']})"),
    fig(TOKEN_DOC, "- Cost, one site (MACCROBAT)", TASK_SECONDS, ("tasks",),
        lambda t: f"training {t['generative']['train-seconds']:.0f} s generative against "
                  f"{t['token-classification']['train-seconds']:.0f} s for the tagger"),
    fig(TOKEN_DOC, "- Cost, one site (MACCROBAT)", TASK_SECONDS, ("tasks",),
        lambda t: f"sentences {t['generative']['score-seconds']:.0f} s against "
                  f"{t['token-classification']['score-seconds']:.0f} s"),
    fig(TOKEN_DOC, "- Cost, one site (MACCROBAT)", TASK_SECONDS, ("generative-over-token",),
        lambda r: f"({r['train-seconds']:.1f}x)"),
    fig(TOKEN_DOC, "- Cost, one site (MACCROBAT)", TASK_SECONDS, ("generative-over-token",),
        lambda r: f"({r['score-seconds']:.1f}x;"),
    # --- README: the demo's output (its bytes; the losses and F1 vary from run to run) -----------
    *(fig(README, f"  site-{s}   ", RESULTS, (*STANDARD_RUN, "adapter-bytes"),
          lambda n: f"{n / 1e6:.2f}   {2 * n / 1e6:.2f}")  # up MB, down MB
      for s in "abc"),
    fig(README, "communication per site:", RESULTS, (*STANDARD_RUN, "adapter-bytes"), lambda n: f"{mb(n)} up"),
    fig(README, "communication per site:", RESULTS, (*STANDARD_RUN, "upload-ratio-to-full-model"), "{:.2%} of a"),
    fig(README, "communication per site:", RESULTS, (*STANDARD_RUN, "full-model-bytes-bf16"),
        lambda n: f"({n / 1e6:.0f} MB in bf16)"),
    fig(README, "At the end it prints the path", RESULTS, (*STANDARD_RUN, "adapter-bytes"), lambda n: f"{mb(n)} up"),
    # --- README: the claims table and the run it comes from --------------------------------
    *(fig(README, f"| {name} beats the best single site (CHIA) |", CLAIMS, ("claims", f"a={arm}&b=single-chia"),
          claim_row) for arm, name in ARM_NAMES.items()),
    *(fig(README, f"| {name} within 2 points of centralized |", CLAIMS, ("claims", f"a={arm}&b=centralized"),
          claim_row) for arm, name in ARM_NAMES.items()),
    fig(README, "| Fed-MedLoRA+ beats Fed-MedLoRA |", CLAIMS, ("claims", "claim=fedmedlora-plus beats fedmedlora"), claim_row),
    fig(README, "| Fed-MedLoRA beats the best single site on ADE", CLAIMS,
        ("claims", "a=fedmedlora&b=single-maccrobat"), claim_row),
    fig(README, PROFILE, CLAIMS, ("minutes",), "equal weights; {:.0f} minutes"),
    fig(README, "| Generative Fed-MedLoRA beats Fed-MedLoRA as a token classifier |", CLAIMS,
        ("claims", "a=fedmedlora&b=token-classification/fedmedlora"), claim_row),
    fig(README, "| Fed-MedLoRA as a token classifier within 2 points", CLAIMS,
        ("claims", "a=token-classification/fedmedlora&b=token-classification/centralized"), claim_row),
    fig(README, "| Fed-MedLoRA as a token classifier beats its best single site (MACCROBAT) |", CLAIMS,
        ("claims", "a=token-classification/fedmedlora&b=token-classification/single-maccrobat"), claim_row),
    fig(README, "| Fed-MedLoRA beats the best single site at its own validation-chosen rate (CHIA) |", CLAIMS,
        ("claims", "a=fedmedlora&b=tuned-rate/single-chia"), claim_row),
    fig(README, "| Fed-MedLoRA beats the best single site at its own rate on ADE (MACCROBAT", CLAIMS,
        ("claims", "a=fedmedlora&b=tuned-rate/single-maccrobat"), claim_row),
    fig(README, "| Fed-MedLoRA+ beats Fed-MedLoRA on MACCROBAT |", CLAIMS,
        ("claims", "claim=fedmedlora-plus beats fedmedlora on MACCROBAT"), claim_row),
    fig(README, "| Fed-MedLoRA+ beats Fed-MedLoRA on ADE", CLAIMS,
        ("claims", "claim=fedmedlora-plus beats fedmedlora on the external set"), claim_row),
    fig(README, PROFILE, RESULTS, STANDARD,
        lambda p: f"trains {p['rounds']} rounds of {p['steps']} local steps, a single site the same "
                  f"{p['rounds'] * p['steps']} steps alone, centralized the sites' "
                  f"{3 * p['rounds'] * p['steps']} steps"),
    fig(README, PROFILE, RESULTS, (*STANDARD, "test_instances"), "test sets of {} sentences"),
    figs(README, "Relation F1 is above 0 for centralized", [strict("centralized", t, "re-strict-f1") for t in SITES],
         lambda v: f"({span(v, '.2f', ' to ')} strict)"),
    figs(README, "Relation F1 is above 0 for centralized", [strict("fedmedlora", t, "re-strict-f1") for t in SITES],
         lambda v: f"and {max(v):g} for the federation"),

    # --- docs/benchmarks.md: the table at the top -------------------------------------------
    figs(BENCHMARKS, "| site training speed", [(OURS, ("train_tokens_per_second",)),
                                                (TRAIN_SPEED, ("clientapp", "tokens_per_second"))],
         lambda v: f"{v[0]:.0f}-{v[1]:.0f} tokens/s"),
    fig(BENCHMARKS, "| site training speed", TRAIN_SPEED, ("clientapp", "instances_per_second"),
        "({:.2f} instances/s)"),
    fig(BENCHMARKS, "| bytes per site per round |", RESULTS, (*STANDARD_RUN, "adapter-bytes"),
        lambda n: f"{mb(n)} up, {mb(2 * n)} down"),
    fig(BENCHMARKS, '| ... with `strategy.validation = "sites"`', RESULTS, (*STANDARD_RUN, "adapter-bytes"),
        lambda n: f"+ {mb(3 * n)} down"),
    fig(BENCHMARKS, "| upload vs a full-model update", RESULTS, (*STANDARD_RUN, "full-model-bytes-bf16"),
        lambda n: f"({n / 2e6:.0f}M params in bf16, {n / 1e6:.0f} MB)"),
    fig(BENCHMARKS, "| upload vs a full-model update", RESULTS, (*STANDARD_RUN, "upload-ratio-to-full-model"),
        "| {:.2%} ("),
    fig(BENCHMARKS, "| upload vs a full-model update", RESULTS, (*STANDARD_RUN, "upload-reduction-percent"),
        "({:.1f}% less)"),
    fig(BENCHMARKS, DP_ROW, DP, ("settings", "test-instances"), "{} test instances per set"),
    figs(BENCHMARKS, DP_ROW, [(DP, ("arms", arm, "scores", t, "scores", "ner-strict-f1", "value"))
                              for arm in ("dp-eps8", "dp-eps1") for t in SITES],
         lambda v: f"| {mean(v[:3]):.3f} and {mean(v[3:]):.3f}, against"),
    figs(BENCHMARKS, DP_ROW, [(DP, ("arms", "no-dp", "scores", t, "scores", "ner-strict-f1", "value")) for t in SITES],
         lambda v: f"against {mean(v):.3f} without DP (mean of {len(v)} sets"),
    *(fig(BENCHMARKS, DP_ROW, DP, ("arms", arm, "difference-to-no-dp"),
          lambda d: f"sets; {points(d['estimate'])} points [{points(d['low'])}, {points(d['high'])}])")
      for arm in ("dp-eps8", "dp-eps1")),  # one interval shown for both: they are the same
    fig(BENCHMARKS, "| Secure aggregation (SecAgg+) per round", SECAGG, (),
        lambda d: f"+{d['extra-seconds-per-round']:.1f} s ({d['secure-seconds']:.2f} s vs {d['plain-seconds']:.2f} s), "
                  f"bytes up ×{d['bytes-up-ratio']:.2f}"),
    fig(BENCHMARKS, "| Secure aggregation (SecAgg+) per round", SECAGG, ("adapter-parameters",),
        lambda n: f"{n / 1e6:.1f} M-value adapter"),
    fig(BENCHMARKS, "| test suite from a fresh clone", SUITE, ("test-suite",),
        lambda d: f"({d['passed'] + d['skipped']:,} tests: {d['passed']:,} passed, {d['skipped']} skipped) | "
                  f"{min_s(d['wall-seconds'])} |"),
    fig(BENCHMARKS, "| compose tier, from an empty Docker state |", SUITE, ("compose-tier", "wall-seconds"),
        lambda s: f"| {min_s(s)} |"),
    *(fig(BENCHMARKS, "malformed (`malformed` is", RESULTS, (*STANDARD_ARMS, "zero-shot", t),
          lambda d: f"is {d['malformed']} of {d['instances']} on each in-domain test set")
      for t in SITES),

    # --- docs/benchmarks.md: one site -------------------------------------------------------
    *(f for row, (source, wall) in SINGLE_SITE.items() for f in single_site_row(row, source, wall)),
    fig(BENCHMARKS, "| MACCROBAT | `given-entities` |", OURS, ("train_seconds",), "(train {:,.0f} s)"),
    fig(BENCHMARKS, "| MACCROBAT, 300 steps of 8 |", STEPS_300, ("train_seconds",), "(train {:,.0f} s)"),
    fig(BENCHMARKS, ONE_SITE, OURS, (),
        lambda d: f"MACCROBAT ({len(d['entity_types'])} entity and {len(d['relation_types'])} relation types), "
                  f"{d['train_steps']} steps ({d['train_steps'] * 8 / d['train_instances']:.2f} epochs), "
                  f"{d['test_instances']} test"),
    fig(BENCHMARKS, ROWS_ARE, OURS, ("train_steps",), "MACCROBAT rows are {} steps"),
    fig(BENCHMARKS, ROWS_ARE, "docs/benchmarks/single_site_chia.json", ("train_steps",), "rows {} steps of"),
    fig(BENCHMARKS, ROWS_ARE, STEPS_300, (),
        lambda d: f"({d['train_steps'] * 8:,} training instances, {d['train_steps'] * 8 / d['train_instances']:.2f} "
                  f"epochs;"),
    fig(BENCHMARKS, ROWS_ARE, STEPS_300, ("ner_strict_f1",), "is {:.3f} strict"),
    fig(BENCHMARKS, ROWS_ARE, END_TO_END, ("ner_strict_f1",), "against {:.3f} at 100 steps"),
    fig(BENCHMARKS, ROWS_ARE, STEPS_300, ("re_strict_f1_end_to_end",), "relation F1 {:.3f} against"),
    fig(BENCHMARKS, ROWS_ARE, END_TO_END, ("re_strict_f1_end_to_end",), "against {:.3f}: the model"),
    figs(BENCHMARKS, RE_MODE, [(END_TO_END, ("re_strict_f1_end_to_end",)), (OURS, ("re_strict_f1_end_to_end",))],
         lambda v: f"({v[0]:.3f} against {v[1]:.3f} strict"),
    fig(BENCHMARKS, RE_MODE, OURS, ("re_strict_f1_gold_entities",), "MACCROBAT ({:.3f}"),
    fig(BENCHMARKS, SPEED, TRAIN_SPEED, ("clientapp", "instances_per_second"), "At {:.1f} instances/s"),
    fig(BENCHMARKS, SPEED, OURS, (), lambda d: f"sees {d['train_steps'] * 8} instances in {d['train_steps']} steps"),
    fig(BENCHMARKS, SPEED, OURS, (), lambda d: f"another {(d['seconds'] - d['train_seconds']) / 60:.0f} minutes"),

    # --- docs/benchmarks.md: training settings and constrained decoding; the generated tables
    # are also regenerated from their JSON by tests/test_lr_sweep.py -------------------------
    fig(BENCHMARKS, "The training defaults (`train.learning-rate`", LR_SWEEP, ("settings",),
        lambda s: f"scored on {s['validation-instances']} validation instances of each set"),
    fig(BENCHMARKS, "The training defaults (`train.learning-rate`", LR_SWEEP, ("best",),
        lambda b: f"The defaults are the best federated arm, `{b['arm']}`: `train.learning-rate` "
                  f"{power_of_ten(b['learning-rate'], '.1e')} for A, `train.loraplus-lr-ratio` "
                  f"{b['loraplus-lr-ratio']:g} (B at {power_of_ten(b['learning-rate'] * b['loraplus-lr-ratio'])})"),
    *lr_sweep_rows(),
    *own_rate_figures(),
    fig(BENCHMARKS, "Measured on the validation splits with the federated adapter", CONSTRAINED["maccrobat"],
        ("instances",), "the same {} instances per set"),
    *constrained_rows(),

    # --- docs/benchmarks.md: the paper's protocol -------------------------------------------
    fig(BENCHMARKS, PROFILES, RESULTS, (*QUICK, "budget", "total-steps"), "included, {} steps,"),
    fig(BENCHMARKS, PROFILES, RESULTS, STANDARD,
        lambda p: f"each federated site {p['rounds']} rounds x {p['steps']} steps of 4, a single site the same "
                  f"{p['rounds'] * p['steps']} steps alone, centralized the sites' sum, "
                  f"{3 * p['rounds'] * p['steps']} steps, on the pooled data), {p['test_instances']} test sentences "
                  f"per in-domain split and {p['external_instances']} on ADE"),
    fig(BENCHMARKS, QUICK_ITEM, RESULTS, (*QUICK, "seconds"), lambda s: f"{s / 60:.0f} min from"),
    fig(BENCHMARKS, QUICK_ITEM, RESULTS, (*QUICK, "gap", "fedmedlora", "ner-strict"),
        lambda x: f"is {points(x)} points for Fed-MedLoRA and"),
    fig(BENCHMARKS, QUICK_ITEM, RESULTS, (*QUICK, "gap", "fedmedlora-plus", "ner-strict"),
        lambda x: f"and {points(x)} for Fed-MedLoRA+"),
    fig(BENCHMARKS, QUICK_ITEM, RESULTS, (*QUICK, "half_width", "maccrobat"), "±{:.1f} (MACCROBAT)"),
    fig(BENCHMARKS, QUICK_ITEM, RESULTS, (*QUICK, "half_width", "ddi-drugbank"), "±{:.1f} points (DDI-DrugBank)"),
    fig(BENCHMARKS, QUICK_ITEM, RESULTS,
        (*QUICK, "scores", "single-maccrobat", "maccrobat", "scores", "re-strict-f1", "value"), "({:.3f} strict)"),
    fig(BENCHMARKS, QUICK_ITEM, RESULTS, (*QUICK, "speed", "loop", "ratio"), "at {:.1%} of"),
    fig(BENCHMARKS, QUICK_ITEM, RESULTS, (*QUICK, "communication", "upload-ratio-to-full-model"), "is {:.2%} of"),
    fig(BENCHMARKS, "- `standard`, with the training defaults", RESULTS,
        ("profiles", "standard", "seconds"), lambda s: f"complete: {s / 60:.0f} min over"),
    fig(BENCHMARKS, "- the Fed-MedLoRA global adapter as it is:", RESULTS, (*STANDARD_ARMS, "new-site/fedmedlora"),
        lambda a: f"as it is: {a['scores']['ner-strict-f1']['value']:.3f};"),
    figs(BENCHMARKS, "- with the training defaults (LoRA+, B's rate",
         [(RESULTS, (*STANDARD_ARMS, f"new-site/{arm}", "scores", "ner-strict-f1", "value"))
          for arm in ("new-site-alone", "new-site-from-global")],
         lambda v: f"alone: {v[0]:.3f}, and the global adapter adapted on them: {v[1]:.3f}."),
    figs(BENCHMARKS, "- as plain LoRA (`train.loraplus-lr-ratio = 0`",
         [(RESULTS, (*STANDARD_ARMS, f"new-site/{arm}/plain-lora", "scores", "ner-strict-f1"))
          for arm in ("new-site-alone", "new-site-from-global")],
         lambda v: "alone: {:.3f} [{:.3f}, {:.3f}], and the global adapter adapted on them: {:.3f} [{:.3f}, {:.3f}]".format(
             *(x for f1 in v for x in (f1["value"], f1["low"], f1["high"])))),
    fig(BENCHMARKS, "- `standard`, with the training defaults", RESULTS, ("profiles", "standard", "invocations", 3),
        lambda i: f"added the new site's two plain-LoRA arms ({i['seconds'] / 60:.0f} min,"),
    fig(BENCHMARKS, "- `standard`, with the training defaults", RESULTS, ("profiles", "standard", "invocations", 2),
        lambda i: f"alone on this machine: {i['seconds'] / 60:.0f} min for "
                  f"{sum(not a.startswith('run/') for a in i['arms'])} arms"),
    fig(BENCHMARKS, "- under label skew (below)", CLAIMS, ("claims", "a=fedmedlora-plus-skew&b=fedmedlora-skew"),
        lambda c: f"MACCROBAT: {claim(c)}, {c['verdict']}"),
    fig(BENCHMARKS, "- under label skew (below)", *strict("fedmedlora-skew", "maccrobat"), "scores {:.3f} there"),
    fig(BENCHMARKS, "- at equal instances (each site alone", CLAIMS,
        ("claims", "a=fedmedlora&b=equal-instances/single-chia"), lambda c: f"(CHIA): {claim(c)}, {c['verdict']}"),
    fig(BENCHMARKS, "- at equal instances (each site alone", CLAIMS,
        ("claims", "claim=fedmedlora beats the best single site (equal-instances/single-maccrobat) on the external "
                   "set at equal instances"), lambda c: f"MACCROBAT alone: {claim(c)}, {c['verdict']}"),
    figs(BENCHMARKS, "- at equal instances (each site alone",
         [strict("equal-instances/single-maccrobat", "maccrobat"), strict("single-maccrobat", "maccrobat")],
         lambda v: f"scores {v[0]:.3f} on its own test set ({v[1]:.3f} with 72)"),
    fig(BENCHMARKS, "- Fed-MedLoRA beats the best single site (CHIA) in-domain:", CLAIMS,
        ("claims", "a=fedmedlora&b=single-chia"),
        lambda c: f"{points(c['estimate'])} points [{points(c['low'])}, {points(c['high'])}], {c['verdict']}"),
    fig(BENCHMARKS, "- Fed-MedLoRA beats the best single site (CHIA) in-domain:", CLAIMS,
        ("claims", "a=fedmedlora-plus&b=single-chia"), lambda c: f"Fed-MedLoRA+ by {claim(c)}, {c['verdict']}"),
    fig(BENCHMARKS, "- Fed-MedLoRA within 2 points of centralized:", CLAIMS, ("claims", "a=fedmedlora&b=centralized"),
        lambda c: f"{claim(c)}, {c['verdict']}"),
    fig(BENCHMARKS, "- Fed-MedLoRA within 2 points of centralized:", CLAIMS,
        ("claims", "a=fedmedlora-plus&b=centralized"), lambda c: f"Fed-MedLoRA+: {claim(c)}, {c['verdict']}"),
    fig(BENCHMARKS, "- Fed-MedLoRA+ beats Fed-MedLoRA:", CLAIMS, ("claims", "claim=fedmedlora-plus beats fedmedlora"),
        lambda c: f"{claim(c)}, {c['verdict']}"),
    fig(BENCHMARKS, "- on ADE, Fed-MedLoRA against the best single site there", CLAIMS,
        ("claims", "a=fedmedlora&b=single-maccrobat"), lambda c: f"recall: {claim(c)}, {c['verdict']}"),
    fig(BENCHMARKS, "- centralized NER strict F1 on MACCROBAT is", *strict("centralized", "maccrobat"),
        "is {:.3f} (the target"),
    fig(BENCHMARKS, RE_F1, *strict("centralized", "maccrobat", "re-strict-f1"), "{:.3f} on MACCROBAT"),
    fig(BENCHMARKS, RE_F1, *strict("centralized", "chia", "re-strict-f1"), "{:.3f} on CHIA"),
    fig(BENCHMARKS, RE_F1, *strict("centralized", "ddi-drugbank", "re-strict-f1"), "and {:.3f} on DDI-DrugBank"),
    figs(BENCHMARKS, RE_F1, [strict("fedmedlora", t, "re-strict-f1") for t in SITES],
         lambda v: f"Fed-MedLoRA's is {max(v):g} on every set"),
    figs(BENCHMARKS, UNALIGNED, [(RESULTS, (*STANDARD_ARMS, arm, test, "unaligned"))
                                 for arm in ARMS_RECORDED for test in (*SITES, "ade")],
         lambda v: "is 0 for every arm and test set." if not any(v) else f"is not 0 for {in_words(sum(map(bool, v)))}"),
    fig(BENCHMARKS, "[RESULTS.md](RESULTS.md) is the generated report", "docs/benchmarks/standard_before.json",
        ("seconds",), lambda s: f"({s / 60:.0f} min)"),
    *(figs(BENCHMARKS, LOSES, [strict("fedmedlora", t), strict(f"single-{t}", t)],
           lambda v, name=name: f"{name} {v[0]:.3f} against {v[1]:.3f}")
      for t, name in (("maccrobat", "MACCROBAT"), ("chia", "CHIA"), ("ddi-drugbank", "DDI-DrugBank"))),
    figs(BENCHMARKS, LOSES, [strict("fedmedlora", "ade", "ner-strict-recall"),
                             strict("single-maccrobat", "ade", "ner-strict-recall")],
         lambda v: f"entity recall {v[0]:.3f} against {v[1]:.3f} for MACCROBAT alone"),
    found_by_type("maccrobat", "drug", "finds {found} of MACCROBAT's {total} drug mentions (MACCROBAT alone {alone})"),
    found_by_type("maccrobat", "test", "{found} of its {total} tests ({alone})"),
    found_by_type("maccrobat", "bodyloc", "{found} of its {total} body locations ({alone})"),
    found_by_type("ade", "drug", "on ADE {found} of {total} drugs ({alone})"),
    *(fig(BENCHMARKS, line, CLAIMS, ("claims", f"claim={arm} beats fedmedlora on {where}"),
          lambda c, shown=shown: shown.format(claim=claim(c), verdict=c["verdict"]))
      for line, arm, where, shown in (
          ("- Fed-MedLoRA+ (weights from each site's", "fedmedlora-plus", "MACCROBAT",
           "MACCROBAT: {claim}, {verdict}"),
          ("- Fed-MedLoRA+ (weights from each site's", "fedmedlora-plus", "the external set",
           "recall: {claim}, {verdict}"),
          ("- equal weights (`fedmedlora-equal`)", "fedmedlora-equal", "MACCROBAT", "MACCROBAT: {claim}, {verdict}"),
          ("- equal weights (`fedmedlora-equal`)", "fedmedlora-equal", "the external set",
           "ADE: {claim}, {verdict}"))),
    figs(BENCHMARKS, "- Fed-MedLoRA+ (weights from each site's",
         [strict("fedmedlora-plus", "maccrobat"), strict("fedmedlora", "maccrobat"),
          strict("single-maccrobat", "maccrobat")],
         lambda v: f"closes {100 * (v[0] - v[1]):.1f} points of the gap between the federation ({v[1]:.3f}) and "
                   f"MACCROBAT alone ({v[2]:.3f})"),
    fig(BENCHMARKS, "Fed-MedLoRA+ finds", *per_type("fedmedlora-plus", "maccrobat", "test"),
         lambda v: f"finds {v[0]} of MACCROBAT's {v[0] + v[2]} tests"),
    fig(BENCHMARKS, "Fed-MedLoRA+ finds", *per_type("fedmedlora-plus", "ade", "drug"),
         lambda v: f"{v[0]} of ADE's {v[0] + v[2]} drugs"),
    figs(BENCHMARKS, "Fed-MedLoRA+ finds", [strict("fedmedlora-plus", "chia"), strict("fedmedlora", "chia")],
         lambda v: f"({v[0]:.3f} against {v[1]:.3f} under size weights)"),
    figs(BENCHMARKS, "Fed-MedLoRA+ finds", [strict("fedmedlora-plus", "ade", "ner-strict-recall"),
                                           strict("single-maccrobat", "ade", "ner-strict-recall")],
         lambda v: f"({v[0]:.3f} for Fed-MedLoRA+ against {v[1]:.3f})"),

    # --- docs/benchmarks.md: federation overhead ----------------------------------------------
    fig(BENCHMARKS, "`python -m benchmarks.protocol --profile quick --only overhead` runs", OVERHEAD, ("settings",),
        lambda s: f"({s['sites']} sites, {s['rounds']} rounds x {s['steps']} steps,"),
    overhead_row("wall", lambda d: f"{d['wall_seconds']:.1f} s"),
    overhead_row("overhead (share of wall)", lambda d: f"{d['overhead_fraction']:.0%}"),
    overhead_row("startup (once per run)", lambda d: f"{d['startup_seconds']:.1f} s"),
    overhead_row("time between work, per round", lambda d: f"{d['between_work_seconds_per_round']:.1f} s"),
    overhead_row("- process start", lambda d: seconds_or_zero(d["split_per_round"]["process start"])),
    overhead_row("- imports, model load, data load", loads),
    overhead_row("- polling and transfer", lambda d: seconds_or_zero(d["split_per_round"]["polling and transfer"])),
    fig(BENCHMARKS, SIZE, OVERHEAD, ("deployment", "after"),
        lambda d: f"({d['wall_seconds'] * (1 - d['overhead_fraction']):.0f} s of work in the deployment) "
                  f"the one-time startup, {d['startup_seconds']:.1f} s,"),
    fig(BENCHMARKS, SIZE, OVERHEAD, ("deployment", "after", "split_per_round", "process start"),
        lambda s: f"({s / 2:.1f} s each"),  # two messages per site and round: train, evaluate
    fig(BENCHMARKS, SIZE, OVERHEAD, ("deployment", "no_site_workers", "split_per_round"),
        lambda s: f"spends {s['imports'] + s['model load'] + s['data load']:.1f} s on"),

    # --- docs/benchmarks.md: training speed and the GPU figures --------------------------------
    fig(BENCHMARKS, "A site trains on instances whose prompts", TRAIN_SPEED, ("setup", "timed_batches"),
        lambda b: f"(MACCROBAT: {b['prefix_tokens'] / b['tokens']:.0%}"),
    fig(BENCHMARKS, "MACCROBAT, batch 8, SmolLM2-135M in float32", TRAIN_SPEED, ("setup", "timed_batches"),
        lambda b: f"({b['instances']} instances, {b['tokens']:,} tokens)"),
    fig(BENCHMARKS, "| loop | instances/s | tokens/s | probe loss", TRAIN_SPEED, ("clientapp", "initial_loss"),
        "(at start: {:.4f})"),
    *(fig(BENCHMARKS, f"| {label} |", TRAIN_SPEED, (arm,),
          lambda a, label=label: f"| {label} | {a['instances_per_second']:.2f} | {a['tokens_per_second']:.0f} | "
                                 f"{a['final_loss']:.4f} |")
      for arm, label in (("clientapp", "ClientApp loop"), ("peft", "plain PEFT loop"), ("trl", "TRL `SFTTrainer`"))),
    fig(BENCHMARKS, "The ClientApp loop is", TRAIN_SPEED, ("ratios",),
        lambda r: f"is {r['clientapp/peft']:.2f}x the plain PEFT loop and {r['clientapp/trl']:.2f}x TRL"),
    figs(BENCHMARKS, "The ClientApp loop is",
         [(TRAIN_SPEED, (arm, "final_loss")) for arm in ("clientapp", "peft", "trl")],
         lambda v: f"(the {power_of_ten(max(v) - min(v))} spread"),
    *(gpu_row(name) for name in GPU),
    figs(BENCHMARKS, REPEATS, [(source, ()) for source in GPU.values()], gpu_spread),
    figs(BENCHMARKS, REPEATS, [(source, ("runs",)) for source in GPU.values()],
         lambda v: f"steps of {span([1000 * r['seconds'] / r['steps'] for runs in v for r in runs], '.0f')} ms"),
    figs(BENCHMARKS, REPEATS, [(source, ("peak-gpu-mb",)) for source in GPU.values()],
         lambda v: f"save {span([p['peft-loop'] - p['fedmedlora'] for p in v], '.0f')} MB"),
    fig(BENCHMARKS, GPU_CHECK, GPU["LLaMA-3-8B"], ("device",), "on an {} (torch"),
    fig(BENCHMARKS, GPU_CHECK, GPU["LLaMA-3-8B"], ("torch",), "(torch {},"),

    # --- docs/installation.md: the 8B shape ------------------------------------------------------
    fig(INSTALLATION, "4. **Memory and speed.**", GPU["LLaMA-3-8B"], ("trainable-parameters",),
        lambda n: f"{n / 1e6:.1f} M trainable"),
    fig(INSTALLATION, "- peak GPU memory", GPU["LLaMA-3-8B"], ("peak-gpu-mb", "fedmedlora"), "**{:,.0f} MB**"),
    fig(INSTALLATION, "tokens/s** in the ClientApp's training loop", GPU["LLaMA-3-8B"],
        ("median-tokens-per-second", "fedmedlora"), "**{:,.0f} tokens/s**"),
    fig(INSTALLATION, "5. **The adapter on the wire.**", GPU["LLaMA-3-8B"], ("trainable-parameters",),
        lambda n: f"has {n / 1e6:.1f} M parameters"),

    # --- docs/strategies.md: aggregation cost at LLaMA-3-8B shapes ---------------------------------
    *(fig(STRATEGIES, row, AGGREGATION, ("strategies", arm),
          lambda d: f"| {d['seconds']:.2f} | {d['peak_mb']:.0f} |")
      for row, arm in (('| `exact`, `strategy.exact-solver = "randomized"` |', "exact-randomized"),
                       ('| `exact`, `"svd"` |', "exact"), ("| `fedmedlora`, the size-weighted mean |", "fedmedlora"),
                       ("| `ffa-lora`, B only |", "ffa-lora"))),
    figs(STRATEGIES, "The randomized solver is", [(AGGREGATION, ("strategies", arm, "seconds"))
                                                  for arm in ("exact", "exact-randomized")],
         lambda v: f"is {v[0] / v[1]:.1f} times faster than the SVD"),
    fig(STRATEGIES, "The randomized solver is", AGGREGATION, ("strategies", "fedmedlora", "seconds"),
        "already takes {:.2f} s here"),
]


@cache
def statements(doc: str) -> tuple[str, ...]:
    """The page as statements: a table row, a heading, a line of a code block, or a
    paragraph or list item with its wrapped lines joined by one space."""
    found: list[str] = []
    current: list[str] = []
    in_code = False

    def flush() -> None:
        if current:
            found.append(" ".join(current))
            current.clear()

    for line in (REPO / doc).read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if text.startswith("```") or in_code:
            flush()
            in_code = in_code != text.startswith("```")
            found.append(line)
        elif not text or text.startswith(("|", "#", "<!--")):
            flush()
            if text:
                found.append(text)
        else:
            if re.match(r"(- |\* |\d+\. )", text):
                flush()
            current.append(text)
    flush()
    return tuple(found)


def problem(figure: Figure, load: Callable[[str], Any] | None = None) -> str | None:
    """Why `figure`'s page does not show the JSON's value, or None when it does."""
    row = figure.line.startswith("|")  # a table row is picked out by its first cells
    lines = [line for line in statements(figure.doc)
             if (line.startswith(figure.line) if row else figure.line in line)]
    if len(lines) != 1:
        return f"{figure.doc}: {len(lines)} statements contain {figure.line!r}; it must pick out one"
    value = figure.value(load)
    expected = figure.shown(value)
    # a number must not be part of a longer one: 0.18 is not shown by 0.180, nor 15 s by 1,015 s
    before = r"(?<![\d.,])" if expected[:1].isdigit() else ""
    after = r"(?![\d]|[.,]\d)" if expected[-1:].isdigit() else ""
    if re.search(before + re.escape(expected) + after, lines[0]):
        return None
    return (f"{figure.doc}: the statement with {figure.line!r} should show {expected!r}, from "
            f"{figure.sources} = {reprlib.repr(value)}; it reads:\n  {lines[0].strip()}")


@pytest.mark.parametrize("figure", FIGURES, ids=lambda f: f"{f.doc}:{f.line.strip()[:40]}")
def test_the_page_shows_the_figure_its_json_holds(figure: Figure) -> None:
    message = problem(figure)
    assert message is None, message


def _changed(value: Any, key: str = "") -> Any:
    """Every number of `value` moved, by a factor that depends on its key, so that ratios
    move too (strings kept): what a rerun of the benchmark could write."""
    factor = 1.5 + 0.25 * (zlib.crc32(key.encode()) % 7)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return round(value * factor) + 7
    if isinstance(value, float):
        return value * factor + 1.01
    if isinstance(value, dict):
        return {k: _changed(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_changed(v, key) for v in value]
    return value


def test_a_changed_json_value_is_caught() -> None:
    """Each figure's check reads its JSON: with every number of the files moved, every figure
    made of numbers fails."""
    missed = [f"{figure.doc}: {figure.line!r}" for figure in FIGURES
              if _changed(figure.value()) != figure.value() and problem(figure, lambda s: _changed(_json(s))) is None]
    assert missed == []


def test_the_figures_come_from_committed_json_in_docs() -> None:
    sources = {source for figure in FIGURES for source, _ in figure.values}
    assert all(source.startswith("docs/") and source.endswith(".json") for source in sources), sources
    assert {figure.doc for figure in FIGURES} == {README, BENCHMARKS, INSTALLATION, STRATEGIES, TOKEN_DOC}


ABSOLUTE = re.compile(rb'"/(work|tmp|home|root)/')


def test_committed_docs_name_no_folder_of_the_machine_they_were_made_on() -> None:
    """`git grep -E '"/(work|tmp|home|root)/' -- docs` finds nothing: paths in committed
    results and pages are relative to the repository."""
    offenders = {str(path.relative_to(REPO)): [m.group().decode() for m in ABSOLUTE.finditer(path.read_bytes())]
                 for path in sorted((REPO / "docs").rglob("*")) if path.is_file()}
    assert {path: found for path, found in offenders.items() if found} == {}
