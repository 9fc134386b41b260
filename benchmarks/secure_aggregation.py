"""What secure aggregation costs per round: Flower's SecAgg+ against plain Fed-MedLoRA.

Three sites train the same round-1 instruction with the project's real ClientApp, in this
process (benchmarks/grids.py's LocalGrid: every message serialised as on the wire), once plainly
and once through `SecureAggregationGrid`, alternating, `--repeats` times each. Training is
the same work both ways, so the difference of the medians is the protocol's cost: its
four exchanges, the sites' key agreement, share encryption, quantization and masking, and
the coordinator's unmasking. Bytes are Flower's serialised message sizes, both ways.

    .venv/bin/python -m benchmarks.secure_aggregation            # embedded default, 3 repeats
    .venv/bin/python -m benchmarks.secure_aggregation --out docs/benchmarks/secure_aggregation.json

Prints one line per run and a summary; `--out` writes the JSON the threat model quotes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

SITES = (1, 2, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="", help="model.name (default: the embedded default)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from flwr.app import ConfigRecord, Message, MessageType, RecordDict

    from benchmarks.grids import LocalGrid
    from benchmarks.provenance import machine
    from client_app.runtime import model_runtime
    from modeling.adapter_io import get_adapter_state
    from settings.config import validate
    from strategies.flower_compat import act_as_server_app, message_nbytes
    from strategies.secure_aggregation import SecureAggregationGrid
    from wire import protocol
    from wire.arrays import to_arrayrecord
    from wire.transport import transport_grid

    act_as_server_app(task_id=1)
    overrides = {"train.max-steps": args.max_steps, "strategy.secure-aggregation": True}
    if args.model:
        overrides["model.name"] = args.model
    cfg = validate(overrides)
    runtime = model_runtime(cfg)
    initial = get_adapter_state(runtime.model)
    config = {**protocol.base_config(runtime.identity, cfg.lora_settings(), 1), "server-round": 1}
    local = LocalGrid(cfg, {node: {"partition-id": i} for i, node in enumerate(SITES)})
    plain_grid = transport_grid(local, cfg.transport.encoding)
    secure_grid = SecureAggregationGrid(plain_grid, cfg.strategy.secagg_clipping_range,
                                        cfg.strategy.secagg_max_weight)

    def instructions():
        return [Message(content=RecordDict({protocol.ARRAYS: to_arrayrecord(initial),
                                            protocol.CONFIG: ConfigRecord(config)}),
                        dst_node_id=node, message_type=MessageType.TRAIN, group_id="1") for node in SITES]

    def run(grid) -> dict:
        sent, received = len(local.sent), len(local.received)
        started = time.perf_counter()
        replies = list(grid.send_and_receive(instructions(), timeout=60))
        seconds = time.perf_counter() - started
        assert len(replies) == len(SITES) and not any(r.has_error() for r in replies), replies
        return {"seconds": seconds,
                "bytes-sent": sum(message_nbytes(m) for m in local.sent[sent:]),
                "bytes-received": sum(message_nbytes(m) for m in local.received[received:]),
                "messages": len(local.sent) - sent}

    run(plain_grid)  # warm-up: the sites' model and data load once, in this process
    results: dict[str, list[dict]] = {"plain": [], "secure": []}
    for repeat in range(args.repeats):
        for mode, grid in (("plain", plain_grid), ("secure", secure_grid)):
            result = run(grid)
            results[mode].append(result)
            print(f"{mode:>6} #{repeat + 1}: {result['seconds']:.2f} s, {result['bytes-sent'] / 1e6:.2f} MB sent, "
                  f"{result['bytes-received'] / 1e6:.2f} MB received, {result['messages']} messages", flush=True)

    def median(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in results[mode])

    numel = sum(v.size for v in initial.values())
    summary = {
        "machine": machine(), "model": cfg.model.name, "adapter-parameters": int(numel), "sites": len(SITES),
        "train-steps": args.max_steps, "repeats": args.repeats,
        **{f"{mode}-{key}": median(mode, key) for mode in results for key in ("seconds", "bytes-sent",
                                                                               "bytes-received", "messages")},
    }
    summary["extra-seconds-per-round"] = summary["secure-seconds"] - summary["plain-seconds"]
    summary["bytes-up-ratio"] = summary["secure-bytes-received"] / summary["plain-bytes-received"]
    summary["bytes-down-ratio"] = summary["secure-bytes-sent"] / summary["plain-bytes-sent"]
    summary["runs"] = results
    print(f"adapter {numel:,} parameters, {len(SITES)} sites, {args.max_steps} step(s), median of {args.repeats}:")
    print(f"  plain  {summary['plain-seconds']:.2f} s/round, up {summary['plain-bytes-received'] / 1e6:.2f} MB, "
          f"down {summary['plain-bytes-sent'] / 1e6:.2f} MB")
    print(f"  secure {summary['secure-seconds']:.2f} s/round, up {summary['secure-bytes-received'] / 1e6:.2f} MB, "
          f"down {summary['secure-bytes-sent'] / 1e6:.2f} MB")
    print(f"  secure aggregation adds {summary['extra-seconds-per-round']:.2f} s per round; bytes up x"
          f"{summary['bytes-up-ratio']:.2f}, down x{summary['bytes-down-ratio']:.2f}")
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"written {args.out}")


if __name__ == "__main__":
    main()
