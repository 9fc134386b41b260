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
Sites of a strategy that sends only some factors (FFA-LoRA: B) reply with those only.

The rounds are timed without the per-round aggregation error (`strategy.aggregation-error`
= false); the arm `fedmedlora+error` times it on top of Fed-MedLoRA, and `exact-randomized`
is `exact` with `strategy.exact-solver = "randomized"`. For the latter, the report also
compares its rank-r factors with the full SVD's on the first `--error-layers` layers: the
residual ||M - B A||_F over the optimal one (Eckart-Young), and ||B A - B* A*||_F / ||B* A*||_F.

    python -m benchmarks.aggregation --layers 4 --sites 20 --repeats 3
    python -m benchmarks.aggregation --strategies fedmedlora,krum --set strategy.dp=server-fixed
    python -m benchmarks.aggregation --strategies exact,exact-randomized --json docs/benchmarks/aggregation.json
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import resource
import statistics
import sys
import time
import tomllib
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, Metadata, MetricRecord, RecordDict

from benchmarks.grids import NodesGrid, as_sent
from benchmarks.provenance import command, machine
from server_app.strategy_factory import build_strategy
from settings.config import validate
from strategies import available_strategies
from strategies.aggregation_error import module_error
from strategies.flower_compat import act_as_server_app
from strategies.lora_algebra import exact_factors, lora_modules, randomized_factors

# Arms that are a registered strategy with some keys set.
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "exact-randomized": ("exact", {"strategy.exact-solver": "randomized"}),
    "fedmedlora+error": ("fedmedlora", {"strategy.aggregation-error": True}),
}

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


def one_round(cfg: dict[str, Any], shapes: dict, global_arrays: ArrayRecord, replies: list[Message], sites: int) -> float:
    strategy = build_strategy(cfg, shapes, _validation_loss)
    replies = as_sent(strategy, replies, _instruction)
    np.random.seed(0)  # DP noise
    start = time.perf_counter()
    strategy.configure_train(1, global_arrays, ConfigRecord(), NodesGrid(sites))
    arrays, _ = strategy.aggregate_train(1, replies)
    seconds = time.perf_counter() - start
    if arrays is None or strategy.round_report().rejected:
        raise RuntimeError(f"{cfg.strategy.name}: round failed: {strategy.round_report().rejected}")
    return seconds


def _validation_loss(state: dict[str, np.ndarray]) -> float:
    return float(np.abs(next(iter(state.values()))).mean())


def measure(name: str, args: argparse.Namespace, overrides: dict[str, Any], shapes: dict,
            global_arrays: ArrayRecord, replies: list[Message]) -> dict[str, float]:
    strategy, keys = VARIANTS.get(name, (name, {}))
    cfg = validate({"strategy.aggregation-error": False, **keys, **overrides, "strategy.name": strategy,
                    "strategy.min-sites": args.sites, "lora.r": args.rank, "lora.alpha": 4 * args.rank})
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
    parser.add_argument("--strategies", default=",".join([*available_strategies(), *VARIANTS]),
                        help="comma-separated names (registered, package.module:Class, or one of "
                             f"{sorted(VARIANTS)}); default: all registered and those")
    parser.add_argument("--json", type=Path, help="also write the figures here (docs/benchmarks/aggregation.json)")
    parser.add_argument("--error-layers", type=int, default=1,
                        help="layers on which exact-randomized is compared with the full SVD (0 = none)")
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
    act_as_server_app()

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

    print(f"\nCommand: {command('benchmarks.aggregation', argv)}")
    print(f"Machine: {machine('numpy')}")
    print(f"Replies: {args.sites} sites x {numel / 1e6:.1f}M float32 parameters ({args.layers} layers, r={args.rank}), "
          f"{args.sites * numel * 4 / 2**20:.0f} MiB in all; run config {overrides or '{}'}\n")
    print(f"| strategy | s/round (median of {args.repeats}) | min s | peak MB per round (tracemalloc) |")
    print("|---|---:|---:|---:|")
    for name, r in rows:
        print(f"| {name} | {r['median']:.2f} | {r['min']:.2f} | {r['traced_mb']:.0f} |")
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(f"\nProcess max RSS (getrusage, replies included): {max_rss:.0f} MB")
    error = None
    names = [name for name, _ in rows]
    if "exact-randomized" in names and args.error_layers > 0:
        error = randomized_error(shapes, replies, args.error_layers, 4 * args.rank)
        print(f"\nexact-randomized against the full SVD, {error['modules']} modules of the first "
              f"{args.error_layers} layer(s): residual ||M - B A|| over the optimal one: median "
              f"{error['residual-ratio-median']:.6f}, max {error['residual-ratio-max']:.6f}; "
              f"||B A - B* A*|| / ||B* A*||: median {error['difference-median']:.2e}, max {error['difference-max']:.2e}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "command": command("benchmarks.aggregation", argv),
            "machine": machine("numpy"),
            "run-config": overrides,
            "strategies": {name: {"sites": args.sites, "layers": args.layers, "rank": args.rank,
                                  "seconds": r["median"], "seconds-min": r["min"], "repeats": args.repeats,
                                  "peak_mb": r["traced_mb"]} for name, r in rows},
            "max-rss-mb": max_rss,
            **({"exact-randomized-vs-svd": error} if error is not None else {}),
        }, indent=2) + "\n")
    return 0


def randomized_error(shapes: dict, replies: list[Message], layers: int, alpha: float) -> dict[str, float]:
    """exact-randomized's rank-r factors against the full SVD's, module by module, on the
    replies' size-weighted average update (as `exact` weighs them), through Gram matrices."""
    counts = [float(m.content["metrics"]["num-examples"]) for m in replies]
    weights = [c / math.fsum(counts) for c in counts]
    modules = [m for m in lora_modules(shapes) if int(m.prefix.split(".layers.")[1].split(".")[0]) < layers]
    ratios, differences = [], []
    for module in modules:
        bs = [m.content["arrays"][module.b_key].numpy() for m in replies]
        as_ = [m.content["arrays"][module.a_key].numpy() for m in replies]
        scales = [w * alpha / module.rank for w in weights]
        best = exact_factors(bs, as_, scales, module.rank)
        fast = randomized_factors(bs, as_, scales, module.rank, seed=1)
        sites = list(zip(bs, as_, strict=True))
        optimal, _ = module_error(sites, scales, (best.b, best.a))
        residual, _ = module_error(sites, scales, (fast.b, fast.a))
        ratios.append(math.sqrt(residual / optimal) if optimal > 0 else 1.0)
        apart, _ = module_error([(fast.b, fast.a)], [1.0], (best.b, best.a))
        _, best_norm = module_error([(best.b, best.a)], [1.0], (best.b, best.a))
        differences.append(math.sqrt(apart / best_norm) if best_norm > 0 else 0.0)
    return {"modules": len(modules), "residual-ratio-median": statistics.median(ratios),
            "residual-ratio-max": max(ratios), "difference-median": statistics.median(differences),
            "difference-max": max(differences)}


def logging_quiet() -> None:
    """Flower logs every reply at INFO; keep the table readable."""
    import logging

    logging.getLogger("flwr").setLevel(logging.ERROR)
    logging.getLogger("server_app").setLevel(logging.ERROR)


if __name__ == "__main__":
    sys.exit(main())
