"""A toy adapter of two small tensors, "a" (2 x 2) and "b" (2 x 1), and states of it."""

from __future__ import annotations

import numpy as np

SHAPES = {"a": (2, 2), "b": (2, 1)}


def const_state(value: float) -> dict[str, np.ndarray]:
    return {k: np.full(s, value, dtype=np.float32) for k, s in SHAPES.items()}
