"""Aggregation cost per round of every strategy on LLaMA-3-8B adapter shapes.

One round = `configure_train` + `aggregate_train` on replies from `--sites` sites with
random float32 LoRA factors (r = 16 on q, k, v, o, gate, up, down of `--layers` layers:
about 42M parameters, 168 MB per site at 32 layers). The replies are generated once and
reused by every strategy and repeat. Each strategy is built as the ServerApp builds it
(validated run config -> server_app.strategy_factory.build_strategy; `--set` adds keys,
e.g. `--set strategy.max-update-norm=1.0`); a fresh one per repeat, so stateful server
optimisers always time their first step. Fed-MedLoRA+ gets a trivial validation loss: its
real cost, one validation pass per site, is the model's, not the aggregation's.

Reported per strategy: median and min seconds per round over `--repeats` rounds, and the
peak memory one further round allocates on top of the replies (tracemalloc traces Python
and numpy allocations; per-strategy RSS is not meaningful in one process, since freed
memory stays with the allocator). The process's max RSS (getrusage) closes the report.

    python benchmarks/aggregation.py --layers 4 --sites 20 --repeats 3
    python benchmarks/aggregation.py --strategies fedmedlora,krum --set strategy.dp=server-fixed
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import resource
import shlex
import statistics
import sys
import time
import tomllib
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere in the checkout

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, Metadata, MetricRecord, RecordDict  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from server_app.strategy_factory import build_strategy  # noqa: E402
from settings.config import validate  # noqa: E402
from strategies import available_strategies  # noqa: E402

HIDDEN, KV, INTERMEDIATE = 4096, 1024, 14336  # LLaMA-3-8B
MODULES = {  # name: (block, in_features, out_features)
    "q_proj": ("self_attn", HIDDEN, HIDDEN),
    "k_proj": ("self_attn", HIDDEN, KV),
    "v_proj": ("self_attn", HIDDEN, KV),
    "o_proj": ("self_attn", HIDDEN, HIDDEN),
    "gate_proj": ("mlp", HIDDEN, INTERMEDIATE),
    "up_proj": ("mlp", HIDDEN, INTERMEDIATE),
    "down_proj": ("mlp", INTERMEDIATE, HIDDEN),
}


def adapter_shapes(layers: int, rank: int) -> dict[str, tuple[int, int]]:
    """PEFT state-dict keys and shapes: A is (r, in), B is (out, r)."""
    shapes = {}
    for layer in range(layers):
        for name, (block, fan_in, fan_out) in MODULES.items():
            prefix = f"base_model.model.model.layers.{layer}.{block}.{name}"
            shapes[f"{prefix}.lora_A.weight"] = (rank, fan_in)
            shapes[f"{prefix}.lora_B.weight"] = (fan_out, rank)
    return shapes


def make_replies(shapes: dict[str, tuple[int, int]], sites: int, seed: int) -> tuple[ArrayRecord, list[Message]]:
    """The global adapter and one train reply per site (global + a small random update)."""
    rng = np.random.default_rng(seed)
    global_state = {k: (0.01 * rng.standard_normal(s, np.float32)) for k, s in shapes.items()}
    replies = []
    for site in range(1, sites + 1):
        arrays = ArrayRecord({k: Array(g + 0.001 * rng.standard_normal(g.shape, np.float32)) for k, g in global_state.items()})
        content = RecordDict({
            "arrays": arrays,
            "metrics": MetricRecord({"num-examples": 100 + 10 * site, "train-loss": 1.0 + 0.01 * site}),
            "site": ConfigRecord({"name": f"site-{site:02d}"}),
        })
        replies.append(Message(content=content, reply_to=_instruction(site)))
    return ArrayRecord({k: Array(v) for k, v in global_state.items()}), replies


def _instruction(node_id: int) -> Message:
    metadata = Metadata(run_id=1, message_id=f"ins-{node_id}", src_node_id=0, dst_node_id=node_id,
                        reply_to_message_id="", group_id="1", created_at=time.time(), ttl=3600.0,
                        message_type=MessageType.TRAIN)
    return Message(content=RecordDict(), metadata=metadata)


class Grid:
    """Enough of flwr's Grid for `configure_train`: the connected nodes."""

    def __init__(self, sites: int) -> None:
        self.sites = sites

    def get_node_ids(self) -> list[int]:
        return list(range(1, self.sites + 1))


def one_round(cfg: dict[str, Any], shapes: dict, global_arrays: ArrayRecord, replies: list[Message], sites: int) -> float:
    strategy = build_strategy(cfg, shapes, _validation_loss)
    np.random.seed(0)  # DP noise
    start = time.perf_counter()
    strategy.configure_train(1, global_arrays, ConfigRecord(), Grid(sites))
    arrays, _ = strategy.aggregate_train(1, replies)
    seconds = time.perf_counter() - start
    if arrays is None or strategy.round_report().rejected:
        raise RuntimeError(f"{cfg['strategy.name']}: round failed: {strategy.round_report().rejected}")
    return seconds


def _validation_loss(state: dict[str, np.ndarray]) -> float:
    return float(np.abs(next(iter(state.values()))).mean())


def measure(name: str, args: argparse.Namespace, overrides: dict[str, Any], shapes: dict,
            global_arrays: ArrayRecord, replies: list[Message]) -> dict[str, float]:
    cfg = validate({**overrides, "strategy.name": name, "strategy.min-sites": args.sites,
                    "lora.r": args.rank, "lora.alpha": 4 * args.rank})
    run: Callable[[], float] = lambda: one_round(cfg, shapes, global_arrays, replies, args.sites)  # noqa: E731
    gc.collect()
    times = []
    for _ in range(args.repeats):
        times.append(run())
        gc.collect()
    # A separate round: tracing slows allocation, and the timed rounds should not pay for it.
    tracemalloc.start()
    run()
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    gc.collect()
    return {"median": statistics.median(times), "min": min(times), "traced_mb": traced_peak / 2**20}


def parse_set(pairs: list[str]) -> dict[str, Any]:
    """`--set key=value` pairs as the fedmedlora CLI reads them: TOML values, else bare strings."""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set {pair!r}: expected key=value")
        try:
            values[key.strip()] = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            values[key.strip()] = text.strip()
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strategies", default=",".join(available_strategies()),
                        help="comma-separated names (registered or package.module:Class); default: all registered")
    parser.add_argument("--sites", type=int, default=20)
    parser.add_argument("--layers", type=int, default=32, help="decoder layers (LLaMA-3-8B has 32)")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per strategy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="run-config key for every strategy, e.g. --set strategy.max-update-norm=1.0 (repeatable)")
    args = parser.parse_args(argv)
    logging_quiet()
    # configure_train builds Flower instruction messages, which take the ServerApp's identity.
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0

    shapes = adapter_shapes(args.layers, args.rank)
    numel = sum(a * b for a, b in shapes.values())
    print(f"generating {args.sites} site adapters: {len(shapes)} tensors, {numel / 1e6:.1f}M parameters, "
          f"{numel * 4 / 2**20:.0f} MiB each ...", file=sys.stderr)
    global_arrays, replies = make_replies(shapes, args.sites, args.seed)
    overrides = parse_set(args.set)

    rows = []
    for name in [s.strip() for s in args.strategies.split(",") if s.strip()]:
        print(f"  {name} ...", file=sys.stderr)
        rows.append((name, measure(name, args, overrides, shapes, global_arrays, replies)))

    print(f"\nCommand: python benchmarks/aggregation.py {shlex.join(sys.argv[1:] if argv is None else argv)}")
    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s), "
          f"Python {platform.python_version()}, numpy {np.__version__}")
    print(f"Replies: {args.sites} sites x {numel / 1e6:.1f}M float32 parameters ({args.layers} layers, r={args.rank}), "
          f"{args.sites * numel * 4 / 2**20:.0f} MiB in all; run config {overrides or '{}'}\n")
    print(f"| strategy | s/round (median of {args.repeats}) | min s | peak MB per round (tracemalloc) |")
    print("|---|---:|---:|---:|")
    for name, r in rows:
        print(f"| {name} | {r['median']:.2f} | {r['min']:.2f} | {r['traced_mb']:.0f} |")
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(f"\nProcess max RSS (getrusage, replies included): {max_rss:.0f} MB")
    return 0


def logging_quiet() -> None:
    """Flower logs every reply at INFO; keep the table readable."""
    import logging

    logging.getLogger("flwr").setLevel(logging.ERROR)
    logging.getLogger("server_app").setLevel(logging.ERROR)


if __name__ == "__main__":
    sys.exit(main())
