"""A strategy's factor rule at the site: train only some LoRA factors, send only some.

The coordinator's train instruction names them (`wire.protocol.factor_rule`); FFA-LoRA,
for one, has every site train and send only B. A factor that is not trained is taken out
of the optimizer (requires_grad off for the round), so it leaves the round bit-identical to
what the coordinator sent; the site checks that and reports it (`frozen-unchanged`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from wire import protocol


class Frozen:
    """The parameters frozen for a round, and copies of them to check against afterwards."""

    def __init__(self, params: list[torch.nn.Parameter]) -> None:
        self.params = params
        self._before = [p.detach().clone() for p in params]

    def unchanged(self) -> bool:
        """Every frozen parameter bit-identical to what it was when the round began."""
        return all(torch.equal(p.detach(), before) for p, before in zip(self.params, self._before, strict=True))


@contextmanager
def trained_factors(model, factors: str) -> Iterator[Frozen]:
    """Freeze the LoRA factors not in `factors` ("AB", "A" or "B") for the block. The cached
    model is shared by every round, so the block always gives them back."""
    frozen = Frozen([p for name, p in model.named_parameters()
                     if p.requires_grad and protocol.factor_of(name) not in (None, *factors)])
    for p in frozen.params:
        p.requires_grad_(False)
    try:
        yield frozen
    finally:
        for p in frozen.params:
            p.requires_grad_(True)
