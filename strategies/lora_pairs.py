"""The LoRA pairs of an adapter: which keys are one module's A (rank x in) and B (out x rank)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

A_SUFFIX = ".lora_A.weight"
B_SUFFIX = ".lora_B.weight"


@dataclass(frozen=True)
class LoraModule:
    """One LoRA pair of the global adapter: A is (rank, in_features), B is (out_features, rank)."""

    prefix: str
    rank: int
    in_features: int
    out_features: int

    @property
    def a_key(self) -> str:
        return self.prefix + A_SUFFIX

    @property
    def b_key(self) -> str:
        return self.prefix + B_SUFFIX


def lora_modules(shapes: Mapping[str, tuple[int, ...]]) -> list[LoraModule]:
    """The LoRA pairs of an adapter's shapes, in key order; a key without its partner is not one."""
    modules = []
    for key, a_shape in shapes.items():
        if not key.endswith(A_SUFFIX):
            continue
        prefix = key[: -len(A_SUFFIX)]
        b_shape = shapes.get(prefix + B_SUFFIX)
        if b_shape is None or len(a_shape) != 2 or len(b_shape) != 2 or a_shape[0] != b_shape[1]:
            continue
        modules.append(LoraModule(prefix, rank=a_shape[0], in_features=a_shape[1], out_features=b_shape[0]))
    return modules
