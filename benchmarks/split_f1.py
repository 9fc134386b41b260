"""Strict/lenient NER and RE F1 of an adapter vs the base model (zero-shot) on every site's test split.

    .venv/bin/python -m benchmarks.split_f1 outputs/<run>/final [--data ~/.cache/fedmedlora/demo-corpus]

The base model is loaded once; each site is asked only for the types it annotates.
Prints a markdown table and writes it, with the raw numbers, beside the adapter.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from clinical_ie.evaluate import InstanceEvaluator, site_instances, stable_subset
from clinical_ie.instances import DEFAULT_RE_MODE, RE_MODES
from data_loaders.sites import ensure_demo_corpus, load_site
from modeling.adapter_io import load_peft_folder, set_adapter_state
from modeling.base import EMBEDDED_DEFAULT, load_base_model
from modeling.lora import LoraSettings, attach_lora


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("adapter", type=Path)
    parser.add_argument("--data", type=Path, default=None, help="corpus root (default: the demo corpus)")
    parser.add_argument("--sites", default="site-a,site-b,site-c")
    parser.add_argument("--model", default=EMBEDDED_DEFAULT)
    parser.add_argument("--tasks", default="ner,re", help="ner, re or ner,re")
    parser.add_argument("--re-mode", default=DEFAULT_RE_MODE, choices=RE_MODES, help="data.re-mode")
    parser.add_argument("--limit", type=int, default=0, help="test instances per site, chosen by hash (0 = all)")
    parser.add_argument("--max-length", type=int, default=512, help="longer instances are skipped")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    root = args.data or ensure_demo_corpus()
    peft_config = json.loads((args.adapter / "adapter_config.json").read_text())
    model, tokenizer = load_base_model(args.model, "none", "float32")
    lora = LoraSettings(r=peft_config["r"], alpha=peft_config["lora_alpha"], dropout=0.0,
                        target_modules=tuple(sorted(peft_config["target_modules"])))
    peft_model = attach_lora(model, lora)
    trained = load_peft_folder(args.adapter)
    zero = {k: v * 0 if "lora_B" in k else v for k, v in trained.items()}  # B = 0: the base model

    rows, raw = [], {}
    for name in args.sites.split(","):
        site = load_site(root / name)
        instances = stable_subset(site_instances(site, "test", args.tasks.split(","), args.re_mode), args.limit)
        evaluator = InstanceEvaluator(tokenizer, instances, args.max_length, 64, 16, score_by=site.score_by)
        for arm, state in (("zero-shot", zero), ("federated", trained)):
            set_adapter_state(peft_model, state)
            m = evaluator.evaluate(peft_model, f"{name} {arm}").to_metrics()
            raw[f"{name}/{arm}"] = m
            rows.append(f"| {name} | {arm} | {m['ner-instances']:.0f} / {m['re-instances']:.0f} | "
                        f"{m['strict-f1']:.3f} | {m['lenient-f1']:.3f} | {m['re-strict-f1']:.3f} | "
                        f"{m['re-lenient-f1']:.3f} | {m['unaligned']:.0f} | {m['malformed']:.0f} |")
    table = "\n".join(["| site | arm | NER / RE instances | NER strict F1 | NER lenient F1 | RE strict F1 "
                       "| RE lenient F1 | unaligned | malformed |", "|---|---|---|---|---|---|---|---|---|", *rows])
    print(table)
    (args.adapter / "test-f1.md").write_text(table + "\n")
    (args.adapter / "test-f1.json").write_text(json.dumps(raw, indent=2))


if __name__ == "__main__":
    main()
