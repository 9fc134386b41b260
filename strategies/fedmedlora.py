"""Fed-MedLoRA: size-weighted FedAvg over the LoRA A and B tensors.

Li et al. 2026, "A Federated and Parameter-Efficient Framework for Large Language Model
Training in Medicine" (arXiv 2601.22124).
"""

from __future__ import annotations

from .base import LoraFedAvg
from .registry import register


@register("fedmedlora")
class FedMedLoRA(LoraFedAvg):
    """Fed-MedLoRA (Li et al. 2026, arXiv 2601.22124).

    Each site trains only the LoRA adapter of a frozen base model and sends it; the
    coordinator averages every adapter tensor, A and B separately as the paper does, with
    weights proportional to the site's number of training instances (`num-examples`).
    Malformed updates are rejected one by one (see `LoraFedAvg`).

    Parameters
    ----------
    expected_shapes : Mapping[str, Sequence[int]] | None (default: None)
        Keys and shapes of the global adapter (see `LoraFedAvg`).
    **fedavg_kwargs
        Passed to FedAvg (sampling and record keys).
    """
