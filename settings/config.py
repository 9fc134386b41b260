"""The run configuration: every key, typed, with its default, help text, valid choices and
range, in one place (the section dataclasses below, after PEFT's ``LoraConfig``).

`pyproject.toml`'s `[tool.flwr.app.config]` block (the defaults Flower distributes) and
the table in docs/configuration.md are generated from these sections (`python -m
settings.reference`; tests/test_config.py checks both). `validate` checks what arrives (from
pyproject, `--run-config`, or a CLI) before any work starts, so a typo stops a run with the
valid choices listed; everything downstream reads the validated, complete mapping.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from clinical_ie.instances import DEFAULT_RE_MODE, RE_MODES
from data_loaders.schema import check_types
from modeling.base import DTYPE_CHOICES, EMBEDDED_DEFAULT, QUANTIZATION_CHOICES
from modeling.lora import PAPER_TARGET_MODULES, LoraSettings
from modeling.token_classification import GENERATIVE, MODEL_TASKS, TOKEN_CLASSIFICATION
from modeling.training import SCHEDULER_CHOICES, TrainSettings
from strategies.clipping import UPDATE_NORM_ACTIONS
from strategies.dp import DP_MODES
from strategies.exact import EXACT_SOLVERS
from strategies.fedmedlora_plus import VALIDATION_MODES
from wire.transport import ENCODINGS


def setting(default: Any, help: str, choices: tuple[Any, ...] | None = None,
            check: Callable[[Any], bool] | None = None, expected: str = "") -> Any:
    """A config field: its default, one line of help, and the valid values (``choices``, or
    ``check`` with the ``expected`` text an error shows)."""
    return field(default=default, metadata={"help": help, "choices": choices, "check": check, "expected": expected})


def _at_least(low: float) -> Callable[[Any], bool]:
    return lambda v: v >= low


@dataclass(frozen=True)
class RunSection:
    """Keys without a section prefix."""

    num_server_rounds: int = setting(3, "federated rounds", check=_at_least(1), expected="an integer >= 1")
    output_dir: str = setting("outputs", "folder for run outputs (resolved to an absolute path)")
    audit_key: str = setting("", "HMAC-SHA256 key file sealing the run's audit.jsonl, outside the run folder, "
                                 "created (mode 0600) if absent; empty = output-dir/audit.key")
    run_name: str = setting("", "name of this run's folder under output-dir; empty = date and time")
    resume: bool = setting(False, "continue the run in output-dir/run-name from its last finished round "
                                  "(its checkpoint.npz); needs run-name")
    seed: int = setting(0, "seed of the initial adapter and data order")
    quantization: str = setting("auto", "base weights: auto = 4bit (NF4, bitsandbytes) on CUDA, none on CPU",
                                QUANTIZATION_CHOICES)


@dataclass(frozen=True)
class ModelSection:
    name: str = setting(EMBEDDED_DEFAULT, "base model: the embedded default, a local HF checkpoint folder or a Hub id")
    dtype: str = setting("auto", "compute dtype; auto = bf16/fp16 on CUDA, on a CPU bf16 where a measured bf16 "
                                 "matmul beats fp32, else fp32 (decided at start-up and logged)", DTYPE_CHOICES)
    task: str = setting(GENERATIVE, "generative = prompts answered in JSON (entities and relations, the paper); "
                                    "token-classification = BIO tags over the entity types from a classification "
                                    "head sent with the LoRA factors (entities only, needs data.tasks = 'ner'; "
                                    "docs/token-classification.md)", MODEL_TASKS)
    label_types: str = setting("", "token-classification: the entity types of the head's BIO labels, "
                                   "comma-separated, in order; empty = the union of the entity types of the "
                                   "data.sites folders and the coordinator's validation folder, read by the "
                                   "coordinator and sent to the sites")


# LoRA and training defaults are those of modeling's own settings classes (one place); the
# demo's cap on local steps is the run configuration's own.
@dataclass(frozen=True)
class LoraSection:
    r: int = setting(LoraSettings.r, "LoRA rank (the paper's)")
    alpha: int = setting(LoraSettings.alpha, "LoRA alpha (the paper's)")
    dropout: float = setting(LoraSettings.dropout, "LoRA dropout")
    target_modules: str = setting(",".join(PAPER_TARGET_MODULES), "comma-separated module names (the paper's: all 7 "
                                                                 "projections)")


@dataclass(frozen=True)
class TrainSection:
    learning_rate: float = setting(TrainSettings.learning_rate, "peak learning rate, chosen on validation "
                                   "(docs/benchmarks.md; the paper's 2e-4 is for 1B-8B models)")
    batch_size: int = setting(TrainSettings.batch_size, "instances per step")
    local_epochs: float = setting(TrainSettings.local_epochs, "local epochs per round (the paper's)")
    max_steps: int = setting(12, "cap on local steps per round; 0 = no cap (the demo caps to fit a CPU)")
    warmup_ratio: float = setting(TrainSettings.warmup_ratio, "share of all steps spent warming up")
    lr_scheduler: str = setting(TrainSettings.lr_scheduler, "learning-rate schedule across all rounds", SCHEDULER_CHOICES)
    max_grad_norm: float = setting(TrainSettings.max_grad_norm, "gradient clipping; 0 = none")
    max_length: int = setting(TrainSettings.max_length, "longest instance in tokens; longer ones are dropped (and counted), never truncated")
    loraplus_lr_ratio: float = setting(TrainSettings.loraplus_lr_ratio, "LoRA+: B's learning rate over A's "
                                       "(PEFT's create_loraplus_optimizer); 0 = one rate for both",
                                       check=lambda v: v == 0 or v >= 1, expected="0 (off) or a number >= 1")
    keep_optimizer_state: bool = setting(TrainSettings.keep_optimizer_state, "a site keeps its AdamW moments from "
                                         "round to round (in Flower's per-node Context.state); false = a fresh "
                                         "optimizer every round, as the reference implementation")


@dataclass(frozen=True)
class StrategySection:
    name: str = setting("fedmedlora", "aggregation strategy: a registered name (fedmedlora, fedmedlora-equal, fedmedlora-plus, exact, "
                                      "ffa-lora, rolora, fedsa-lora, fedsvd, "
                                      "Flower's fedprox, fedavgm, fedadam, fedyogi, fedtrimmedavg, fedmedian, krum) "
                                      "or package.module:Class")
    temperature: float = setting(1.0, "Fed-MedLoRA+: weights exp((1 - L_k) / T)", check=lambda v: v > 0,
                                 expected="a number > 0")
    size_weighted: bool = setting(False, "Fed-MedLoRA+: also multiply weights by n_k")
    validation: str = setting("coordinator", "Fed-MedLoRA+: who computes L_k: the coordinator on its validation "
                                             "set (the paper), or every site on its own (K adapters down per site)",
                              VALIDATION_MODES)
    validation_instances: int = setting(64, "Fed-MedLoRA+ coordinator mode: validation instances L_k is computed on, "
                                            "chosen by hash; 0 = all (default: docs/architecture.md, \"Coordinator "
                                            "scoring\")", check=_at_least(0), expected="an integer >= 0 (0 = all)")
    exact_rank: str = setting("", "exact: rank of the global adapter, an integer or 'full'; empty = lora.r")
    exact_solver: str = setting("svd", "exact: 'svd' (two QRs and the small core's SVD: the best rank-r "
                                       "factors) or 'randomized' (a range finder: sketch of 2r columns, one "
                                       "power iteration; for large models and many sites)",
                                EXACT_SOLVERS)
    aggregation_error: bool = setting(True, "report ||sum p_k B_k A_k - B A|| / ||sum p_k B_k A_k|| every round "
                                            "(O((out + in) R^2) per module, R the sites' summed rank)")
    min_sites: int = setting(3, "sites that must be connected before a round starts and reply usably for it to "
                                "count; fewer stops the run", check=_at_least(1), expected="an integer >= 1")
    fraction_train: float = setting(1.0, "share of connected sites sampled per round", check=lambda v: 0 < v <= 1,
                                    expected="a number in (0, 1]")
    round_timeout: float = setting(3600.0, "seconds to wait for the sites' replies, per exchange; a site that does "
                                           "not answer in time is left out of the round, by name")
    proximal_mu: float = setting(0.0, "FedProx term mu/2 ||w - w_global||^2 at every site (any strategy); 0 = off",
                                 check=_at_least(0), expected="a number >= 0")
    server_learning_rate: float = setting(0.0, "fedavgm/fedadam/fedyogi server step; 0 = default (1.0 / 5e-3 / 3e-3)",
                                          check=_at_least(0), expected="a number >= 0 (0 = the strategy's default)")
    server_momentum: float = setting(0.5, "fedavgm server momentum in [0, 1); 0 = plain FedAvg, Hsu et al. use 0.9 "
                                          "(overshoots in a few rounds)",
                                     check=lambda v: 0 <= v < 1, expected="a number in [0, 1)")
    trim_beta: float = setting(0.2, "fedtrimmedavg: share cut from each tail, in [0, 0.5)",
                               check=lambda v: 0 <= v < 0.5, expected="a number in [0, 0.5)")
    krum_byzantine: int = setting(0, "krum: malicious sites tolerated (needs more than 2f + 2 sites)",
                                  check=_at_least(0), expected="an integer >= 0")
    max_update_norm: float = setting(0.0, "bound on a site's ||B_k A_k - B A|| summed over modules; 0 = off",
                                     check=_at_least(0), expected="a number >= 0 (0 = off)")
    update_norm_action: str = setting("clip", "update over the bound: scale it toward the global, or reject it",
                                      UPDATE_NORM_ACTIONS)
    dp: str = setting("none", "Flower's central DP: clipping at the coordinator or the sites, fixed or adaptive",
                      DP_MODES)
    dp_noise_multiplier: float = setting(1.0, "DP: noise std = multiplier x clipping norm / sites sampled",
                                         check=_at_least(0), expected="a number >= 0")
    dp_clipping_norm: float = setting(1.0, "DP: clipping norm of the A/B update (adaptive: the initial one)",
                                      check=lambda v: v > 0, expected="a number > 0")
    dp_num_sampled_sites: int = setting(0, "DP: sites the noise is divided among, at most strategy.min-sites; 0 = strategy.min-sites",
                                        check=_at_least(0), expected="an integer >= 0 (0 = strategy.min-sites)")
    dp_delta: float = setting(1e-5, "DP: the delta of the (epsilon, delta) a run reports",
                              check=lambda v: 0 < v < 1, expected="a number in (0, 1)")
    dp_max_epsilon: float = setting(0.0, "DP: refuse a run whose epsilon after num-server-rounds would exceed "
                                         "this; 0 = no limit",
                                    check=_at_least(0), expected="a number >= 0 (0 = no limit)")
    secure_aggregation: bool = setting(False, "Flower's SecAgg+: the coordinator learns only the size-weighted sum "
                                              "of the sites' adapters (fedmedlora, fedprox; docs/threat-model.md)")
    secagg_clipping_range: float = setting(1.0, "SecAgg+: a site's adapter values, scaled by its weight, must lie "
                                                "in [-range, range]; quantization step = 2 range / 2^24",
                                           check=lambda v: v > 0, expected="a number > 0")
    secagg_max_weight: int = setting(10000, "SecAgg+: the largest training-instance count a site may have; its "
                                            "weight is count / this",
                                     check=_at_least(1), expected="an integer >= 1")


@dataclass(frozen=True)
class TransportSection:
    encoding: str = setting("float32", "adapter tensors on the wire, both directions: float32, float16 (half the "
                                       "bytes) or int8 (a quarter, plus one scale per tensor)", ENCODINGS)


@dataclass(frozen=True)
class DataSection:
    root: str = setting("", "folder holding one sub-folder per site; empty = the generated demo corpus")
    sites: str = setting("site-a,site-b,site-c", "simulation: site folder for each partition-id")
    server_validation: str = setting("", "the coordinator's validation folder (Fed-MedLoRA+, round scores); "
                                         "empty = the demo coordinator set")
    tasks: str = setting("ner,re", "instance kinds trained and scored: ner, re, or both (multi-task)")
    re_mode: str = setting(DEFAULT_RE_MODE, "relation instances: given-entities = the sentence's entities listed, "
                                            "relations answered as pairs of their numbers (evaluation also scores "
                                            "entity extraction then relations end to end); end-to-end = the model "
                                            "copies both argument texts", RE_MODES)
    max_train_instances: int = setting(0, "cap on training instances per site; 0 = all", check=_at_least(0),
                                       expected="an integer >= 0")


@dataclass(frozen=True)
class EvalSection:
    max_instances: int = setting(16, "validation instances scored by generation per evaluation; 0 = all",
                                 check=_at_least(0), expected="an integer >= 0")
    max_new_tokens: int = setting(64, "generation budget per answer")
    batch_size: int = setting(16, "prompts generated together")
    constrained: bool = setting(True, "constrained decoding: entity strings and relation arguments can only be "
                                       "copied from the sentence, keys only the types asked, given-entities "
                                       "numbers only 1..N (modeling/constrained.py); every scoring (coordinator, sites, "
                                       "fedmedlora evaluate) and fedmedlora extract")


# Section prefix -> section; a key is "<prefix>.<field name with - for _>" ("" = no prefix).
SECTIONS: dict[str, type] = {
    "": RunSection, "model": ModelSection, "lora": LoraSection, "train": TrainSection,
    "strategy": StrategySection, "transport": TransportSection, "data": DataSection, "eval": EvalSection,
}
_TYPES = {"int": int, "float": float, "bool": bool, "str": str}


@dataclass(frozen=True)
class RunConfig(RunSection):
    """A validated run configuration: the keys without a prefix as attributes
    (``cfg.num_server_rounds``), each section as one (``cfg.train.learning_rate``).

    Built by `validate` only; ``as_dict()`` gives the dotted keys back (Flower's run config,
    checkpoints, the audit trail)."""

    model: ModelSection = field(default_factory=ModelSection)
    lora: LoraSection = field(default_factory=LoraSection)
    train: TrainSection = field(default_factory=TrainSection)
    strategy: StrategySection = field(default_factory=StrategySection)
    transport: TransportSection = field(default_factory=TransportSection)
    data: DataSection = field(default_factory=DataSection)
    eval: EvalSection = field(default_factory=EvalSection)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RunConfig:
        """From a complete mapping of dotted keys (what `validate` has checked)."""
        sections: dict[str, Any] = {}
        for prefix, section in SECTIONS.items():
            kwargs = {f.name: values[_key(prefix, f.name)] for f in fields(section)}
            if prefix:
                sections[prefix] = section(**kwargs)
            else:
                sections.update(kwargs)
        return cls(**sections)

    def as_dict(self) -> dict[str, Any]:
        """Every key, dotted, as in pyproject.toml and `--run-config`."""
        out: dict[str, Any] = {}
        for prefix in SECTIONS:
            section = getattr(self, prefix) if prefix else self
            for f in fields(SECTIONS[prefix]):
                out[_key(prefix, f.name)] = getattr(section, f.name)
        return out

    def tasks(self) -> tuple[str, ...]:
        return tuple(t.strip() for t in self.data.tasks.split(",") if t.strip())

    def token_classification(self) -> bool:
        return self.model.task == TOKEN_CLASSIFICATION

    def declared_label_types(self) -> tuple[str, ...]:
        """model.label-types as a tuple (empty: the coordinator takes the union of its folders')."""
        return tuple(t.strip() for t in self.model.label_types.split(",") if t.strip())

    def site_names(self) -> list[str]:
        names = [s.strip() for s in self.data.sites.split(",") if s.strip()]
        if not names:
            raise ConfigError("data.sites: expected at least one site folder name")
        return names

    def lora_settings(self) -> LoraSettings:
        modules = tuple(m.strip() for m in self.lora.target_modules.split(",") if m.strip())
        try:
            return LoraSettings(r=self.lora.r, alpha=self.lora.alpha, dropout=self.lora.dropout,
                                target_modules=modules)
        except ValueError as err:
            raise ConfigError(str(err)) from err

    def train_settings(self) -> TrainSettings:
        t = self.train
        try:
            return TrainSettings(
                learning_rate=t.learning_rate, batch_size=t.batch_size, local_epochs=t.local_epochs,
                max_steps=t.max_steps, warmup_ratio=t.warmup_ratio, lr_scheduler=t.lr_scheduler,
                max_grad_norm=t.max_grad_norm, max_length=t.max_length, seed=self.seed,
                loraplus_lr_ratio=t.loraplus_lr_ratio, keep_optimizer_state=t.keep_optimizer_state,
            )
        except ValueError as err:
            raise ConfigError(str(err)) from err

    def dp_budget(self):
        """The run's DpBudget (strategies/dp_budget.py), None without DP."""
        from strategies.dp_budget import DpBudget

        s = self.strategy
        if s.dp == "none":
            return None
        return DpBudget(float(s.dp_noise_multiplier), float(s.dp_delta), int(s.dp_num_sampled_sites or s.min_sites))


def _key(prefix: str, field_name: str) -> str:
    name = field_name.replace("_", "-")
    return f"{prefix}.{name}" if prefix else name


@dataclass(frozen=True)
class Key:
    """One key as validation and the generated references see it."""

    type: type
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    check: Callable[[Any], bool] | None = None
    expected: str = ""


def _keys() -> dict[str, Key]:
    keys = {}
    for prefix, section in SECTIONS.items():
        for f in fields(section):
            assert f.default is not MISSING, f"{section.__name__}.{f.name} needs a default"
            keys[_key(prefix, f.name)] = Key(
                _TYPES[f.type], f.default, f.metadata["help"], f.metadata["choices"], f.metadata["check"],
                f.metadata["expected"])
    return keys


KEYS: dict[str, Key] = _keys()


class ConfigError(ValueError):
    pass


def _coerce(key: str, value: Any, spec: Key) -> Any:
    if spec.type is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if spec.type is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if spec.type is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, spec.type) or isinstance(value, bool):
        raise ConfigError(f"{key}: expected {spec.type.__name__}, got {value!r} ({type(value).__name__})")
    return value


def validate(run_config: Mapping[str, Any]) -> RunConfig:
    """Check keys, types, choices and combinations; return the full, typed config with
    defaults filled in."""
    unknown = sorted(set(run_config) - set(KEYS))
    if unknown:
        close = {k: difflib.get_close_matches(k, list(KEYS), n=1) for k in unknown}
        hints = "; ".join(f"{k!r}: did you mean {c[0]!r}?" for k, c in close.items() if c)
        raise ConfigError(f"unknown config key(s) {unknown}{f' ({hints})' if hints else ''}; "
                          f"valid keys are {sorted(KEYS)}")
    values = {}
    for key, spec in KEYS.items():
        value = _coerce(key, run_config.get(key, spec.default), spec)
        if spec.choices is not None and value not in spec.choices:
            raise ConfigError(f"{key}: {value!r} is not one of {list(spec.choices)}")
        # math.isfinite also refuses nan, which passes every comparison's negation
        if spec.check is not None and not ((spec.type is not float or math.isfinite(value)) and spec.check(value)):
            raise ConfigError(f"{key}: expected {spec.expected}, got {value!r}")
        values[key] = value
    cfg = RunConfig.from_dict(values)
    if cfg.resume and not cfg.run_name.strip():
        raise ConfigError("resume = true needs run-name: the name of the run folder under output-dir to continue")
    _check_dp_noise(cfg)
    _check_dp_budget(cfg)
    if cfg.strategy.dp.startswith("client-") and cfg.transport.encoding != "float32":
        # Flower's client-side clipping mod reads the arrays a site receives and returns, which
        # would be the encoded ones; clipping and noise already bound what rounding could change.
        raise ConfigError(f"transport.encoding: {cfg.transport.encoding!r} cannot be combined with "
                          f"strategy.dp = {cfg.strategy.dp!r}; use transport.encoding = 'float32' "
                          "or a server-side DP mode")
    _check_secure_aggregation(cfg)
    tasks = cfg.tasks()
    if not tasks or any(t not in ("ner", "re") for t in tasks):
        raise ConfigError(f"data.tasks: {cfg.data.tasks!r}: expected 'ner', 're' or 'ner,re'")
    _check_model_task(cfg)
    _check_strategy_name(cfg.strategy.name)
    _check_factor_strategies(cfg)
    _check_dp_strategy(cfg)
    # Constructing the settings objects runs their own range checks.
    cfg.lora_settings()
    cfg.train_settings()
    return cfg


def _check_model_task(cfg: RunConfig) -> None:
    """Token classification tags entities only, over a label set of schema types."""
    declared = cfg.declared_label_types()
    if not cfg.token_classification():
        if declared:
            raise ConfigError(f"model.label-types = {cfg.model.label_types!r} is only read with model.task = "
                              f"{TOKEN_CLASSIFICATION!r}; leave it empty or set model.task")
        return
    if cfg.tasks() != ("ner",):
        raise ConfigError(f"data.tasks = {cfg.data.tasks!r} cannot be combined with model.task = "
                          f"{TOKEN_CLASSIFICATION!r}: BIO tags hold entities, not relations; set data.tasks = 'ner'")
    duplicates = sorted({t for t in declared if declared.count(t) > 1})
    if duplicates:
        raise ConfigError(f"model.label-types: {duplicates} listed more than once")
    try:
        check_types(list(declared), "model.label-types")
    except ValueError as err:
        raise ConfigError(str(err)) from err


def _check_dp_noise(cfg: RunConfig) -> None:
    s = cfg.strategy
    sampled = s.dp_num_sampled_sites or s.min_sites
    if s.dp != "none" and sampled > s.min_sites:
        # Flower divides the noise by `sampled`; a round may aggregate only min-sites of them,
        # whose mean then carries less noise per site than the configured multiplier says.
        raise ConfigError(
            f"strategy.dp-num-sampled-sites: {sampled} is more than strategy.min-sites = "
            f"{s.min_sites}, the sites a round is sure to aggregate; the noise would "
            "be divided among sites that may not be there. Set it to at most strategy.min-sites")
    # Flower's adaptive clipping spends part of the noise on the clipped count, whose std
    # defaults to sampled / 20; it cannot reach a noise multiplier of twice that.
    if s.dp.endswith("-adaptive") and s.dp_noise_multiplier >= 2 * sampled / 20:
        raise ConfigError(
            f"strategy.dp-noise-multiplier: {s.dp_noise_multiplier} is too large for strategy.dp = "
            f"{s.dp!r} with {sampled} sites sampled per round "
            f"(strategy.dp-num-sampled-sites / strategy.min-sites): adaptive clipping needs a "
            f"multiplier < {2 * sampled / 20:g}; use less noise, more sites or fixed clipping"
        )


def _check_dp_budget(cfg: RunConfig) -> None:
    limit = cfg.strategy.dp_max_epsilon
    budget = cfg.dp_budget()
    if budget is None or not limit:
        return
    epsilon = budget.epsilon(cfg.num_server_rounds)
    if epsilon > limit:
        raise ConfigError(
            f"strategy.dp-max-epsilon: {cfg.num_server_rounds} rounds at strategy.dp-noise-multiplier = "
            f"{cfg.strategy.dp_noise_multiplier:g} spend epsilon = {epsilon:.2f} (delta = "
            f"{cfg.strategy.dp_delta:g}), over the limit {limit:g}; raise the noise multiplier or "
            "run fewer rounds")


# A size-weighted mean is all they need (FFA-LoRA, RoLoRA and FedSVD: of the factors they send).
SECURE_AGGREGATION_STRATEGIES = ("fedmedlora", "fedprox", "ffa-lora", "rolora", "fedsvd")


def _check_secure_aggregation(cfg: RunConfig) -> None:
    """What needs each site's own adapter cannot run on their sum (docs/threat-model.md)."""
    s = cfg.strategy
    if not s.secure_aggregation:
        return
    refusals = {
        "strategy.name": (s.name not in SECURE_AGGREGATION_STRATEGIES,
                          f"{s.name!r} weighs or selects each site's own adapter; secure "
                          f"aggregation supports {list(SECURE_AGGREGATION_STRATEGIES)}"),
        "strategy.max-update-norm": (s.max_update_norm > 0,
                                     "the update-norm bound needs each site's own update; set it to 0"),
        "strategy.dp": (s.dp != "none",
                        "Flower's DP wrappers clip each site's own update at the coordinator or read it back "
                        "at the site; set strategy.dp = 'none'"),
    }
    for key, (refused, why) in refusals.items():
        if refused:
            raise ConfigError(f"strategy.secure-aggregation = true cannot be combined with {key}: {why}")
    from strategies.secure_aggregation import MAX_SITES

    if s.min_sites > MAX_SITES:
        raise ConfigError(f"strategy.min-sites = {s.min_sites} with strategy.secure-aggregation: "
                          f"the sum of more than {MAX_SITES} sites' quantized adapters passes SecAgg+'s modulus "
                          "2^32 and wraps")


def _check_dp_strategy(cfg: RunConfig) -> None:
    """Flower's DP noise is calibrated for a weighted mean of clipped updates; anything else
    (validation weights, robust selection, server optimisers, exact products) is refused."""
    from strategies.dp import averages_updates
    from strategies.registry import strategy_class

    s = cfg.strategy
    if s.dp != "none" and not averages_updates(strategy_class(s.name)):
        raise ConfigError(
            f"strategy.dp = {s.dp!r} cannot be combined with strategy.name = "
            f"{s.name!r}: Flower's DP noise bounds one site's effect on a weighted mean of "
            "clipped updates, which this strategy does not compute; use fedmedlora, fedmedlora-equal, "
            "fedprox, ffa-lora or rolora")


def _check_factor_strategies(cfg: RunConfig) -> None:
    """Combinations a strategy's LoRA factor handling rules out (docs/strategies.md, "Compatibility")."""
    from strategies.registry import strategy_class

    name, dp = cfg.strategy.name, cfg.strategy.dp
    cls = strategy_class(name)
    if not getattr(cls, "sends_every_factor", True) and dp.startswith("client-"):
        raise ConfigError(f"strategy.dp = {dp!r} cannot be combined with strategy.name = {name!r}: Flower's "
                          "client-side clipping pairs the reply's tensors with the adapter it received by "
                          f"position, and {name!r} sites reply with only some LoRA factors; use a server-side "
                          "DP mode")
    if getattr(cls, "personalised", False) and dp != "none":
        raise ConfigError(f"strategy.dp = {dp!r} cannot be combined with strategy.name = {name!r}: DP clips each "
                          "update against the global adapter, but each of its sites starts from its own B; set "
                          "strategy.dp = 'none'")


def _check_strategy_name(name: str) -> None:
    from strategies.registry import strategy_class

    try:
        strategy_class(name)
    except ValueError as err:
        raise ConfigError(str(err)) from err
