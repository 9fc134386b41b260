"""What SecAgg+'s 32-bit mask seeds cost an honest-but-curious coordinator to search.

Flower 1.42's `pseudo_rand_gen` folds each 256-bit mask seed to 32 bits before it seeds
NumPy's generator. In every round the coordinator reconstructs each surviving site's
private-mask seed (that is how unmasking works), so what hides a site's quantized adapter
from it is the pairwise masks alone, each drawn from one of 2^32 generator states.

This script builds one site's masked vector with Flower's own quantize and mask functions,
as a two-site round leaves it once the private mask is removed (adapter + pairwise mask,
modulo 2^32), and searches the pairwise seed the way such a coordinator could: for each
candidate seed, draw the mask's first values and test whether what remains looks like a
quantized adapter (every value within a window around the quantization midpoint). It
scans a window of `2^--window-bits` candidates that holds the true seed, checks that the
seed it finds unmasks the whole adapter, and extrapolates the time per candidate to all
2^32 seeds on one core.

    .venv/bin/python -m benchmarks.mask_search --json docs/benchmarks/mask_search.json

With more sites a site's vector carries one pairwise mask per neighbour; the search then
pairs seeds (a meet-in-the-middle over two 2^32 tables), which this script does not run.
"""

from __future__ import annotations

import argparse
import json
import secrets
import time
from pathlib import Path

import numpy as np

from benchmarks.provenance import command, machine
from strategies.flower_compat import secaggplus_mask, secaggplus_quantize
from strategies.secure_aggregation import MODULUS, QUANTIZATION_RANGE

PROBE = 4  # mask values drawn per candidate before the test


def folded_seed(key: bytes) -> int:
    """The 32-bit seed `pseudo_rand_gen` (`secaggplus_mask`) derives from a mask key (its XOR fold)."""
    seed = 0
    for i in range(0, len(key), 4):
        seed ^= int.from_bytes(key[i:i + 4], "little")
    return seed


def masked_adapter(size: int, clipping: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, bytes]:
    """A LoRA-sized update (values ~1e-3), quantized as a site quantizes it, plus one
    pairwise mask modulo the modulus: (quantized, masked, mask key)."""
    update = rng.normal(0.0, 1e-3, size).astype(np.float32)
    quantized = secaggplus_quantize([update], clipping, QUANTIZATION_RANGE)[0].astype(np.int64)
    key = secrets.token_bytes(32)
    mask = secaggplus_mask(key, MODULUS, [(size,)])[0].astype(np.int64)
    return quantized, (quantized + mask) % MODULUS, key


def search(masked: np.ndarray, candidates: range, window: int) -> tuple[list[int], float]:
    """Seeds whose mask leaves every probed value within `window` of the midpoint, and the
    seconds the scan took."""
    middle, probe = QUANTIZATION_RANGE // 2, masked[:PROBE]
    generator = np.random.RandomState()  # re-seeded per candidate: the same stream, no allocation
    found, began = [], time.perf_counter()
    for seed in candidates:
        generator.seed(seed)
        mask = generator.randint(0, MODULUS - 1, size=PROBE)
        if np.all(np.abs((probe - mask) % MODULUS - middle) <= window):
            found.append(seed)
    return found, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=4096, help="adapter values in the masked vector")
    parser.add_argument("--window-bits", type=int, default=20, help="log2 of the candidate seeds scanned")
    parser.add_argument("--clipping", type=float, default=1.0, help="strategy.secagg-clipping-range")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    quantized, masked, key = masked_adapter(args.size, args.clipping, np.random.default_rng(0))
    true_seed = folded_seed(key)
    span = 1 << args.window_bits
    start = min(max(0, true_seed - span // 2), (1 << 32) - span)
    # The window around the midpoint that an update of |value| <= 0.01 stays in.
    window = int(np.ceil(0.01 / (2 * args.clipping) * QUANTIZATION_RANGE))
    found, seconds = search(masked, range(start, start + span), window)
    unmasked = [s for s in found
                if np.array_equal((masked - np.random.RandomState(s).randint(0, MODULUS - 1, size=args.size)) % MODULUS,
                                  quantized)]
    per_candidate = seconds / span
    result = {
        "command": command("benchmarks.mask_search"),
        "machine": machine("numpy"),
        "candidates-scanned": span,
        "seeds-passing-the-probe": len(found),
        "true-seed-found-and-unmasks-the-adapter": unmasked == [true_seed],
        "seconds": round(seconds, 2),
        "microseconds-per-candidate": round(per_candidate * 1e6, 2),
        "hours-for-all-2^32-seeds-on-one-core": round(per_candidate * (1 << 32) / 3600, 1),
    }
    for name, value in result.items():
        print(f"{name}: {value}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
