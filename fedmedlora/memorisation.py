"""`fedmedlora audit`: how much of one site's training notes the adapters memorise.

Canary sentences (clinical_ie/canaries.py) go into one site's training data, `repeats`
copies each; the federation trains as configured, once per variant:

- `plain`: Fed-MedLoRA as the run config says (its global adapter is what every site gets;
  the canary site's own adapter of the last round, what the coordinator sees without
  secure aggregation, is trained again from the previous global adapter with the ClientApp's
  own data and training code);
- `dp`: the same with `strategy.dp = "server-fixed"` at `--dp-epsilon` (noise multiplier
  from dp-accounting for the plain run's largest site weight, clipping norm the plain run's
  first-round global update norm);
- `secure-aggregation`: the same with `strategy.secure-aggregation = true`.

Every adapter, and the base model as the control, is then asked about every canary
(docs/threat-model.md, "Memorisation audit"):

- exposure (Carlini et al. 2019): the canary's answer log-likelihood ranked among those of
  `--alternatives` other secrets of the same space; exposure = log2(candidates) - log2(rank),
  from 0 (ranked last) to log2(candidates) (ranked first); a model that knows nothing of the
  secret ranks it anywhere: 1.3 bits on average among 32;
  in context (the secret in the sentence, as trained) and withheld (the sentence with a
  blank, so the model must recall the secret);
- extraction: greedy decoding of the withheld sentence; extracted when the answer holds
  the secret.

Everything finished is kept under `--out` (the sites, the runs, `audit.json`) and reused
when the command is run again with the same settings.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from settings.config import RunConfig

log = logging.getLogger(__name__)

VARIANTS = ("plain", "dp", "secure-aggregation")
ADAPTERS = ("base model", "site adapter", "global adapter", "global adapter, DP", "global adapter, SecAgg+")


class AuditError(ValueError):
    """A setting the audit cannot run with; the message names the option or key."""


@dataclass(frozen=True)
class AuditSettings:
    canary_site: str = ""  # one of data.sites; "" = the first
    repeats: tuple[int, ...] = (1, 16, 128)
    per_level: int = 2
    alternatives: int = 31
    dp_epsilon: float = 8.0
    variants: tuple[str, ...] = VARIANTS
    seed: int = 0

    def check(self) -> None:
        if not self.repeats or any(r < 1 for r in self.repeats):
            raise AuditError(f"--repeats {list(self.repeats)}: expected counts >= 1")
        if self.per_level < 1:
            raise AuditError(f"--per-level {self.per_level}: expected an integer >= 1")
        if not 1 <= self.alternatives < 16383:
            raise AuditError(f"--alternatives {self.alternatives}: expected an integer in [1, 16382]")
        if self.dp_epsilon <= 0:
            raise AuditError(f"--dp-epsilon {self.dp_epsilon}: expected a number > 0")
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown or "plain" not in self.variants:
            raise AuditError(f"--variants {list(self.variants)}: expected 'plain' and any of {list(VARIANTS[1:])}")


# --- measuring -----------------------------------------------------------------------------

def exposure(rank: int, candidates: int) -> float:
    return math.log2(candidates) - math.log2(rank)


def score_canaries(model, tokenizer, canaries: Sequence, entity_types: tuple[str, ...], cfg: RunConfig,
                   alternatives: int, seed: int) -> list[dict[str, Any]]:
    """Exposure in context and withheld, and greedy extraction, of every canary under the
    model's current adapter."""
    from clinical_ie.canaries import alternatives as draw_alternatives
    from clinical_ie.evaluate import InstanceEvaluator
    from clinical_ie.prompt import PREFIX_END, build_messages, target_text
    from modeling.training import encode_all, instance_answer_losses

    max_length, batch = cfg.train.max_length, cfg.eval.batch_size
    rows = []
    withheld = [c.instance(entity_types, withheld=True) for c in canaries]
    outputs = InstanceEvaluator(tokenizer, withheld, max_length, cfg.eval.max_new_tokens, batch).generate(
        model, "canaries: greedy extraction")
    for canary, prompt, output in zip(canaries, withheld, outputs, strict=True):
        names = [canary.secret, *draw_alternatives(canary.secret, alternatives, random.Random(f"{seed}:{canary.doc_id}"))]
        pairs = []
        for name in names:  # in context: the name in the sentence and in the answer
            inst = canary.with_secret(name).instance(entity_types)
            pairs.append((build_messages(inst), target_text(inst)))
        for name in names:  # withheld: a blank in the sentence, the name in the answer
            pairs.append((build_messages(prompt), target_text(canary.with_secret(name).instance(entity_types))))
        encoded, dropped = encode_all(tokenizer, pairs, max_length, PREFIX_END)
        if dropped:
            raise AuditError(f"train.max-length={max_length}: too short for the canary prompts ({dropped} dropped)")
        losses = [loss for loss, _ in instance_answer_losses(model, encoded, tokenizer.pad_token_id, batch)]
        row = {"canary": canary.doc_id, "repeats": canary.repeats, "secret": canary.secret,
               "extracted": canary.secret in output, "output": output}
        for mode, part in (("in-context", losses[: len(names)]), ("withheld", losses[len(names):])):
            rank = 1 + sum(loss < part[0] for loss in part[1:])
            row[mode] = {"rank": rank, "candidates": len(names), "exposure": exposure(rank, len(names))}
        rows.append(row)
    return rows


# --- the canary site and the runs --------------------------------------------------------------

def write_canary_site(site, target: Path, canaries: Sequence) -> tuple[str, ...]:
    """The loaded site's documents (read from any site format) and every canary copy as a
    JSONL site folder; returns the site's entity types."""
    from data_loaders.jsonl import write_jsonl

    name, source = site.name, site.data_dir
    documents = [d for split in ("train", "validation", "test") for d in site.splits[split]]
    taken = {d.doc_id for d in documents}
    copies = [c.document(k) for c in canaries for k in range(c.repeats)]
    clash = sorted(taken & {d.doc_id for d in copies})
    if clash:
        raise AuditError(f"{source}: document id(s) {clash[:3]} clash with the canaries' ids")
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_jsonl(documents + copies, tmp / "documents.jsonl")
    (tmp / "site.json").write_text(json.dumps({
        "name": name, "entity_types": list(site.entity_types), "relation_types": list(site.relation_types),
        **({"score_by": site.score_by} if site.score_by else {})}, indent=2) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return site.entity_types


def first_update_norm(run: Path, initial: Mapping[str, Any]) -> float:
    """L2 norm, over every A and B array, of the global adapter's change in round 1."""
    import numpy as np

    from modeling.adapter_io import load_peft_folder

    after = load_peft_folder(run / "round-1")
    return float(np.sqrt(sum(float(np.sum((after[k].astype(np.float64) - initial[k]) ** 2)) for k in after)))


def largest_weight(run: Path) -> float:
    """The largest site weight of a finished run's first round (its `metrics.jsonl`)."""
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["round"] == 1:
            return max(site["weight"] for site in record["sites"])
    raise RuntimeError(f"{run / 'metrics.jsonl'} has no record of round 1")


def noise_for(epsilon: float, rounds: int, delta: float) -> float:
    """The smallest noise multiplier (rounded up to 1e-3) whose `rounds` rounds spend at most epsilon."""
    from strategies.dp_budget import DpBudget

    low, high = 0.3, 200.0
    while high - low > 1e-4:
        mid = (low + high) / 2
        low, high = (mid, high) if DpBudget(mid, delta).epsilon(rounds) > epsilon else (low, mid)
    return math.ceil(high * 1000) / 1000


def run_audit(app: Path, overrides: Mapping[str, Any], out: Path, settings: AuditSettings) -> dict[str, Any]:
    """Write the canary site, train every variant, score every adapter; `audit.json` under `out`."""
    from client_app.runtime import site_runtime
    from clinical_ie.canaries import make_canaries
    from data_loaders.sites import ensure_demo_corpus, load_site
    from fedmedlora.deploy import free_ports
    from fedmedlora.local_run import flwr_run
    from modeling.adapter_io import get_adapter_state, load_peft_folder, save_peft_folder, set_adapter_state
    from modeling.base import load_base_model, resolve_model_path
    from modeling.lora import attach_lora
    from modeling.training import train_round
    from settings.config import validate

    settings.check()
    cfg = validate(dict(overrides))
    if cfg.data.max_train_instances:
        raise AuditError("data.max-train-instances: the audit needs every canary copy in training; set it to 0")
    if cfg.strategy.name not in ("fedmedlora", "fedprox") and {"dp", "secure-aggregation"} & set(settings.variants):
        raise AuditError(f"strategy.name = {cfg.strategy.name!r}: the dp and secure-aggregation variants need "
                         "fedmedlora or fedprox; pass --variants plain")
    names = cfg.site_names()
    canary_site = settings.canary_site or names[0]
    if canary_site not in names:
        raise AuditError(f"--canary-site {canary_site!r} is not one of data.sites {names}")
    root = Path(cfg.data.root).expanduser() if cfg.data.root else ensure_demo_corpus()
    out = out.resolve()
    recorded = {"run-config": {k: v for k, v in sorted(cfg.as_dict().items()) if k in overrides}, "audit": {
        "canary-site": canary_site, "repeats": list(settings.repeats), "per-level": settings.per_level,
        "alternatives": settings.alternatives, "dp-epsilon": settings.dp_epsilon, "seed": settings.seed}}
    settings_file = out / "settings.json"
    if settings_file.is_file() and json.loads(settings_file.read_text()) != json.loads(json.dumps(recorded)):
        raise AuditError(f"--out {out} holds an audit made with other settings ({settings_file}); use another --out")
    out.mkdir(parents=True, exist_ok=True)
    settings_file.write_text(json.dumps(recorded, indent=2) + "\n")

    sites = out / "sites"
    sites.mkdir(exist_ok=True)
    source = load_site(root / canary_site, name=canary_site)
    probe_types = source.entity_types
    canaries = make_canaries(settings.repeats, settings.per_level, probe_types, settings.seed)
    if not (sites / canary_site / "site.json").is_file():
        write_canary_site(source, sites / canary_site, canaries)
    for name in names:
        link = sites / name
        if name != canary_site and not link.exists():
            link.symlink_to((root / name).resolve(), target_is_directory=True)

    base = {**overrides, "data.root": str(sites), "output-dir": str(out / "runs")}
    # The audit's own model, its adapter initialised as the ServerApp initialises the run's.
    base_model, tokenizer = load_base_model(cfg.model.name, cfg.quantization, cfg.model.dtype)
    model = attach_lora(base_model, cfg.lora_settings(), seed=cfg.seed,
                        base_model_name=resolve_model_path(cfg.model.name))
    initial = get_adapter_state(model)

    def run(variant: str, keys: Mapping[str, Any]) -> Path:
        folder = out / "runs" / f"audit-{variant}"
        if not (folder / "summary.json").is_file():
            shutil.rmtree(folder, ignore_errors=True)
            run_overrides = {**base, **keys, "run-name": f"audit-{variant}"}
            validate(run_overrides)
            log.info("audit: training the %s variant", variant)
            http_port, control_port = free_ports(2)
            with open(out / f"audit-{variant}.log", "w") as stream:
                code = flwr_run(app, out / ".flwr-home", run_overrides, num_supernodes=len(names),
                                http_port=http_port, control_port=control_port, stdout=stream)
            if code != 0 or not (folder / "summary.json").is_file():
                raise RuntimeError(f"the {variant} run failed (exit {code}); see {out / f'audit-{variant}.log'}")
        return folder / "final"

    adapters: dict[str, Any] = {"base model": initial, "global adapter": load_peft_folder(run("plain", {}))}
    plain = out / "runs" / "audit-plain"
    dp_keys: dict[str, Any] = {}
    if "dp" in settings.variants:
        rounds = cfg.num_server_rounds
        # Fed-MedLoRA weighs by size: the noise that spends --dp-epsilon towards the largest
        # site is the equal-weight one times sites x its weight (strategies/dp_budget.py).
        scale = len(names) * largest_weight(plain)
        noise = math.ceil(noise_for(settings.dp_epsilon, rounds, cfg.strategy.dp_delta) * scale * 1000) / 1000
        dp_keys = {"strategy.dp": "server-fixed",
                   "strategy.dp-noise-multiplier": noise,
                   "strategy.dp-clipping-norm": round(first_update_norm(plain, initial), 4),
                   "strategy.dp-num-sampled-sites": len(names)}
        adapters["global adapter, DP"] = load_peft_folder(run("dp", dp_keys))
    if "secure-aggregation" in settings.variants:
        adapters["global adapter, SecAgg+"] = load_peft_folder(run("secure-aggregation",
                                                                   {"strategy.secure-aggregation": True}))

    # The canary site's own adapter of the last round: its ClientApp's training from the
    # global adapter it received (the previous round's), with its own data and settings.
    site_folder = out / "site-adapter"
    rounds = cfg.num_server_rounds
    if not (site_folder / "adapter_model.safetensors").is_file():
        run_cfg = validate(dict(base))
        site = site_runtime({"partition-id": names.index(canary_site)}, run_cfg, tokenizer)
        start = initial if rounds == 1 else load_peft_folder(plain / f"round-{rounds - 1}")
        set_adapter_state(model, start)
        train_round(model, site.train, run_cfg.train_settings(), tokenizer.pad_token_id,
                    server_round=rounds, num_rounds=rounds, description=f"{canary_site} round {rounds}")
        save_peft_folder(get_adapter_state(model), model.peft_config["default"], site_folder)
    adapters["site adapter"] = load_peft_folder(site_folder)

    train_instances = count_training_instances(sites / canary_site, canary_site, cfg)
    seen = min(1.0, cfg.train_settings().steps_per_round(train_instances) * cfg.train_settings().batch_size
               / train_instances) * rounds
    results: dict[str, Any] = {
        "canary-site": canary_site, "site-training-instances": train_instances,
        "expected-times-seen-per-copy": seen, "dp": dp_keys, "canaries": [
            {"canary": c.doc_id, "repeats": c.repeats, "secret": c.secret, "text": c.text} for c in canaries],
        "adapters": {}}
    for name in ADAPTERS:
        if name not in adapters:
            continue
        set_adapter_state(model, adapters[name])
        log.info("audit: scoring the %s", name)
        results["adapters"][name] = score_canaries(model, tokenizer, canaries, probe_types, cfg,
                                                   settings.alternatives, settings.seed)
    results["table"] = summary_table(results)
    (out / "audit.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def count_training_instances(folder: Path, name: str, cfg: RunConfig) -> int:
    """Training instances of the canary site as its ClientApp builds them (every task)."""
    from clinical_ie.evaluate import site_instances
    from data_loaders.sites import load_site
    return len(site_instances(load_site(folder, name=name), "train", cfg.tasks(), cfg.data.re_mode))


def summary_table(results: Mapping[str, Any]) -> list[str]:
    """Markdown: per adapter and repetition count, median exposure in context and withheld,
    and how many canaries greedy decoding extracted."""
    levels = sorted({c["repeats"] for c in results["canaries"]})
    head = "| adapter | " + " | ".join(f"{r} cop{'y' if r == 1 else 'ies'}: exposure in context / withheld, extracted"
                                        for r in levels) + " |"
    lines = [head, "|---|" + "---:|" * len(levels)]
    for name, rows in results["adapters"].items():
        cells = []
        for level in levels:
            chosen = [r for r in rows if r["repeats"] == level]
            median = (statistics.median(r["in-context"]["exposure"] for r in chosen),
                      statistics.median(r["withheld"]["exposure"] for r in chosen))
            cells.append(f"{median[0]:.1f} / {median[1]:.1f}, {sum(r['extracted'] for r in chosen)}/{len(chosen)}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines

