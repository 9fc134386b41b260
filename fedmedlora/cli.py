"""`fedmedlora <command>`: the project's command line.

Commands read the same dotted keys as the Flower run config (`--set key=value`), so
a figure from the CLI and one from a federated run mean the same thing.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tomllib
from pathlib import Path
from typing import Any

log = logging.getLogger("fedmedlora")


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare string


def _run_config(pairs: list[str]) -> dict[str, Any]:
    from fedmedlora.config import validate

    overrides = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"--set {pair!r}: expected key=value")
        key, value = pair.split("=", 1)
        overrides[key.strip()] = _parse_value(value.strip())
    return validate(overrides)


def cmd_demo_corpus(args: argparse.Namespace) -> int:
    from data_loaders.synthetic import generate_corpus

    folders = generate_corpus(Path(args.out), seed=args.seed, docs_per_site=args.docs_per_site)
    for name, folder in folders.items():
        print(f"{name}: {folder}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score the base model (zero-shot) or base + adapter on one split of a site folder."""
    from clinical_ie.evaluate import InstanceEvaluator, ner_instances, stable_subset
    from data_loaders.sites import load_site
    from modeling.adapter_io import load_peft_folder, set_adapter_state
    from modeling.base import load_base_model
    from modeling.lora import attach_lora
    from fedmedlora.config import lora_settings

    cfg = _run_config(args.set)
    site = load_site(Path(args.data))
    instances = stable_subset(ner_instances(site.splits[args.split], site.entity_types), args.limit)
    model, tokenizer = load_base_model(cfg["model.name"], cfg["quantization"], cfg["model.dtype"])
    if args.adapter:
        adapter_cfg = json.loads((Path(args.adapter) / "adapter_config.json").read_text())
        cfg["lora.r"], cfg["lora.alpha"] = adapter_cfg["r"], adapter_cfg["lora_alpha"]
        cfg["lora.target-modules"] = ",".join(sorted(adapter_cfg["target_modules"]))
        model = attach_lora(model, lora_settings(cfg))
        set_adapter_state(model, load_peft_folder(Path(args.adapter)))
    evaluator = InstanceEvaluator(tokenizer, instances, cfg["train.max-length"],
                                  cfg["eval.max-new-tokens"], cfg["eval.batch-size"])
    evaluation = evaluator.evaluate(model, f"{site.name} {args.split}")
    result = {
        "site": site.name, "split": args.split, "adapter": args.adapter or None,
        "model": cfg["model.name"], **evaluation.to_metrics(),
    }
    print(f"## {site.name} / {args.split} ({'adapter ' + args.adapter if args.adapter else 'zero-shot'})\n")
    print(evaluation.scores.to_markdown())
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from fedmedlora.local_run import flwr_run

    overrides = {}
    for pair in args.run_config:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--run-config {pair!r}: expected key=value")
        overrides[key.strip()] = _parse_value(value.strip())
    if "output-dir" not in overrides:
        overrides["output-dir"] = str(Path(args.app).resolve() / "outputs")
    from fedmedlora.config import validate

    validate(overrides)  # Flower's own message for a bad key does not name it
    return flwr_run(Path(args.app).resolve(), Path(args.flwr_home), overrides, args.num_supernodes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedmedlora", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo-corpus", help="write the synthetic multi-site demo corpus (BRAT)")
    demo.add_argument("out", help="output folder")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--docs-per-site", type=int, default=60)
    demo.set_defaults(func=cmd_demo_corpus)

    ev = sub.add_parser("evaluate", help="strict/lenient F1 of the base model or an adapter on a site's split")
    ev.add_argument("--data", required=True, help="site folder (site.json + BRAT files)")
    ev.add_argument("--adapter", default="", help="PEFT adapter folder; omit for zero-shot")
    ev.add_argument("--split", default="test", choices=("train", "validation", "test"))
    ev.add_argument("--limit", type=int, default=0, help="score at most this many instances (0 = all)")
    ev.add_argument("--json", default="", help="also write the metrics to this file")
    ev.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="run-config key, e.g. --set model.name=/path/to/checkpoint")
    ev.set_defaults(func=cmd_evaluate)

    sim = sub.add_parser("simulate", help="`flwr run` on the simulation engine, stopping the local SuperLink after")
    sim.add_argument("--app", default=".", help="the Flower app folder (this project)")
    sim.add_argument("--flwr-home", default=".flwr", help="FLWR_HOME private to this run")
    sim.add_argument("--num-supernodes", type=int, default=3)
    sim.add_argument("--run-config", action="append", default=[], metavar="KEY=VALUE",
                     help="override a run-config key (repeatable)")
    sim.set_defaults(func=cmd_simulate)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
