"""How many coordinator validation instances Fed-MedLoRA+ needs to rank its candidates.

Fed-MedLoRA+ (coordinator mode) scores every site's adapter each round on
`strategy.validation-instances` instances of the coordinator's set. This benchmark makes
realistic candidates, the site adapters of a federation's rounds (each site trains from
the round's global adapter; the global adapter is their size-weighted average), scores
each candidate once on every instance of the coordinator's set (per-instance losses, so
any subset's loss is read off the same pass), and compares, for growing subset sizes
chosen as the server chooses them (`stable_subset`), the candidates' ranking and
Fed-MedLoRA+ weights with those of the full set.

    .venv/bin/python -m benchmarks.validation_subset --data data --sites maccrobat,chia,ddi \\
        --coordinator data/maccrobat --json docs/benchmarks/validation_subset.json

The smallest size whose ranking equals the full set's in every round (and whose weights
differ by at most `--weight-tolerance` in L1) is printed as the recommended default.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.provenance import REPO, command, machine
from clinical_ie.evaluate import site_instances, stable_subset, training_pairs
from clinical_ie.prompt import PREFIX_END
from data_loaders.sites import load_site
from modeling.adapter_io import get_adapter_state, set_adapter_state
from modeling.base import load_base_model, resolve_model_path
from modeling.lora import LoraSettings, attach_lora
from modeling.training import TrainSettings, encode, encode_all, instance_answer_losses, train_round

SIZES = (8, 16, 24, 32, 48, 64, 96, 128, 192, 256)


def softmax_weights(losses: list[float], temperature: float = 1.0) -> np.ndarray:
    """Fed-MedLoRA+'s weights: exp((1 - L_k) / T), normalised."""
    logits = np.array([(1.0 - loss) / temperature for loss in losses])
    w = np.exp(logits - logits.max())
    return w / w.sum()


def ranking(losses: list[float]) -> list[int]:
    return [int(i) for i in np.argsort(losses, kind="stable")]


def smallest_agreeing_size(rounds: list[dict], weight_tolerance: float) -> int | None:
    """The smallest subset size from which every size checked ranks the candidates as the
    full set does in every round, with weights within `weight_tolerance` (L1); None if
    even the largest does not."""
    recommended = None
    for size in sorted(rounds[0]["by_size"], reverse=True):
        cells = [r["by_size"][size] for r in rounds]
        if not all(c["same_ranking"] and c["weight_l1"] <= weight_tolerance for c in cells):
            break
        recommended = size
    return recommended


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO / "data", help="folder with the prepared site folders")
    parser.add_argument("--sites", default="maccrobat,chia,ddi")
    parser.add_argument("--coordinator", type=Path, default=None,
                        help="the coordinator's set (its validation split); default: the first site")
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=16, help="local steps per site per round")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--weight-tolerance", type=float, default=0.05)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    torch.manual_seed(0)
    names = [s.strip() for s in args.sites.split(",") if s.strip()]
    model, tokenizer = load_base_model(args.model, "none", args.dtype)
    lora = LoraSettings()
    model = attach_lora(model, lora, seed=0, base_model_name=resolve_model_path(args.model))
    pad = tokenizer.pad_token_id

    train = {}
    for name in names:
        site = load_site(args.data / name, name=name)
        train[name], _ = encode_all(tokenizer, training_pairs(site_instances(site, "train")), args.max_length,
                                    PREFIX_END)
    coordinator = load_site(args.coordinator or args.data / names[0], name="coordinator")
    instances = site_instances(coordinator, "validation")
    # The server scores the instances of a subset that fit train.max-length: so do we.
    encoded, where = [], {}
    for inst, pair in zip(instances, training_pairs(instances)):
        enc = encode(tokenizer, *pair, PREFIX_END)
        if len(enc.input_ids) <= args.max_length:
            where[(inst.doc_id, inst.offset, inst.task)] = len(encoded)
            encoded.append(enc)
    print(f"coordinator set: {len(encoded)} validation instances; sites: {', '.join(names)}", flush=True)

    settings = TrainSettings(learning_rate=args.learning_rate, batch_size=args.batch_size, max_steps=args.steps,
                             max_length=args.max_length)
    global_state = get_adapter_state(model)
    rounds = []
    for rnd in range(1, args.rounds + 1):
        states, sizes, per_instance = [], [], []
        for name in names:
            set_adapter_state(model, global_state)
            train_round(model, train[name], settings, pad, server_round=rnd, num_rounds=args.rounds,
                        description=f"{name} round {rnd}")
            states.append(get_adapter_state(model))
            sizes.append(len(train[name]))
            per_instance.append(instance_answer_losses(model, encoded, pad, batch_size=16,
                                                       description=f"score {name} round {rnd}"))
            print(f"round {rnd}: {name} trained and scored ({time.perf_counter() - start:.0f} s)", flush=True)
        total = sum(sizes)
        global_state = {k: sum(s[k] * (n / total) for s, n in zip(states, sizes)) for k in states[0]}

        def loss_on(subset_idx: list[int], per_instance=per_instance) -> list[float]:
            return [sum(p[i][0] for i in subset_idx) / max(sum(p[i][1] for i in subset_idx), 1)
                    for p in per_instance]

        full = loss_on(list(range(len(encoded))))
        full_rank, full_w = ranking(full), softmax_weights(full)
        by_size = {}
        for size in [s for s in SIZES if s < len(encoded)]:
            subset = [where[key] for i in stable_subset(instances, size)
                      if (key := (i.doc_id, i.offset, i.task)) in where]
            losses = loss_on(subset)
            by_size[size] = {
                "losses": losses,
                "same_ranking": ranking(losses) == full_rank,
                "weight_l1": float(np.abs(softmax_weights(losses) - full_w).sum()),
            }
        rounds.append({"round": rnd, "full_losses": full, "full_weights": full_w.tolist(), "by_size": by_size})
        print(f"round {rnd}: full-set losses " + ", ".join(f"{n} {loss:.4f}" for n, loss in zip(names, full)), flush=True)

    sizes_checked = sorted(rounds[0]["by_size"])
    print(f"\n{'instances':>9} " + " ".join(f"{'r' + str(r['round']) + ' rank':>8} {'L1 w':>6}" for r in rounds))
    for size in sizes_checked:
        cells = [(r["by_size"][size]["same_ranking"], r["by_size"][size]["weight_l1"]) for r in rounds]
        print(f"{size:>9} " + " ".join(f"{'same' if same else 'DIFF':>8} {l1:>6.3f}" for same, l1 in cells))
    recommended = smallest_agreeing_size(rounds, args.weight_tolerance)
    print(f"\nrecommended strategy.validation-instances: {recommended or len(encoded)} "
          f"(smallest size whose ranking matches the full set's {len(encoded)} in every round, "
          f"weights within L1 {args.weight_tolerance}, and every larger size's too)")
    result = {
        "recommended": recommended or len(encoded),
        "full_set_instances": len(encoded),
        "sites": names,
        "coordinator": str(args.coordinator or args.data / names[0]),
        "rounds": rounds,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "seconds": time.perf_counter() - start,
        "machine": machine(), "torch-threads": torch.get_num_threads(),
        "command": command("benchmarks.validation_subset", argv),
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=lambda x: None if isinstance(x, float) and
                                        math.isnan(x) else x) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
