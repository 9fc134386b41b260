"""What travels between the coordinator and a site, besides the adapter arrays.

Each round the coordinator names the base model (name and weight hash) and the LoRA
configuration; a site whose own differ refuses, so adapters of different bases are
never averaged. Site replies carry only arrays, scalar metrics and the site's name.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol


class ModelIdentity(Protocol):
    """What names a base model (`modeling.base.ModelIdentity`); typed here so this layer
    does not import torch."""

    name: str
    sha256: str


class LoraSettings(Protocol):
    """The LoRA configuration (`modeling.lora.LoraSettings`)."""

    def as_dict(self) -> dict[str, Any]: ...

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
SITE = "site"

# Every coordinator message carries the head of the coordinator's audit trail when it was
# sent (a ConfigRecord AUDIT: its line count and the hash of its last line), and a site
# records both in its own trail, so the site's file shows what the coordinator's chain was
# at each message (server_app/audit_trail.py, client_app/audit_log.py).
AUDIT = "audit"
AUDIT_LINES = "coordinator-lines"
AUDIT_HEAD = "coordinator-head"

# Metric keys every site returns, identical everywhere (FedAvg requires it).
TRAIN_METRIC_KEYS = ("num-examples", "train-loss", "train-tokens", "train-seconds", "train-steps", "train-end-time",
                     "optimizer-restored", "frozen-parameters", "frozen-unchanged")

# Site-side scoring (Fed-MedLoRA+ with strategy.validation = "sites"): the coordinator sends
# the round's K candidate adapters as ArrayRecords `candidate-0` .. `candidate-{K-1}` with the
# round's CONFIG record, in a message of type SCORE_MESSAGE_TYPE (routed to the ClientApp's
# `@app.evaluate(SCORE_ACTION)` handler). The site replies with a MetricRecord holding the K
# losses in candidate order (SCORE_LOSSES), how many validation instances and answer tokens
# it scored them on, and its SITE record.
SCORE_ACTION = "score"
SCORE_MESSAGE_TYPE = f"evaluate.{SCORE_ACTION}"
CANDIDATE_PREFIX = "candidate-"
SCORE_LOSSES = "candidate-loss"
SCORE_INSTANCES = "num-examples"
SCORE_TOKENS = "num-tokens"


# Which LoRA factors a site trains and which it sends back this round (a strategy's
# `factor_rule`): "AB" (both, the default when the keys are absent), "A" or "B". A factor
# not trained stays bit-identical to the one the coordinator sent; a factor not sent is not
# in the reply, and the coordinator fills it in from the adapter it sent. Tensors that are
# neither a LoRA A nor a B are always trained and sent.
TRAIN_FACTORS = "train-factors"
SEND_FACTORS = "send-factors"
FACTORS = ("AB", "A", "B")


def factor_of(key: str) -> str | None:
    """"A" or "B" for a LoRA factor's state-dict key or parameter name, else None."""
    if ".lora_A." in key:
        return "A"
    if ".lora_B." in key:
        return "B"
    return None


def factor_rule(config: Mapping[str, Any]) -> tuple[str, str]:
    """(train, send) factors of a train instruction; raises MalformedMessage on another value."""
    rule = []
    for key in (TRAIN_FACTORS, SEND_FACTORS):
        value = config.get(key, "AB")
        if value not in FACTORS:
            raise MalformedMessage(f"train instruction: config[{key!r}] must be one of {FACTORS}, got {value!r}")
        rule.append(str(value))
    return rule[0], rule[1]


def selected_factors(state: Mapping[str, Any], factors: str) -> dict[str, Any]:
    """The entries of an adapter state that belong to `factors` (and every non-factor tensor)."""
    return {k: v for k, v in state.items() if factor_of(k) in (None, *factors)}


def candidate_name(index: int) -> str:
    return f"{CANDIDATE_PREFIX}{index}"


def candidate_records(content) -> list:
    """The candidate ArrayRecords of a scoring message, in candidate order.

    Raises MalformedMessage unless they are named `candidate-0` .. `candidate-{K-1}` with K >= 1.
    """
    records = content.array_records
    names = [name for name in records if name.startswith(CANDIDATE_PREFIX)]
    expected = [candidate_name(i) for i in range(len(names))]
    if not names or sorted(names) != sorted(expected):
        raise MalformedMessage(f"scoring message: expected ArrayRecords {CANDIDATE_PREFIX}0.."
                         f"{CANDIDATE_PREFIX}<K-1>, got {sorted(records)}")
    return [records[name] for name in expected]


class BaseModelMismatch(RuntimeError):
    pass


class MalformedMessage(ValueError):
    """A coordinator message lacks what its type needs (names records only, safe to report)."""


# Token classification (model.task): the entity types of the head's BIO labels, in order. The
# coordinator fixes them (model.label-types, or the union of the folders it reads) and every
# train, evaluate and score message carries them, so each site builds the same head; a
# generative run's messages do not have the key.
LABEL_TYPES = "label-types"


def base_config(identity: ModelIdentity, lora: LoraSettings, num_rounds: int,
                label_types: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "num-server-rounds": num_rounds,
        "base-model": identity.name,
        "base-sha256": identity.sha256,
        **{f"lora-{k}": v for k, v in lora.as_dict().items()},
        **({LABEL_TYPES: list(label_types)} if label_types else {}),
    }


def label_types(config: Mapping[str, Any]) -> tuple[str, ...]:
    """The label types a token-classification message carries; MalformedMessage without them."""
    value = config.get(LABEL_TYPES)
    if not isinstance(value, list) or not value or not all(isinstance(t, str) and t for t in value):
        raise MalformedMessage(f"token-classification message: config[{LABEL_TYPES!r}] must be a non-empty list "
                               f"of entity types, got {value!r}")
    return tuple(value)


def check_base(config: Mapping[str, Any], identity: ModelIdentity, lora: LoraSettings) -> None:
    """Raise unless the coordinator's base model and LoRA config equal this site's."""
    theirs = {k: config.get(k) for k in ("base-model", "base-sha256")}
    ours = {"base-model": identity.name, "base-sha256": identity.sha256}
    if theirs != ours:
        raise BaseModelMismatch(
            f"base model differs: the coordinator uses {theirs['base-model']} "
            f"(sha256 {str(theirs['base-sha256'])[:12]}), this site has {identity.name} "
            f"(sha256 {identity.sha256[:12]}); check model.name and the checkpoint files"
        )
    for key, value in lora.as_dict().items():
        if config.get(f"lora-{key}") != value:
            raise BaseModelMismatch(
                f"lora.{key} differs: the coordinator uses {config.get(f'lora-{key}')!r}, "
                f"this site {value!r}"
            )


# Packages whose versions a site reports with its adapter (the coordinator's audit trail).
REPORTED_PACKAGES = ("fedmedlora", "flwr", "torch", "transformers", "peft", "bitsandbytes", "accelerate")


def package_versions() -> dict[str, str]:
    """The installed versions of REPORTED_PACKAGES ("not installed" where absent)."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in REPORTED_PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def site_report(identity: ModelIdentity, dtype: str = "") -> dict[str, str]:
    """The base model, the dtype it computes in and the package versions a site reports in
    its train reply's `site` record (the round table's `reported`)."""
    return {"base-model": identity.name, "base-sha256": identity.sha256, "dtype": dtype,
            "versions": json.dumps(package_versions(), sort_keys=True)}
