"""FedSA-LoRA: A is shared (averaged), each site keeps its own B.

Guo et al., "Selective Aggregation for Low-Rank Adaptation in Federated Learning"
(ICLR 2025): A learns what the sites have in common, B what is particular to each, so
under heterogeneity each site is served the shared A with its own B.

What "the global adapter" means here:
- each site, after a round, is sent the averaged A with the B it trained itself
  (`configure_train` and `configure_evaluate`: every site is scored with its own B);
- the round's returned adapter, which the coordinator scores and `final/` holds, is the
  averaged A with the size-weighted average of the B's: the adapter for a new site that
  has no B of its own;
- `final/sites/<site>/` holds each site's own adapter, as PEFT folders
  (`personal_adapters`); the checkpoint keeps every site's B (`state_dict`).

The sites send A and B: the coordinator needs each B to serve it back and to write the
sites' adapters, so this strategy cannot run under secure aggregation (settings/config.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from .base import LoraFedAvg, with_arrays
from .lora_algebra import lora_modules
from .registry import register
from .screening import SiteCandidate


@dataclass
class SiteB:
    """One site's own B tensors, by key, and the name it reported."""

    site: str
    b: dict[str, np.ndarray]


@register("fedsa-lora")
class FedSALoRA(LoraFedAvg):
    """Size-weighted FedAvg of A shared by all; each site trains from, and is scored with, its
    own B. Sites are told apart by node id, as Flower addresses them: a site that comes back
    with another node id (a restarted simulation) starts again from the averaged B."""

    personalised = True  # settings/config.py refuses what this rules out

    def __init__(self, expected_shapes: Mapping[str, Sequence[int]] | None = None, **fedavg_kwargs: Any) -> None:
        self.site_b: dict[int, SiteB] = {}  # node id -> its own B
        super().__init__(expected_shapes=expected_shapes, **fedavg_kwargs)

    # --- each site its own B ---------------------------------------------------------

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        return self._personalised(list(super().configure_train(server_round, arrays, config, grid)), arrays)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        return self._personalised(list(super().configure_evaluate(server_round, arrays, config, grid)), arrays)

    def _personalised(self, messages: list[Message], arrays: ArrayRecord) -> list[Message]:
        out = []
        for message in messages:
            own = self.site_b.get(message.metadata.dst_node_id)
            if own is None:  # not seen yet: the averaged B
                out.append(message)
                continue
            record = ArrayRecord({key: Array(own.b[key]) if key in own.b else arrays[key] for key in arrays.keys()})
            out.append(with_arrays(message, record))
        return out

    def weighted_average(self, accepted: list[SiteCandidate], weights: list[float]) -> ArrayRecord:
        """The new-site adapter (averaged A and B); each site's own B is kept."""
        averaged = super().weighted_average(accepted, weights)
        b_keys = [m.b_key for m in lora_modules(self._require_expected())]
        for candidate in accepted:
            self.site_b[candidate.node_id] = SiteB(
                candidate.site, {key: np.array(candidate.state[key], dtype=np.float32) for key in b_keys})
        return averaged

    def personal_adapters(self, global_state: Mapping[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
        """Each site's adapter by site name: the averaged A of `global_state` with its own B."""
        return {own.site: {key: own.b.get(key, value) for key, value in global_state.items()}
                for _, own in sorted(self.site_b.items())}

    # --- state between rounds (checkpoints) ---------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"sites": [{"node-id": node, "site": own.site, "b": dict(own.b)}
                          for node, own in sorted(self.site_b.items())]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.site_b = {int(entry["node-id"]): SiteB(str(entry["site"]),
                                                    {str(k): np.asarray(v, np.float32) for k, v in entry["b"].items()})
                       for entry in state.get("sites", [])}
