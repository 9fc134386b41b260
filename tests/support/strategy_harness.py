"""Strategies built the way the ServerApp builds them, and replies to feed them.

A strategy is built from a validated run config (server_app.strategy_factory.build_strategy)
and configured for round 1 on a fake grid, so server-side optimisers and the update-norm
bound know the global adapter `GLOBAL` (two LoRA modules of rank 2, `SHAPES`); it is fed
hand-built replies (tests/support/messages.py): good ones from sites near the global adapter, and
the malformed ones of `MALFORMED`. `pytest_generate_tests` parametrises a test's `name` with
every registered strategy, the example plugin, the DP-wrapped variants and the classes named
in CONFORMANCE_STRATEGIES; `server_identity` is an autouse fixture for the modules that
import it (instruction messages need the ServerApp process's identity).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message
from flwr.serverapp.strategy import Strategy

from benchmarks import grids
from server_app.strategy_factory import build_strategy
from settings.config import RunConfig, validate
from strategies import available_strategies
from strategies.core_hooks import factor_rule
from support.messages import error_reply, instruction, reply

PLUGIN = "examples.my_strategy:LossInverse"

# Two LoRA modules (PEFT key names), rank 2: A is (r, in), B is (out, r).
Q, DOWN = "base_model.model.model.layers.0.self_attn.q_proj", "base_model.model.model.layers.0.mlp.down_proj"
SHAPES = {
    f"{Q}.lora_A.weight": (2, 6),
    f"{Q}.lora_B.weight": (5, 2),
    f"{DOWN}.lora_A.weight": (2, 4),
    f"{DOWN}.lora_B.weight": (6, 2),
}
PAIRS = [(f"{Q}.lora_A.weight", f"{Q}.lora_B.weight"), (f"{DOWN}.lora_A.weight", f"{DOWN}.lora_B.weight")]
BASE_CONFIG: dict[str, Any] = {"lora.r": 2, "lora.alpha": 4, "strategy.min-sites": 4}
NUM_SITES = 4

# DP-wrapped variants: the universal checks hold for them too.
DP_VARIANTS = {
    "fedmedlora[dp=server-fixed]": {"strategy.name": "fedmedlora", "strategy.dp": "server-fixed",
                                    "strategy.dp-noise-multiplier": 0.5, "strategy.dp-clipping-norm": 2.0},
    "fedmedlora-equal[dp=client-fixed]": {"strategy.name": "fedmedlora-equal", "strategy.dp": "client-fixed",
                                          "strategy.dp-noise-multiplier": 0.5},
    "fedprox[dp=server-adaptive]": {"strategy.name": "fedprox", "strategy.dp": "server-adaptive",
                                    "strategy.dp-noise-multiplier": 0.1},
}
# More `module:Class` strategies to check, from the environment.
EXTRA = [s.strip() for s in os.environ.get("CONFORMANCE_STRATEGIES", "").split(",") if s.strip()]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "name" in metafunc.fixturenames:
        metafunc.parametrize("name", [*available_strategies(), PLUGIN, *EXTRA, *DP_VARIANTS])


def validation_loss(state: dict[str, np.ndarray]) -> float:
    """Deterministic stand-in for the coordinator's validation loss (Fed-MedLoRA+)."""
    return float(sum(np.abs(v).mean() for v in state.values()))


class FakeGrid:
    """Enough of flwr's Grid for `configure_train`: the connected nodes."""

    def __init__(self, num_nodes: int = NUM_SITES) -> None:
        self.num_nodes = num_nodes

    def get_node_ids(self) -> list[int]:
        return list(range(1, self.num_nodes + 1))


@pytest.fixture(autouse=True)
def server_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Instruction messages take their run from the ServerApp process's identity."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 0)


def run_config(name: str, **overrides: Any) -> RunConfig:
    base = {**BASE_CONFIG, **DP_VARIANTS.get(name, {"strategy.name": name})}
    return validate({**base, **overrides})


def build(name: str, global_state: dict[str, np.ndarray] | None = None, **overrides: Any) -> Strategy:
    """Build as the ServerApp does and configure round 1 from `global_state`."""
    strategy = build_strategy(run_config(name, **overrides), SHAPES, validation_loss)
    record = to_record(global_state if global_state is not None else GLOBAL)
    strategy.configure_train(1, record, ConfigRecord(), FakeGrid())
    return strategy


def to_record(state: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v, np.float32)) for k, v in state.items()})


def random_state(rng: np.random.Generator, scale: float = 0.1) -> dict[str, np.ndarray]:
    return {k: (rng.standard_normal(s) * scale).astype(np.float32) for k, s in SHAPES.items()}


GLOBAL = random_state(np.random.default_rng(100))


def site_states(seed: int = 0, n: int = NUM_SITES, spread: float = 0.01) -> list[dict[str, np.ndarray]]:
    """Sites near the global adapter, as after a little local training."""
    rng = np.random.default_rng(seed)
    return [{k: (GLOBAL[k] + spread * rng.standard_normal(v.shape)).astype(np.float32) for k, v in GLOBAL.items()}
            for _ in range(n)]


def good_replies(states: list[dict[str, np.ndarray]] | None = None) -> list[Message]:
    states = site_states() if states is None else states
    # Distinct sizes and losses, so every weighting has something to weigh.
    return [reply(i + 1, s, 10 * (i + 1), f"h{i + 1}", {"train-loss": 1.0 + 0.25 * i, "norm_bit": 0})
            for i, s in enumerate(states)]


def layers(strategy: Strategy) -> list[Strategy]:
    """The stack from the outermost wrapper down to the bare strategy (strategies/compose.py)."""
    out = [strategy]
    while getattr(out[-1], "strategy", None) is not None:
        out.append(out[-1].strategy)
    return out


def sent_factors(strategy: Strategy, server_round: int = 1) -> str:
    """The factors the strategy's sites send in `server_round` ("AB" unless it has a factor rule)."""
    return factor_rule(strategy, server_round)[1]


def as_sent(strategy: Strategy, replies: list[Message], server_round: int = 1) -> list[Message]:
    """The replies as sites following the strategy's factor rule send them. Error replies and
    malformed adapters (other keys) go as they are."""
    return grids.as_sent(strategy, replies, instruction, server_round,
                         whole=lambda message: set(message.content["arrays"].keys()) == set(SHAPES))


def aggregate(strategy: Strategy, replies: list[Message]) -> tuple[dict[str, np.ndarray] | None, Any]:
    np.random.seed(0)  # Flower's DP noise draws from numpy's global generator
    arrays, _ = strategy.aggregate_train(1, as_sent(strategy, replies))
    out = None if arrays is None else {k: arrays[k].numpy() for k in arrays.keys()}
    return out, strategy.round_report()


def _nan(states: list[dict[str, np.ndarray]]) -> Message:
    state = {k: v.copy() for k, v in states[0].items()}
    state[PAIRS[0][1]][0, 0] = np.nan  # a B tensor: every strategy receives B
    return reply(99, state, 10, "bad")


MALFORMED = {
    "nan": _nan,
    "inf": lambda s: reply(99, {**s[0], PAIRS[1][1]: np.full((6, 2), np.inf, np.float32)}, 10, "bad"),
    "wrong shape": lambda s: reply(99, {**s[0], PAIRS[0][1]: np.zeros((3, 2), np.float32)}, 10, "bad"),
    "missing key": lambda s: reply(99, {k: v for k, v in s[0].items() if k != PAIRS[1][0]}, 10, "bad"),
    "error reply": lambda s: error_reply(99),
}
