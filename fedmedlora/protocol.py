"""What travels between the coordinator and a site, besides the adapter arrays.

Each round the coordinator names the base model (name and weight hash) and the LoRA
configuration; a site whose own differ refuses, so adapters of different bases are
never averaged. Site replies carry only arrays, scalar metrics and the site's name.
"""

from __future__ import annotations

from typing import Any, Mapping

from modeling.base import ModelIdentity
from modeling.lora import LoraSettings

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
SITE = "site"

# Metric keys every site returns, identical everywhere (FedAvg requires it).
TRAIN_METRIC_KEYS = ("num-examples", "train-loss", "train-tokens", "train-seconds", "train-steps")


class BaseModelMismatch(RuntimeError):
    pass


def base_config(identity: ModelIdentity, lora: LoraSettings, num_rounds: int) -> dict[str, Any]:
    return {
        "num-server-rounds": num_rounds,
        "base-model": identity.name,
        "base-sha256": identity.sha256,
        **{f"lora-{k}": v for k, v in lora.as_dict().items()},
    }


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
