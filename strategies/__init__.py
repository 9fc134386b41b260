"""Aggregation strategies for federated LoRA, their registry (`strategy.name`), and the
wrappers every run puts around the chosen one (`compose`)."""

from importlib.util import find_spec

from .base import LoraFedAvg
from .clipping import UPDATE_NORM_ACTIONS, dp_clipping_mod, scale_toward, update_norm, update_terms
from .compose import WrapperSettings, compose
from .dp import DP_MODES, DPSettings
from .fedmedlora import FedMedLoRA
from .fedmedlora_equal import FedMedLoRAEqual
from .fedmedlora_plus import FedMedLoRAPlus
from .fedsa_lora import FedSALoRA
from .fedsvd import FedSVD
from .ffa_lora import FFALoRA
from .flower import (
    LoraFedAdam,
    LoraFedAvgM,
    LoraFedMedian,
    LoraFedProx,
    LoraFedTrimmedAvg,
    LoraFedYogi,
    LoraKrum,
)
from .registry import STRATEGIES, available_strategies, register, strategy_class
from .rolora import RoLoRA
from .round_report import Aggregate, RoundReport, SiteUpdate, TooFewSites
from .screened import ScreenedStrategy
from .screening import SiteCandidate, UpdateRejected
from .wrapper import StrategyWrapper

# Importing a strategy module registers its names; exact.py lands separately.
if find_spec(f"{__name__}.exact") is not None:
    from . import exact  # noqa: F401

__all__ = [
    "DP_MODES",
    "STRATEGIES",
    "UPDATE_NORM_ACTIONS",
    "Aggregate",
    "DPSettings",
    "FedMedLoRA",
    "FedMedLoRAEqual",
    "FedMedLoRAPlus",
    "FedSALoRA",
    "FedSVD",
    "FFALoRA",
    "LoraFedAdam",
    "LoraFedAvg",
    "LoraFedAvgM",
    "LoraFedMedian",
    "LoraFedProx",
    "LoraFedTrimmedAvg",
    "LoraFedYogi",
    "LoraKrum",
    "RoLoRA",
    "RoundReport",
    "ScreenedStrategy",
    "SiteCandidate",
    "SiteUpdate",
    "StrategyWrapper",
    "TooFewSites",
    "UpdateRejected",
    "WrapperSettings",
    "available_strategies",
    "compose",
    "dp_clipping_mod",
    "register",
    "scale_toward",
    "strategy_class",
    "update_norm",
    "update_terms",
]
