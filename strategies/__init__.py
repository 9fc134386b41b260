"""Aggregation strategies for federated LoRA, and their registry (`strategy.name`)."""

from .base import LoraFedAvg, RoundReport, SiteCandidate, SiteUpdate, UpdateRejected
from .fedmedlora import FedMedLoRA
from .fedmedlora_plus import FedMedLoRAPlus
from .registry import STRATEGIES, available_strategies, register, strategy_class

__all__ = [
    "STRATEGIES",
    "FedMedLoRA",
    "FedMedLoRAPlus",
    "LoraFedAvg",
    "RoundReport",
    "SiteCandidate",
    "SiteUpdate",
    "UpdateRejected",
    "available_strategies",
    "register",
    "strategy_class",
]
