"""Site training speed: the ClientApp's training loop versus a plain PEFT loop.

Both arms train the same LoRA adapter (the run config's r, alpha, target modules) of the
same base model on the same batches of the same site's instances, from the same initial
adapter, with AdamW at the same learning rate:

- `fedmedlora`: `modeling.training.train_round`, exactly what a site runs each round
  (loss on answer tokens only, the output layer applied to answer positions only);
- `peft-loop`: what a plain PEFT script does: `model(input_ids, attention_mask, labels)`
  and the model's own loss over the full sequence logits.

Speed is training tokens (non-padding) per second of wall time, timed after `--warmup`
steps; the arms alternate over `--repeats` and the medians are compared. Before and
after the timed steps of each arm the mean answer-token loss on a fixed set of training
instances is measured, so the check also shows that training lowers the loss. On CUDA the
peak GPU memory of each arm is reported.

    .venv/bin/python benchmarks/train_speed.py --data data/maccrobat --steps 12 --repeats 3

`--random-init` trains the model's architecture with random weights (and its real
tokenizer): speed does not depend on the weight values, and this runs where the weights
cannot be carried. `--arch key=value` changes the architecture (for example
`--arch hidden_size=2048 --arch intermediate_size=8192 --arch num_hidden_layers=24
--arch num_attention_heads=32 --arch num_key_value_heads=32` is SmolLM2-1.7B's shape).
`--write-encoded FILE` saves the tokenized instances so a machine without the corpus
can run with `--encoded FILE`.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import random
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from anywhere in the checkout

import torch  # noqa: E402

from modeling.base import load_base_model, resolve_model_path  # noqa: E402
from modeling.lora import LoraSettings, attach_lora  # noqa: E402
from modeling.training import (  # noqa: E402
    Encoded,
    TrainSettings,
    _batches,
    collate,
    mean_answer_loss,
    train_round,
)

EMBEDDED = "embedded:smollm2-135m-instruct"
ARMS = ("fedmedlora", "peft-loop")


def site_examples(data_dir: Path, tokenizer, max_length: int) -> list[Encoded]:
    """The training instances a site's ClientApp trains on (NER and RE), tokenized."""
    from clinical_ie.evaluate import site_instances, training_pairs
    from data_loaders.sites import load_site
    from modeling.training import encode_all

    site = load_site(data_dir)
    examples, _ = encode_all(tokenizer, training_pairs(site_instances(site, "train")), max_length)
    return examples


def write_encoded(examples: Sequence[Encoded], path: Path) -> None:
    path.write_text(json.dumps([[list(e.input_ids), e.answer_len] for e in examples]))


def read_encoded(path: Path) -> list[Encoded]:
    return [Encoded(tuple(ids), int(n)) for ids, n in json.loads(path.read_text())]


def random_init_checkpoint(model_name: str, arch: dict, folder: Path, seed: int = 0) -> Path:
    """Save `model_name`'s architecture (with `arch` changes) at random initialisation,
    with its tokenizer, as a checkpoint folder `load_base_model` reads like any other."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source = resolve_model_path(model_name)
    config = AutoConfig.from_pretrained(source)
    for key, value in arch.items():
        if not hasattr(config, key):
            raise ValueError(f"--arch {key}: {type(config).__name__} has no such field")
        setattr(config, key, type(getattr(config, key))(value) if getattr(config, key) is not None else value)
    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):  # initialising a large model on the GPU takes seconds, not minutes
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return folder


def round_batches(examples: Sequence[Encoded], settings: TrainSettings, count: int) -> list[list[Encoded]]:
    """The first `count` batches `train_round` trains on in round 1, in its order."""
    rng = random.Random(f"{settings.seed}-1")
    queue: list[list[Encoded]] = []
    drawn = []
    while len(drawn) < count:
        if not queue:
            queue = _batches(examples, settings.batch_size, rng)
        drawn.append(queue.pop())
    return drawn


def plain_peft_steps(model, batches: Sequence[list[Encoded]], pad_id: int, settings: TrainSettings) -> tuple[int, float]:
    """A plain PEFT training loop: the model's own loss on full-sequence logits."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    device = next(iter(params)).device
    model.train()
    tokens = 0
    start = time.perf_counter()
    for group in batches:
        batch = collate(group, pad_id, device)
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    position_ids=batch["position_ids"], labels=batch["labels"], use_cache=False)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        float(out.loss.detach())  # one host sync per step, as train_round has
        tokens += batch["tokens"]
    seconds = time.perf_counter() - start
    model.eval()
    return tokens, seconds


def run_arm(arm: str, model, examples: Sequence[Encoded], pad_id: int, settings: TrainSettings,
            warmup: int, steps: int) -> dict:
    """Warm up, then time `steps` steps of one arm from the adapter the model holds now."""
    if arm == "fedmedlora":
        if warmup:
            train_round(model, examples, _with(settings, warmup), pad_id, 1, 1, description="warm-up")
        result = train_round(model, examples, _with(settings, steps), pad_id, 1, 1, description=arm)
        return {"tokens": result.tokens, "seconds": result.seconds, "steps": result.steps}
    if arm == "peft-loop":
        batches = round_batches(examples, settings, max(warmup, steps))
        if warmup:
            plain_peft_steps(model, batches[:warmup], pad_id, settings)
        tokens, seconds = plain_peft_steps(model, batches[:steps], pad_id, settings)
        return {"tokens": tokens, "seconds": seconds, "steps": steps}
    raise ValueError(f"unknown arm {arm!r}; known: {ARMS}")


def _with(settings: TrainSettings, steps: int) -> TrainSettings:
    return replace(settings, max_steps=steps, warmup_ratio=0.0, lr_scheduler="constant")


def measure(model_name: str, examples: Sequence[Encoded], *, quantization: str, dtype: str,
            steps: int, warmup: int, repeats: int, batch_size: int = 4, probe: int = 16,
            lora: LoraSettings | None = None) -> dict:
    """Both arms, alternating, each from the same initial adapter; returns every figure."""
    model, tokenizer = load_base_model(model_name, quantization, dtype)
    model = attach_lora(model, lora or LoraSettings(), seed=0)
    pad_id = tokenizer.pad_token_id
    settings = TrainSettings(batch_size=batch_size)
    initial = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    probe_set = list(examples[:probe])
    cuda = torch.cuda.is_available()
    runs: list[dict] = []
    for repeat in range(repeats):
        order = ARMS if repeat % 2 == 0 else ARMS[::-1]
        for arm in order:
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if n in initial:
                        p.copy_(initial[n])
            before = mean_answer_loss(model, probe_set, pad_id)
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            figures = run_arm(arm, model, examples, pad_id, settings, warmup, steps)
            after = mean_answer_loss(model, probe_set, pad_id)
            figures.update(arm=arm, repeat=repeat, loss_before=before, loss_after=after,
                           tokens_per_second=figures["tokens"] / figures["seconds"])
            if cuda:
                figures["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
            logging.info("%s repeat %d: %.0f tokens/s, probe loss %.3f -> %.3f", arm, repeat,
                         figures["tokens_per_second"], before, after)
            runs.append(figures)
    median = {arm: statistics.median(r["tokens_per_second"] for r in runs if r["arm"] == arm) for arm in ARMS}
    trainable = sum(p.numel() for p in initial.values())
    return {
        "model": model_name,
        "quantization": quantization,
        "dtype": str(next(iter(initial.values())).dtype),
        "trainable-parameters": trainable,
        "examples": len(examples),
        "steps": steps, "warmup": warmup, "repeats": repeats, "batch-size": batch_size,
        "runs": runs,
        "median-tokens-per-second": median,
        "ratio": median["fedmedlora"] / median["peft-loop"],
        "loss-dropped": all(r["loss_after"] < r["loss_before"] for r in runs),
        "peak-gpu-mb": ({arm: max(r["peak_gpu_mb"] for r in runs if r["arm"] == arm) for arm in ARMS}
                        if cuda else None),
        "device": torch.cuda.get_device_name(0) if cuda else platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }


def print_report(result: dict) -> None:
    print(f"\n{result['model']} on {result['device']}, quantization {result['quantization']}, "
          f"{result['trainable-parameters']:,} trainable parameters, batch {result['batch-size']}, "
          f"{result['steps']} timed steps after {result['warmup']} warm-up, {result['repeats']} repeat(s)")
    print("| arm | median tokens/s | probe loss before -> after (each repeat) | peak GPU MB |")
    print("|---|---:|---|---:|")
    for arm in ARMS:
        losses = ", ".join(f"{r['loss_before']:.3f} -> {r['loss_after']:.3f}" for r in result["runs"] if r["arm"] == arm)
        peak = f"{result['peak-gpu-mb'][arm]:.0f}" if result["peak-gpu-mb"] else "-"
        print(f"| {arm} | {result['median-tokens-per-second'][arm]:.0f} | {losses} | {peak} |")
    print(f"fedmedlora / peft-loop tokens/s: {result['ratio']:.3f}; loss dropped in every run: {result['loss-dropped']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="a site folder (prepared corpus)")
    source.add_argument("--encoded", type=Path, help="tokenized instances written by --write-encoded")
    parser.add_argument("--model", default=EMBEDDED)
    parser.add_argument("--quantization", default="auto", choices=("auto", "none", "8bit", "4bit"))
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--probe", type=int, default=16, help="training instances whose loss is measured before and after")
    parser.add_argument("--random-init", action="store_true", help="random weights, the model's architecture and tokenizer")
    parser.add_argument("--arch", action="append", default=[], metavar="KEY=VALUE", help="architecture change (with --random-init)")
    parser.add_argument("--write-encoded", type=Path, help="save the tokenized instances and exit")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--require-loss-drop", action="store_true", help="exit 1 unless every run lowered the loss")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.arch and not args.random_init:
        parser.error("--arch needs --random-init")
    arch = {}
    for item in args.arch:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--arch {item!r}: expected KEY=VALUE")
        arch[key.strip()] = json.loads(value) if value.strip()[:1] in "0123456789-[{tf" else value

    with tempfile.TemporaryDirectory(prefix="train-speed-") as tmp:
        model_name = args.model
        if args.random_init:
            model_name = str(random_init_checkpoint(args.model, arch, Path(tmp) / "model"))
        if args.encoded:
            examples = read_encoded(args.encoded)
        else:
            from modeling.base import load_tokenizer

            examples = site_examples(args.data, load_tokenizer(model_name), args.max_length)
        if args.write_encoded:
            write_encoded(examples, args.write_encoded)
            print(f"wrote {len(examples)} tokenized instances to {args.write_encoded}")
            return 0
        result = measure(model_name, examples, quantization=args.quantization, dtype=args.dtype,
                         steps=args.steps, warmup=args.warmup, repeats=args.repeats, batch_size=args.batch_size,
                         probe=args.probe)
    result["model"] = args.model + (f" (random init{', ' + str(arch) if arch else ''})" if args.random_init else "")
    print_report(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    if args.require_loss_drop and not result["loss-dropped"]:
        print("FAILED: the probe loss did not drop in every run", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
