"""What the wrappers ask of the bare strategy at the bottom of the stack, and the answer for
one that does not say (one of Flower's strategies, a plugin).

A bare strategy is a flwr `Strategy` that holds no other; `LoraFedAvg` (strategies/base.py)
defines every hook below. Each is optional, read with `getattr` and the default given here:

- `weighted_by_key` (Flower's FedAvg family): the reply metric that weighs a site;
  default "num-examples".
- `expected_shapes` and `set_expected(shapes)`: the global adapter's keys and shapes;
  default: none kept (the screening keeps its own).
- `check_reply(msg, site) -> SiteCandidate`: the screening's check of one reply
  (`LoraFedAvg` fills in the factors a round does not send, ExactLoRA accepts other ranks);
  default: strategies/screening.py `check_reply` against the expected shapes.
- `aggregate_report(server_round, candidates) -> Aggregate`: the weight it gave each update
  it used in that round's aggregate, the ones it rejected and what the round's report
  should show; default: the `num-examples` shares (what FedAvg weighs by; FedAvgM, FedAdam
  and FedYogi average with them before their step; FedMedian and FedTrimmedAvg have no
  per-site weight and report them too).
- `reads_site_metrics`: True when it reads each site's own metrics (ExactLoRA's `lora-alpha`)
  and averages the shared ones itself; default False: it gets only the metrics every site
  reported, as Flower's metric aggregation needs.
- `product_scale(candidate, module)`: a site's LoRA scaling relative to the global
  adapter's, for the aggregation error; default 1.
- `keeps_adapter_shapes`: False when the aggregate may be wider than the global adapter
  (ExactLoRA rank "full"); default True.
- `personal_adapters(global_state)`: each site's own adapter (FedSA-LoRA); default none.
- `use_grid(grid)`: the run's Grid, handed over once by `start`, for a strategy that sends
  messages of its own between Flower's exchanges (Fed-MedLoRA+ scored at the sites).

`invariants` and `state_dict`/`load_state_dict` are read the same way (strategies/wrapper.py,
strategies/checkpoint_state.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from flwr.app import Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from .lora_algebra import LoraModule
from .round_report import Aggregate
from .screening import Shapes, SiteCandidate
from .screening import check_reply as screen_reply


def core_of(strategy: Strategy) -> Strategy:
    """The bare strategy under `strategy`: follows `strategy.strategy` down, through our
    wrappers and Flower's DP wrappers alike."""
    while isinstance(getattr(strategy, "strategy", None), Strategy):
        strategy = strategy.strategy
    return strategy


def factor_rule(strategy: Strategy, server_round: int) -> tuple[str, str]:
    """(train, send) factors of `server_round` for the bare strategy under `strategy`
    (strategies/base.py `factor_rule`); ("AB", "AB") for a strategy without one."""
    core = core_of(strategy)
    rule = getattr(core, "factor_rule", None)
    return tuple(rule(server_round)) if callable(rule) else ("AB", "AB")  # type: ignore[return-value]


def weight_key(core: Strategy) -> str:
    return str(getattr(core, "weighted_by_key", "num-examples"))


def expected_shapes(core: Strategy) -> Mapping[str, Sequence[int]] | None:
    return getattr(core, "expected_shapes", None)


def set_expected(core: Strategy, shapes: Mapping[str, Sequence[int]]) -> None:
    hook = getattr(core, "set_expected", None)
    if callable(hook):
        hook(shapes)


def check_reply(core: Strategy, msg: Message, site: str, shapes: Shapes) -> SiteCandidate:
    hook = getattr(core, "check_reply", None)
    if callable(hook):
        return hook(msg, site)
    return screen_reply(msg, shapes, weight_key(core), site)


def aggregate_report(core: Strategy, server_round: int, candidates: list[SiteCandidate]) -> Aggregate:
    hook = getattr(core, "aggregate_report", None)
    if callable(hook):
        try:
            return hook(server_round, candidates)
        except LookupError:  # it did not aggregate this round (a DP wrapper skipped it): the shares
            pass
    total = math.fsum(c.num_examples for c in candidates)
    return Aggregate(server_round, weights=[(c, c.num_examples / total) for c in candidates],
                     extra={"weights": "num-examples share"})


def product_scale(core: Strategy) -> Callable[[SiteCandidate, LoraModule], float]:
    hook = getattr(core, "product_scale", None)
    return hook if callable(hook) else (lambda candidate, module: 1.0)


def reads_site_metrics(core: Strategy) -> bool:
    return bool(getattr(core, "reads_site_metrics", False))


def keeps_adapter_shapes(core: Strategy) -> bool:
    return bool(getattr(core, "keeps_adapter_shapes", True))


def personal_adapters(core: Strategy, global_state: Mapping[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    hook = getattr(core, "personal_adapters", None)
    return hook(global_state) if callable(hook) else {}


def use_grid(core: Strategy, grid: Grid) -> None:
    hook = getattr(core, "use_grid", None)
    if callable(hook):
        hook(grid)
