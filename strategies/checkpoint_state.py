"""What a strategy stack carries from one round to the next, for the ServerApp's checkpoints.

A layer with `state_dict()` / `load_state_dict(state)` gives and takes its own: `LoraFedAvg`
and its subclasses, and our wrappers, which keep nothing and hand on the state of what they
wrap. Flower's strategies have no such methods: theirs are the attributes listed in
`FLOWER_STATE` (server optimiser moments, adaptive clipping's norm), and a DP wrapper adds
the state of the strategy it wraps under "wrapped" (its own, if it has one, under "own").
"""

from __future__ import annotations

from collections.abc import Mapping
from logging import WARNING
from typing import Any

from flwr.common.logger import log
from flwr.serverapp.strategy import Strategy

from .flower_compat import FLOWER_STATE


def strategy_state(strategy: Strategy) -> dict[str, Any]:
    """What `strategy`, and any strategy it wraps, keeps between rounds."""
    own = getattr(strategy, "state_dict", None)
    if callable(own):
        return own()
    state: dict[str, Any] = {}
    for cls, attributes in FLOWER_STATE:
        if isinstance(strategy, cls):
            state.update({name: getattr(strategy, name) for name in attributes})
    wrapped = getattr(strategy, "strategy", None)  # Flower's DP wrappers
    if isinstance(wrapped, Strategy):
        inner = getattr(wrapped, "state_dict", None)
        state["wrapped"] = {"own": inner()} if callable(inner) else strategy_state(wrapped)
    return state


def load_strategy_state(strategy: Strategy, state: Mapping[str, Any]) -> None:
    """Put back what `strategy_state` returned; raises ValueError if a part is missing."""
    own = getattr(strategy, "load_state_dict", None)
    if callable(own):
        own(state)
        return
    name = type(strategy).__name__
    known = False
    for cls, attributes in FLOWER_STATE:
        if isinstance(strategy, cls):
            known = True
            for attribute in attributes:
                if attribute not in state:
                    raise ValueError(f"{name}: the saved state has no {attribute!r}")
                setattr(strategy, attribute, state[attribute])
    wrapped = getattr(strategy, "strategy", None)
    if isinstance(wrapped, Strategy):
        inner = getattr(wrapped, "load_state_dict", None)
        if callable(inner):
            inner(state.get("wrapped", {}).get("own", {}))
        else:
            load_strategy_state(wrapped, state.get("wrapped", {}))
    elif not known and not type(strategy).__module__.startswith(("flwr.", f"{__package__}.")):
        # Flower's classes and ours (strategies/flower.py) keep nothing else; a plugin may.
        log(WARNING, "%s declares no state between rounds (no state_dict/load_state_dict): if it keeps "
            "any, the continued run starts it afresh", name)
