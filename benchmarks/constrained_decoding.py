"""Constrained decoding against free greedy decoding on one site's split: F1, unaligned and
malformed answers, and the cost in generation speed.

The same instances (chosen by hash, as every benchmark chooses them) are answered twice by
the same model, without and with `modeling.constrained.SentenceConstraint` (config key
`eval.constrained`), and scored as evaluation scores them.

    .venv/bin/python -m benchmarks.constrained_decoding --data data/maccrobat --limit 16
    .venv/bin/python -m benchmarks.constrained_decoding --adapter outputs/<run>/final \\
        --data data/maccrobat --limit 200 --json docs/benchmarks/constrained_decoding.json

Without `--adapter` the base model answers zero-shot. Prints a table and writes, with
`--json`, per arm: NER (and relation) strict/lenient F1, unaligned and malformed counts,
the seconds and answer tokens per second of generation, and for the constrained arm the
processor's own time per generation step (during generation, and replayed alone).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import modeling.generation as generation
from benchmarks.provenance import REPO, command, machine
from clinical_ie.evaluate import (
    InstanceEvaluator,
    evaluation_from_outputs,
    site_instances,
    stable_subset,
)
from clinical_ie.instances import DEFAULT_RE_MODE, RE_MODES
from clinical_ie.prompt import answer_constraint
from data_loaders.sites import load_site
from modeling.adapter_io import load_peft_folder, set_adapter_state
from modeling.base import EMBEDDED_DEFAULT, load_base_model
from modeling.constrained import SentenceConstraint, clear_caches, vocabulary
from modeling.lora import LoraSettings, attach_lora

_REPORTED = ("strict-f1", "lenient-f1", "strict-precision", "strict-recall", "unaligned", "malformed",
             "re-strict-f1", "re-lenient-f1", "re-unaligned", "re-malformed", "ner-instances", "re-instances")


class _TimedConstraint(SentenceConstraint):
    """The processor, each instance recorded so its masking time can be summed."""

    made: list[SentenceConstraint] = []

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        _TimedConstraint.made.append(self)


def load_model(args: argparse.Namespace):
    model, tokenizer = load_base_model(args.model, args.quantization, args.dtype)
    if args.adapter is None:
        return model, tokenizer
    peft_config = json.loads((args.adapter / "adapter_config.json").read_text())
    lora = LoraSettings(r=peft_config["r"], alpha=peft_config["lora_alpha"], dropout=0.0,
                        target_modules=tuple(sorted(peft_config["target_modules"])))
    peft_model = attach_lora(model, lora)
    set_adapter_state(peft_model, load_peft_folder(args.adapter))
    return peft_model, tokenizer


def run_arm(model, tokenizer, evaluator: InstanceEvaluator, score_by, constrained: bool) -> dict:
    evaluator.constrained = constrained
    _TimedConstraint.made.clear()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    began = time.perf_counter()
    outputs = evaluator.generate(model, "constrained" if constrained else "free")
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - began
    metrics = evaluation_from_outputs(evaluator.instances, outputs, 0.0, score_by).to_metrics()
    # Answer tokens as the tokenizer reads the answers back, plus the end of each.
    tokens = sum(len(tokenizer.encode(o, add_special_tokens=False)) + 1 for o in outputs)
    arm = {key: metrics[key] for key in _REPORTED}
    arm.update({"generation-seconds": round(seconds, 3), "answer-tokens": tokens,
                "answer-tokens-per-second": round(tokens / seconds, 2)})
    if constrained:
        steps = sum(p.steps for p in _TimedConstraint.made)
        masking = sum(p.seconds for p in _TimedConstraint.made)
        arm.update({"processor-steps": steps, "processor-seconds": round(masking, 3),
                    "processor-ms-per-step": round(1000 * masking / max(steps, 1), 3)})
    arm["outputs"] = outputs
    return arm


def replayed_ms_per_step(tokenizer, instances, outputs: list[str], batch_size: int) -> float:
    """The processor alone, from cold caches: the constrained answers (re-encoded) fed back
    through it in batches, one token per step, as generation feeds it. Unlike the time
    measured during generation, this is not inflated by the model's threads competing
    with it for the CPU."""
    clear_caches()
    seconds, steps = 0.0, 0
    for start in range(0, len(outputs), batch_size):
        rows = [tokenizer.encode(o, add_special_tokens=False) for o in outputs[start: start + batch_size]]
        processor = SentenceConstraint(tokenizer, [answer_constraint(i) for i in instances[start: start + batch_size]])
        ids = torch.zeros((len(rows), 1), dtype=torch.long)
        scores = torch.zeros((len(rows), len(tokenizer)))
        for step in range(max(map(len, rows)) + 1):
            processor(ids, scores)
            column = [row[step] if step < len(row) else tokenizer.eos_token_id for row in rows]
            ids = torch.cat([ids, torch.tensor(column)[:, None]], dim=1)
        seconds, steps = seconds + processor.seconds, steps + processor.steps
    return 1000 * seconds / max(steps, 1)


TABLE_START = ("<!-- constrained decoding: generated by `python -m benchmarks.constrained_decoding --report` "
               "from docs/benchmarks/constrained_decoding_*.json -->")
TABLE_END = "<!-- end of constrained decoding -->"
RESULTS = sorted((REPO / "docs" / "benchmarks").glob("constrained_decoding_*.json"))


def markdown_table(results: list[dict]) -> str:
    lines = [TABLE_START, "",
             "| validation set | decoding | NER strict F1 | NER lenient F1 | unaligned | malformed | RE strict F1 "
             "| answer tokens/s | processor ms per step |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for result in results:
        for name, arm in result["arms"].items():
            per_step = f"{arm['processor-ms-per-step']:.2f}" if "processor-ms-per-step" in arm else "-"
            lines.append(f"| {result['site']} ({result['instances']}) | {name} | {arm['strict-f1']:.3f} | "
                         f"{arm['lenient-f1']:.3f} | {arm['unaligned']:.0f} | {arm['malformed']:.0f} | "
                         f"{arm['re-strict-f1']:.3f} | {arm['answer-tokens-per-second']:.1f} | {per_step} |")
    adapters = sorted({str(r["adapter"]) for r in results})
    lines += ["", f"Adapter: {', '.join(adapters)}; dtype {', '.join(sorted({r['dtype'] for r in results}))}."]
    return "\n".join(lines + ["", TABLE_END])


def write_markdown(page: Path, results: list[dict]) -> None:
    text = page.read_text()
    head, rest = text.split(TABLE_START, 1)
    page.write_text(head + markdown_table(results) + rest.split(TABLE_END, 1)[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter", type=Path, default=None, help="PEFT adapter folder (default: the base model)")
    parser.add_argument("--data", type=Path, default=REPO / "data" / "maccrobat", help="site folder")
    parser.add_argument("--split", default="validation", choices=("train", "validation", "test"))
    parser.add_argument("--limit", type=int, default=16, help="instances, chosen by hash (0 = all)")
    parser.add_argument("--tasks", default="ner", help="ner, re or ner,re")
    parser.add_argument("--re-mode", default=DEFAULT_RE_MODE, choices=RE_MODES, help="data.re-mode")
    parser.add_argument("--model", default=EMBEDDED_DEFAULT)
    parser.add_argument("--quantization", default="none", help="run-config quantization (auto, none, 4bit, 8bit)")
    parser.add_argument("--dtype", default="float32", help="run-config model.dtype")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="eval.max-new-tokens")
    parser.add_argument("--batch-size", type=int, default=16, help="eval.batch-size")
    parser.add_argument("--max-length", type=int, default=512, help="longer instances are skipped")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--outputs", action="store_true", help="keep every answer in the JSON")
    parser.add_argument("--report", action="store_true",
                        help="measure nothing: rewrite the table in docs/benchmarks.md from the committed JSON files")
    args = parser.parse_args()
    if args.report:
        write_markdown(REPO / "docs" / "benchmarks.md", [json.loads(f.read_text()) for f in RESULTS])
        return

    generation.SentenceConstraint = _TimedConstraint  # what generate_answers builds, timed
    site = load_site(args.data)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    instances = stable_subset(site_instances(site, args.split, tasks, args.re_mode), args.limit)
    model, tokenizer = load_model(args)
    evaluator = InstanceEvaluator(tokenizer, instances, args.max_length, args.max_new_tokens, args.batch_size,
                                  score_by=site.score_by)
    vocabulary(tokenizer)  # the token texts, built once per tokenizer: not charged to an arm
    arms = {name: run_arm(model, tokenizer, evaluator, site.score_by, constrained)
            for name, constrained in (("free", False), ("constrained", True))}
    changed = sum(a != b for a, b in zip(arms["free"]["outputs"], arms["constrained"]["outputs"]))
    arms["constrained"]["processor-replayed-ms-per-step"] = round(
        replayed_ms_per_step(tokenizer, instances, arms["constrained"]["outputs"], args.batch_size), 3)

    rows = [f"| {name} | {a['strict-f1']:.3f} | {a['lenient-f1']:.3f} | {a['unaligned']:.0f} | "
            f"{a['malformed']:.0f} | {a['re-strict-f1']:.3f} | {a['re-unaligned']:.0f} | {a['generation-seconds']:.1f} | "
            f"{a['answer-tokens-per-second']:.1f} |" for name, a in arms.items()]
    print(f"{site.name} / {args.split}: {len(instances)} instances ({args.tasks}), "
          f"{'adapter ' + str(args.adapter) if args.adapter else 'base model, zero-shot'}; "
          f"{changed} answers differ between the arms")
    print("\n".join(["| arm | NER strict F1 | NER lenient F1 | unaligned | malformed | RE strict F1 | RE unaligned "
                     "| generation s | answer tokens/s |", "|---|---|---|---|---|---|---|---|---|", *rows]))
    c = arms["constrained"]
    print(f"processor: {c['processor-ms-per-step']:.3f} ms per generation step during generation "
          f"({c['processor-steps']} steps, batches of up to {args.batch_size}); "
          f"{c['processor-replayed-ms-per-step']:.3f} ms replayed alone from cold caches")

    if args.json:
        for arm in arms.values():
            if not args.outputs:
                arm.pop("outputs")
        result = {
            "command": command("benchmarks.constrained_decoding"), "site": site.name, "split": args.split,
            "instances": len(instances), "tasks": args.tasks, "re-mode": args.re_mode, "model": args.model,
            "adapter": str(args.adapter) if args.adapter else None, "dtype": str(next(model.parameters()).dtype),
            "max-new-tokens": args.max_new_tokens,
            "batch-size": args.batch_size, "machine": machine(), "torch-threads": torch.get_num_threads(),
            "answers-changed": changed, "arms": arms,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
