"""One site, one time budget: how well a site learns the task on this machine.

Trains the embedded default (or `--model`) with LoRA on one site's training split, NER and
relation instances mixed as a ClientApp trains them (`train_round`, shared prefix), then
scores the adapter on the site's test split: entity strict/lenient F1 on `--test-sentences`
sentences, relation F1 with gold entities (the relation step alone) and end to end (entities
predicted, then relations among them). The wall time of the whole run is reported.

    .venv/bin/python -m benchmarks.single_site --data data/maccrobat --json docs/benchmarks/single_site.json

Writes `ner_strict_f1`, `ner_lenient_f1`, `re_strict_f1_gold_entities`,
`re_strict_f1_end_to_end`, `test_instances`, `seconds` and `command` (and more) to `--json`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks.provenance import REPO, command, machine
from clinical_ie.evaluate import InstanceEvaluator, site_instances, stable_subset, training_pairs
from clinical_ie.instances import DEFAULT_RE_MODE, NER, RE, RE_MODES
from clinical_ie.prompt import PREFIX_END
from data_loaders.sites import load_site
from modeling.base import load_base_model, resolve_model_path
from modeling.lora import LoraSettings, attach_lora
from modeling.training import TrainSettings, encode_all, train_round


def test_instances(site, sentences: int, re_mode: str) -> list:
    """`sentences` NER instances of the test split (chosen by hash, as every benchmark
    chooses them) and the relation instances of those same sentences."""
    instances = site_instances(site, "test", re_mode=re_mode)
    ner = stable_subset([i for i in instances if i.task == NER], sentences)
    chosen = {(i.doc_id, i.offset) for i in ner}
    relations = [i for i in instances if i.task == RE and (i.doc_id, i.offset) in chosen]
    return sorted(ner + relations, key=lambda i: (i.doc_id, i.offset, i.task != NER))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO / "data" / "maccrobat", help="a prepared site folder")
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--dtype", default="auto", help="model.dtype: auto, float32, bfloat16")
    parser.add_argument("--re-mode", default=DEFAULT_RE_MODE, choices=RE_MODES)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--warmup-ratio", type=float, default=0.05)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--test-sentences", type=int, default=200)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--eval-batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    command_line = command("benchmarks.single_site", argv)

    start = time.perf_counter()
    torch.manual_seed(args.seed)
    site = load_site(args.data)
    model, tokenizer = load_base_model(args.model, "none", args.dtype)
    model = attach_lora(model, LoraSettings(), seed=args.seed, base_model_name=resolve_model_path(args.model))
    train, dropped = encode_all(tokenizer, training_pairs(site_instances(site, "train", re_mode=args.re_mode)),
                                args.max_length, PREFIX_END)
    settings = TrainSettings(learning_rate=args.learning_rate, batch_size=args.batch_size, max_steps=args.steps,
                             warmup_ratio=args.warmup_ratio, max_length=args.max_length, seed=args.seed)
    print(f"{site.name}: {len(train)} training instances ({dropped} longer than {args.max_length} tokens dropped), "
          f"{args.steps} steps of {args.batch_size} = {args.steps * args.batch_size / len(train):.2f} epochs",
          flush=True)
    result = train_round(model, train, settings, tokenizer.pad_token_id, server_round=1, num_rounds=1,
                         description=f"{site.name} train")
    train_seconds = time.perf_counter() - start
    print(f"trained in {train_seconds:.0f} s: loss {result.loss:.4f}, {result.tokens_per_second:.0f} tokens/s",
          flush=True)

    instances = test_instances(site, args.test_sentences, args.re_mode)
    evaluator = InstanceEvaluator(tokenizer, instances, args.max_length, args.max_new_tokens, args.eval_batch_size,
                                  score_by=site.score_by)
    evaluation = evaluator.evaluate(model, f"{site.name} test")
    seconds = time.perf_counter() - start
    print(evaluation.to_markdown())
    figures = {
        "ner_strict_f1": evaluation.scores.strict.f1,
        "ner_lenient_f1": evaluation.scores.lenient.f1,
        "re_strict_f1_gold_entities": evaluation.relations.strict.f1 if args.re_mode == "given-entities" else None,
        "re_lenient_f1_gold_entities": evaluation.relations.lenient.f1 if args.re_mode == "given-entities" else None,
        "re_strict_f1_end_to_end": evaluation.relations_e2e.strict.f1,
        "re_lenient_f1_end_to_end": evaluation.relations_e2e.lenient.f1,
        "test_instances": evaluation.num_ner_instances,
        "test_relation_instances": evaluation.num_re_instances,
        "validation_loss": evaluation.loss,
        "seconds": seconds,
        "train_seconds": train_seconds,
        "train_steps": result.steps,
        "train_loss": result.loss,
        "train_instances": len(train),
        "train_tokens_per_second": result.tokens_per_second,
        "re_mode": args.re_mode,
        "site": site.name,
        "entity_types": list(site.entity_types),
        "relation_types": list(site.relation_types),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "machine": machine(), "torch-threads": torch.get_num_threads(),
        "command": command_line,
    }
    print(json.dumps({k: v for k, v in figures.items() if "f1" in k or k in ("seconds", "test_instances")}, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
