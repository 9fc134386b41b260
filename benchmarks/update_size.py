"""How large one round's aggregated LoRA update is, element by element.

Reads two global adapters a run saved (`<out>/round-N/`) and prints the median and maximum
absolute change per element, and the share of elements below Flower's FedAdam/FedYogi
tau (1e-3). docs/strategies.md ("Server-optimizer defaults") uses these figures to explain
the server step sizes:

    .venv/bin/python -m benchmarks.update_size outputs/strategies/fedmedlora/round-1 \\
        outputs/strategies/fedmedlora/round-2
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

FLOWER_TAU = 1e-3  # flwr.serverapp.strategy.FedAdam / FedYogi default


def load_adapter(folder: Path) -> dict[str, np.ndarray]:
    path = folder / "adapter_model.safetensors"
    if not path.is_file():
        raise SystemExit(f"{path}: no saved adapter there (expected a run's round-N or final folder)")
    return load_file(str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path, help="adapter folder of the earlier round")
    parser.add_argument("after", type=Path, help="adapter folder of the later round")
    args = parser.parse_args()
    before, after = load_adapter(args.before), load_adapter(args.after)
    if before.keys() != after.keys():
        raise SystemExit(f"{args.before} and {args.after} hold different LoRA tensors")
    change = np.concatenate([np.abs(after[k].astype(np.float64) - before[k]).ravel() for k in sorted(before)])
    print(f"elements {change.size}  median |change| {np.median(change):.2e}  max {change.max():.2e}  "
          f"below tau {FLOWER_TAU:g}: {np.mean(change < FLOWER_TAU):.1%}")


if __name__ == "__main__":
    main()
