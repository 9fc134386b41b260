"""Site training speed: the ClientApp's training loop, a plain PEFT loop and TRL's SFTTrainer.

All three arms train the same LoRA adapter (the run config's r, alpha, dropout, target
modules) of the same base model object, in the same dtype on the same device, on the
same batches of the same site's tokenized instances in the same order, from the same
initial adapter with a fresh AdamW (same learning rate, weight decay 0, constant rate, no
warm-up, gradient norm clipped at the same value), in one invocation:

- `clientapp`: `modeling.training.train_round`, exactly what a site runs each round,
  used as a black box (loss on answer tokens only, the output layer applied to answer
  positions only; where the ClientApp shares the instruction prefix across a batch, the
  prefix is computed once per batch);
- `peft`: what a user writes with PEFT: each instance's full prompt and answer,
  right-padded, `model(input_ids, attention_mask, labels)` with the labels masked to the
  answer, the model's own loss over the full-sequence logits, `torch.optim.AdamW`;
- `trl`: TRL's `SFTTrainer` given the same token ids pre-tokenized (`input_ids` and
  `completion_mask` columns, `completion_only_loss=True`, so the loss is on the answer
  only), `per_device_train_batch_size` = the batch size and
  `train_sampling_strategy="sequential"` over the instances laid out batch after batch,
  so each optimizer step sees the batch the other arms see; `max_steps` = the steps,
  `lr_scheduler_type="constant"`, `warmup_steps=0`, the same `max_grad_norm`,
  `weight_decay=0`, transformers' default optimizer (`adamw_torch_fused`: torch's AdamW
  with `fused=True`, same betas and eps), `gradient_checkpointing=False` (TRL turns it on
  by default; it trades speed for memory and no other arm uses it), `bf16=False` (no
  autocast: the model's dtype is the arm's dtype, as for the others; on a quantized model
  the adapter is kept in the other arms' dtype, where TRL would cast it to bfloat16), no
  evaluation, no checkpoints, `report_to="none"`, `logging_steps=1` (the per-step
  training loss is kept in each repeat's `step_losses`).

TRL settings, from TRL 1.16's SFTConfig/SFTTrainer source and transformers' masking code:
a pre-tokenized dataset (an `input_ids` column) skips TRL's tokenization; its
`completion_mask` becomes the labels only with `completion_only_loss=True` (left at None,
TRL decides by the presence of `prompt`/`completion` columns, absent here). `packing` is
not used: it re-groups instances into `max_length` blocks (BFD re-orders them by length),
so the steps would no longer see the same instances as the other arms, and with "bfd" it
turns padding-free on, which brings the cost below.
`padding_free` (flatten each batch into one row, positions restarting per instance, no
attention mask) is documented as "only supported with FlashAttention 2 or 3"; with
sdpa it is still correct in transformers 5 (no cross-contamination): without an
attention mask and with restarting `position_ids`, `masking_utils.create_causal_mask`
detects the packed sequences (`find_packed_sequence_indices`) and builds a block-diagonal
causal mask, and TRL's collator masks the first label of every instance
(tests/test_train_speed.py checks that both layouts give the same loss; on SmolLM2-135M
in float32 two MACCROBAT batches gave 2.059558 either way, and 3.067863 padded against
3.067861 flattened). But sdpa then
attends over the whole flattened batch under a dense block-diagonal mask, quadratic in the
batch's total length (8 instances: 8x the score entries), where padded rows cost the sum
of per-row squares, and MACCROBAT's batches are length-grouped (under 2% padding): one
layer's sdpa forward and backward for a batch of 8 x ~280 tokens took 0.17 s padded and
0.73 s flattened on this 2-core CPU (about 17 s more per step over 30 layers). So the
best correct setting on CPU with sdpa is padded batches, the default here;
`--trl-padding-free` measures the flattened layout (with FlashAttention's varlen kernels
on a GPU it would pay). SFTTrainer always patches in its fused LM head (chunked
log-probabilities, no full logits kept, plus per-token entropy and top-1 accuracy for its
metrics); on CPU it scores every position, not only the answer's (its compact path needs
Triton on CUDA/XPU), and no SFTConfig field changes that. On a tiny model that head is
most of TRL's step time.

Speed is instances and non-padding tokens (prompt + answer of each instance, the same
count for every arm, although the ClientApp computes a shared prefix once per batch)
per second of wall time, timed after `--warmup` steps; the arms rotate order over
`--repeats` and the medians are compared. The TRL arm's time runs from its
`on_train_begin` to its `on_train_end` callback (dataset preparation and trainer
construction are reported apart). Before and after the timed steps of each arm the mean
answer-token loss on a fixed set of training instances (`--probe`) is measured, so the
check shows that the three arms reach the same loss after the same instances. Since TRL
cannot form a short batch in the middle of an epoch, the batch order's seed is the first
from `--seed` on whose first batches are all full. With the run config's LoRA dropout
(0.05) each arm draws its own dropout masks, so the losses after training agree closely,
not exactly; `--lora-dropout 0` makes them agree to float precision. `--dtype auto` is the
model loader's choice for the device (bfloat16 on CUDA; on a CPU bfloat16 only where a
measured bf16 matmul beats float32); every arm runs in it. On CUDA the peak GPU memory of
each arm is reported.

    .venv/bin/python -m benchmarks.train_speed --data data/maccrobat --batch-size 8 --steps 8 \\
        --warmup 1 --repeats 3 --json docs/benchmarks/train_speed.json

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
import contextlib
import gc
import json
import logging
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks.provenance import REPO, command, machine
from modeling.base import load_base_model, resolve_model_path
from modeling.lora import LoraSettings, attach_lora
from modeling.training import (
    Encoded,
    TrainSettings,
    _batches,
    mean_answer_loss,
    train_round,
)

EMBEDDED = "embedded:smollm2-135m-instruct"
ARMS = ("clientapp", "peft", "trl")

log = logging.getLogger("train_speed")


# --- the instances -----------------------------------------------------------------------


def site_examples(data_dir: Path, tokenizer, max_length: int) -> list[Encoded]:
    """The training instances a site's ClientApp trains on (NER and RE), tokenized, with
    the shared instruction prefix marked."""
    from clinical_ie.evaluate import site_instances, training_pairs
    from clinical_ie.prompt import PREFIX_END
    from data_loaders.sites import load_site
    from modeling.training import encode_all

    site = load_site(data_dir)
    examples, _ = encode_all(tokenizer, training_pairs(site_instances(site, "train")), max_length, PREFIX_END)
    return examples


def write_encoded(examples: Sequence[Encoded], path: Path) -> None:
    path.write_text(json.dumps([[list(e.input_ids), e.answer_len, e.prefix_len] for e in examples]))


def read_encoded(path: Path) -> list[Encoded]:
    """Instances saved by `write_encoded` (an older file has no prefix lengths: 0)."""
    return [Encoded(tuple(item[0]), int(item[1]), int(item[2]) if len(item) > 2 else 0)
            for item in json.loads(path.read_text())]


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


# --- the batches -------------------------------------------------------------------------


def round_batches(examples: Sequence[Encoded], settings: TrainSettings, count: int) -> list[list[Encoded]]:
    """The first `count` batches `train_round` trains on in round 1, in its order."""
    rng = random.Random(f"{settings.seed}-1")
    queue: list[list[Encoded]] = []
    drawn = []
    while len(drawn) < count:
        if not queue:
            queue = _batches(examples, settings.batch_size, rng)
        drawn.append(list(queue.pop()))
    return drawn


def full_batch_seed(examples: Sequence[Encoded], settings: TrainSettings, count: int, tries: int = 1000) -> int | None:
    """The first seed from `settings.seed` on whose first `count` round-1 batches are all
    full (TRL's sampler cuts the instances into equal batches), or None."""
    for seed in range(settings.seed, settings.seed + tries):
        drawn = round_batches(examples, replace(settings, seed=seed), count)
        if all(len(group) == settings.batch_size for group in drawn):
            return seed
    return None


def batch_figures(batches: Sequence[Sequence[Encoded]]) -> dict:
    """Instances and non-padding tokens (full prompt + answer of each instance, counted
    the same for every arm), and how many of the tokens are a batch's shared prefix."""
    tokens = sum(len(e.input_ids) for group in batches for e in group)
    prefix = sum(e.prefix_len for group in batches for e in group)
    once = sum(max((e.prefix_len for e in group), default=0) for group in batches)
    return {
        "instances": sum(len(group) for group in batches),
        "tokens": tokens,
        "answer_tokens": sum(e.answer_len for group in batches for e in group),
        "prefix_tokens": prefix,
        # what remains to compute when each batch's prefix runs once (all share one prefix)
        "tokens_prefix_once": tokens - prefix + once,
    }


# --- the arms ----------------------------------------------------------------------------


def _with(settings: TrainSettings, steps: int) -> TrainSettings:
    return replace(settings, max_steps=steps, warmup_ratio=0.0, lr_scheduler="constant")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device(model) -> torch.device:
    return next(p for p in model.parameters()).device


def clientapp_steps(model, examples: Sequence[Encoded], pad_id: int, settings: TrainSettings, steps: int) -> dict:
    """`steps` steps of the ClientApp's own loop (round 1 of 1, constant learning rate)."""
    device = _device(model)
    _sync(device)
    start = time.perf_counter()
    result = train_round(model, examples, _with(settings, steps), pad_id, 1, 1, description="clientapp")
    _sync(device)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "steps": result.steps, "train_loss": result.loss,
            "reported_tokens": result.tokens}


def plain_collate(group: Sequence[Encoded], pad_id: int, device) -> dict[str, torch.Tensor]:
    """Right-padded input ids, attention mask, and labels = the answer tokens (else -100)."""
    length = max(len(e.input_ids) for e in group)
    input_ids = torch.full((len(group), length), pad_id, dtype=torch.long)
    attention = torch.zeros((len(group), length), dtype=torch.long)
    labels = torch.full((len(group), length), -100, dtype=torch.long)
    for i, e in enumerate(group):
        n = len(e.input_ids)
        ids = torch.tensor(e.input_ids, dtype=torch.long)
        input_ids[i, :n] = ids
        attention[i, :n] = 1
        labels[i, n - e.answer_len : n] = ids[n - e.answer_len :]
    return {"input_ids": input_ids.to(device), "attention_mask": attention.to(device), "labels": labels.to(device)}


def plain_peft_steps(model, batches: Sequence[Sequence[Encoded]], pad_id: int, settings: TrainSettings) -> dict:
    """A plain PEFT training loop: the model's own loss on full-sequence logits."""
    params = [p for p in model.parameters() if p.requires_grad]
    device = _device(model)
    model.train()
    losses = []
    _sync(device)
    start = time.perf_counter()
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    for group in batches:
        out = model(**plain_collate(group, pad_id, device), use_cache=False)
        out.loss.backward()
        if settings.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(out.loss.detach()))  # one host sync per step, as train_round has
    _sync(device)
    seconds = time.perf_counter() - start
    model.eval()
    return {"seconds": seconds, "steps": len(batches), "step_losses": losses}


def trl_dataset(batches: Sequence[Sequence[Encoded]]):
    """The instances batch after batch, pre-tokenized: `input_ids` and `completion_mask`
    (1 on the answer), which SFTTrainer turns into answer-only labels."""
    import datasets

    datasets.disable_progress_bars()  # one bar per preparation step and arm run otherwise
    rows = [e for group in batches for e in group]
    return datasets.Dataset.from_dict({
        "input_ids": [list(e.input_ids) for e in rows],
        "completion_mask": [[0] * (len(e.input_ids) - e.answer_len) + [1] * e.answer_len for e in rows],
    })


def trl_config(output_dir: str, settings: TrainSettings, steps: int, device: torch.device, padding_free: bool):
    from trl import SFTConfig

    return SFTConfig(
        output_dir=output_dir,
        max_steps=steps,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=1,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=settings.weight_decay,
        max_grad_norm=settings.max_grad_norm,
        train_sampling_strategy="sequential",  # the order fed in is the order trained on
        shuffle_dataset=False,
        completion_only_loss=True,
        padding_free=padding_free,
        packing=False,
        max_length=None,  # the instances are no longer than --max-length already
        gradient_checkpointing=False,
        bf16=False,
        fp16=False,
        use_cpu=device.type != "cuda",
        dataloader_pin_memory=device.type == "cuda",
        logging_strategy="steps",
        logging_steps=1,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=settings.seed,
    )


def trl_steps(model, tokenizer, batches: Sequence[Sequence[Encoded]], settings: TrainSettings,
              padding_free: bool = False) -> dict:
    """`len(batches)` optimizer steps of TRL's SFTTrainer on exactly these batches.

    The trainer gets the model object the other arms train; what it changes on it is
    undone: the adapter cast to bfloat16 on a quantized model (TRL's QLoRA default) before
    training, so that every arm trains the adapter in the same dtype, and the fused-LM-head
    `forward` patched onto the base model afterwards, so that the other arms run as before."""
    from transformers import TrainerCallback
    from trl import SFTTrainer

    if any(len(group) != settings.batch_size for group in batches):
        raise ValueError("TRL's sampler forms equal batches: every batch must be full")
    device = _device(model)
    base = model.get_base_model()
    patched = "forward" in vars(base)
    saved_forward = vars(base).get("forward")
    dtypes = {n: p.dtype for n, p in model.named_parameters() if p.requires_grad}

    class Clock(TrainerCallback):
        start = end = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            _sync(device)
            Clock.start = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            _sync(device)
            Clock.end = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="train-speed-trl-") as out:
        begun = time.perf_counter()
        trainer = SFTTrainer(model=model, args=trl_config(out, settings, len(batches), device, padding_free),
                             train_dataset=trl_dataset(batches), processing_class=tokenizer, callbacks=[Clock()])
        _restore_dtypes(model, dtypes)
        setup = time.perf_counter() - begun
        called = time.perf_counter()
        trainer.train()
        call = time.perf_counter() - called
        history = list(trainer.state.log_history)
        steps = trainer.state.global_step
        adapter_dtype = str(next(p.dtype for p in model.parameters() if p.requires_grad)).removeprefix("torch.")
        del trainer
    gc.collect()
    if patched:
        base.forward = saved_forward
    else:
        vars(base).pop("forward", None)
    model.eval()
    return {"seconds": Clock.end - Clock.start, "steps": steps,
            "step_losses": [h["loss"] for h in history if "loss" in h],
            "setup_seconds": setup, "train_call_seconds": call, "adapter_dtype": adapter_dtype}


def _restore_dtypes(model, dtypes: dict) -> None:
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in dtypes and param.dtype != dtypes[name]:
                param.data = param.data.to(dtypes[name])


def run_arm(arm: str, model, tokenizer, examples: Sequence[Encoded], batches: Sequence[Sequence[Encoded]],
            pad_id: int, settings: TrainSettings, trl_padding_free: bool = False) -> dict:
    """`len(batches)` steps of one arm from the adapter the model holds now; `batches`
    are the ones `train_round` draws (the clientapp arm draws them itself)."""
    if arm == "clientapp":
        return clientapp_steps(model, examples, pad_id, settings, len(batches))
    if arm == "peft":
        return plain_peft_steps(model, batches, pad_id, settings)
    if arm == "trl":
        return trl_steps(model, tokenizer, batches, settings, trl_padding_free)
    raise ValueError(f"unknown arm {arm!r}; known: {ARMS}")


# --- the comparison ----------------------------------------------------------------------


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available here")
    return torch.device(device)


def resolve_dtype_for(dtype: str, device: torch.device) -> str:
    """`auto` as the model loader reads it (`modeling.base.resolve_dtype`), for the device
    the arms run on: on CUDA bfloat16 (float16 without bf16 support), on a CPU bfloat16
    only where a measured bf16 matmul beats float32, else float32."""
    from modeling import base

    if dtype != "auto":
        return dtype
    if device.type == "cuda" or not torch.cuda.is_available():
        return str(base.resolve_dtype("auto")).removeprefix("torch.")
    prefers = getattr(base, "cpu_prefers_bfloat16", None)  # CPU arms on a CUDA machine
    return "bfloat16" if prefers is not None and prefers() else "float32"


def run_config_defaults() -> dict:
    """`[tool.flwr.app.config]` of pyproject.toml: the run configuration a site trains with
    by default (read directly: settings.config pulls in Flower, which a bare GPU machine
    lacks)."""
    import tomllib

    def flatten(table: dict, prefix: str = "") -> dict:  # `train.max-length = 512` is a nested table
        flat = {}
        for key, value in table.items():
            flat.update(flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
        return flat

    with contextlib.suppress(OSError, KeyError, tomllib.TOMLDecodeError):
        return flatten(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"])
    return {}


def default_lora(config: dict) -> LoraSettings:
    base = LoraSettings()
    modules = config.get("lora.target-modules")
    return LoraSettings(
        r=int(config.get("lora.r", base.r)), alpha=config.get("lora.alpha", base.alpha),
        dropout=float(config.get("lora.dropout", base.dropout)),
        target_modules=tuple(m.strip() for m in modules.split(",") if m.strip()) if modules else base.target_modules,
    )


def environment() -> dict:
    from importlib import metadata

    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    return {
        "machine": machine(), "transformers": version("transformers"), "peft": version("peft"),
        "trl": version("trl"), "datasets": version("datasets"), "torch_threads": torch.get_num_threads(),
        "command": command("benchmarks.train_speed"),
    }


def measure(model_name: str, examples: Sequence[Encoded], *, quantization: str = "auto", dtype: str = "auto",
            device: str = "auto", steps: int = 12, warmup: int = 2, repeats: int = 3, batch_size: int = 8,
            probe: int = 16, lora: LoraSettings | None = None, learning_rate: float = 2e-4,
            max_grad_norm: float = 1.0, seed: int = 0, arms: Sequence[str] = ARMS,
            trl_padding_free: bool = False) -> dict:
    """The arms in rotating order, each from the same initial adapter; returns every figure.
    `lora` defaults to the run configuration's (pyproject.toml)."""
    unknown = [a for a in arms if a not in ARMS]
    if unknown or not arms:
        raise ValueError(f"arms {list(arms)}: expected some of {list(ARMS)}")
    if not examples:
        raise ValueError("no training instances")
    where = resolve_device(device)
    dtype_name = resolve_dtype_for(dtype, where)
    if quantization == "auto":
        quantization = "4bit" if where.type == "cuda" else "none"
    model, tokenizer = load_base_model(model_name, quantization, dtype_name)
    if quantization == "none" and _device(model) != where:
        model = model.to(where)
    lora = lora or default_lora(run_config_defaults())
    model = attach_lora(model, lora, seed=0)
    pad_id = tokenizer.pad_token_id

    # One rate for A and B: the PEFT and TRL loops take one, and the arms must train alike.
    base_settings = TrainSettings(batch_size=batch_size, learning_rate=learning_rate, max_grad_norm=max_grad_norm,
                                  seed=seed, loraplus_lr_ratio=0.0)
    count = max(steps, warmup)
    found = full_batch_seed(examples, base_settings, count)
    if found is None and "trl" in arms:
        raise ValueError(f"no batch order with {count} full batches of {batch_size} in 1000 seeds from {seed}; "
                         "use fewer --steps or a batch size that fits the data")
    settings = replace(base_settings, seed=seed if found is None else found)
    drawn = round_batches(examples, settings, count)
    timed, warm = drawn[:steps], drawn[:warmup]
    figures = batch_figures(timed)

    initial = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    probe_set = list(examples[:probe])
    cuda = where.type == "cuda"
    env = environment()
    runs: list[dict] = []
    for repeat in range(repeats):  # the order rotates: each arm runs first, second and third once in 3 repeats
        shift = repeat % len(arms)
        for arm in list(arms[shift:]) + list(arms[:shift]):
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if n in initial:
                        p.copy_(initial[n])
            before = mean_answer_loss(model, probe_set, pad_id)
            if warm:
                torch.manual_seed(settings.seed)
                run_arm(arm, model, tokenizer, examples, warm, pad_id, settings, trl_padding_free)
                with torch.no_grad():
                    for n, p in model.named_parameters():
                        if n in initial:
                            p.copy_(initial[n])
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            torch.manual_seed(settings.seed)  # the same dropout stream start for every arm
            result = run_arm(arm, model, tokenizer, examples, timed, pad_id, settings, trl_padding_free)
            after = mean_answer_loss(model, probe_set, pad_id)
            result.update(arm=arm, repeat=repeat, loss_before=before, loss_after=after,
                          instances_per_second=figures["instances"] / result["seconds"],
                          tokens_per_second=figures["tokens"] / result["seconds"])
            if cuda:
                result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
            if result["steps"] != steps:
                raise RuntimeError(f"{arm} ran {result['steps']} steps, not {steps}")
            log.info("%s repeat %d: %.2f instances/s, %.0f tokens/s, probe loss %.4f -> %.4f", arm, repeat,
                     result["instances_per_second"], result["tokens_per_second"], before, after)
            runs.append(result)

    dtype_used = str(next(iter(initial.values())).dtype).removeprefix("torch.")
    base_dtype = str(model.get_base_model().get_input_embeddings().weight.dtype).removeprefix("torch.")
    out: dict = {}
    for arm in arms:
        mine = [r for r in runs if r["arm"] == arm]
        out[arm] = {
            "instances_per_second": statistics.median(r["instances_per_second"] for r in mine),
            "tokens_per_second": statistics.median(r["tokens_per_second"] for r in mine),
            "final_loss": statistics.median(r["loss_after"] for r in mine),
            "initial_loss": statistics.median(r["loss_before"] for r in mine),
            "batch_size": batch_size,
            "dtype": base_dtype,
            "adapter_dtype": dtype_used,
            "device": str(where),
            "quantization": quantization,
            "steps": steps, "warmup": warmup, "repeats": repeats,
            "instances": figures["instances"], "tokens": figures["tokens"],
            "peak_gpu_mb": max(r["peak_gpu_mb"] for r in mine) if cuda else None,
            "per_repeat": mine,
            "settings": _arm_settings(arm, settings, trl_padding_free),
            "environment": env,
        }
    ratios = {}
    for other in ("peft", "trl"):
        if "clientapp" in out and other in out:
            ratios[f"clientapp/{other}"] = (out["clientapp"]["instances_per_second"]
                                            / out[other]["instances_per_second"])
    return {
        **out,
        "ratios": ratios,
        "setup": {
            "model": model_name, "quantization": quantization, "dtype": base_dtype, "adapter_dtype": dtype_used,
            "device": str(where), "batch_size": batch_size, "learning_rate": learning_rate,
            "batch_order_seed": settings.seed, "lora": lora.as_dict(),
            "trainable_parameters": sum(p.numel() for p in initial.values()),
            "examples": len(examples), "probe_instances": len(probe_set),
            "steps": steps, "warmup": warmup, "repeats": repeats, "arms": list(arms),
            "timed_batches": figures,
            "loss_dropped": all(r["loss_after"] < r["loss_before"] for r in runs),
            "environment": env,
        },
    }


def _arm_settings(arm: str, settings: TrainSettings, trl_padding_free: bool) -> dict:
    common = {"optimizer": "AdamW", "learning_rate": settings.learning_rate, "weight_decay": settings.weight_decay,
              "lr_schedule": "constant, no warm-up", "max_grad_norm": settings.max_grad_norm}
    if arm == "clientapp":
        return {**common, "loop": "modeling.training.train_round"}
    if arm == "peft":
        return {**common, "loop": "model(input_ids, attention_mask, labels), right-padded, torch.optim.AdamW"}
    return {**common, "loop": "trl.SFTTrainer", "optim": "adamw_torch_fused", "completion_only_loss": True,
            "padding_free": trl_padding_free, "packing": False, "gradient_checkpointing": False,
            "train_sampling_strategy": "sequential", "pre_tokenized": "input_ids + completion_mask"}


def print_report(result: dict) -> None:
    setup = result["setup"]
    arms = setup["arms"]
    timed = setup["timed_batches"]
    print(f"\n{setup['model']} on {setup['device']} ({setup['environment']['machine']}), "
          f"dtype {setup['dtype']} (adapter {setup['adapter_dtype']}), quantization {setup['quantization']}, "
          f"{setup['trainable_parameters']:,} trainable parameters, batch {setup['batch_size']}, "
          f"{setup['steps']} timed steps ({timed['instances']} instances, {timed['tokens']:,} tokens, "
          f"{timed['prefix_tokens']:,} of them shared prefix) after {setup['warmup']} warm-up, "
          f"{setup['repeats']} repeat(s)")
    print("| arm | instances/s | tokens/s | probe loss before | after (median) | after, each repeat | peak GPU MB |")
    print("|---|---:|---:|---:|---:|---|---:|")
    for arm in arms:
        a = result[arm]
        each = ", ".join(f"{r['loss_after']:.4f}" for r in a["per_repeat"])
        peak = f"{a['peak_gpu_mb']:.0f}" if a["peak_gpu_mb"] is not None else "-"
        print(f"| {arm} | {a['instances_per_second']:.2f} | {a['tokens_per_second']:.0f} | "
              f"{a['initial_loss']:.4f} | {a['final_loss']:.4f} | {each} | {peak} |")
    for name, ratio in result["ratios"].items():
        print(f"{name} speed (instances/s = tokens/s): {ratio:.3f}")
    finals = [result[a]["final_loss"] for a in arms]
    print(f"probe loss after the same {timed['instances']} instances: spread {max(finals) - min(finals):.2e}; "
          f"loss dropped in every run: {setup['loss_dropped']}")


def main() -> int:
    config = run_config_defaults()
    lora_config = default_lora(config)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="a site folder (prepared corpus)")
    source.add_argument("--encoded", type=Path, help="tokenized instances written by --write-encoded")
    parser.add_argument("--model", default=EMBEDDED)
    parser.add_argument("--quantization", default="auto", choices=("auto", "none", "8bit", "4bit"),
                        help="auto: 4bit on CUDA, none on CPU")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                        help="every arm's dtype; auto: the model loader's (bfloat16 on CUDA; on a CPU bfloat16 "
                             "where a measured bf16 matmul beats float32, else float32)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu or cuda")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, some of {','.join(ARMS)}")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=float(config.get("train.learning-rate", 2e-4)))
    parser.add_argument("--max-grad-norm", type=float, default=float(config.get("train.max-grad-norm", 1.0)))
    parser.add_argument("--seed", type=int, default=0, help="first batch-order seed tried")
    parser.add_argument("--lora-dropout", type=float, default=lora_config.dropout,
                        help="LoRA dropout (the run config's by default; 0 makes the arms' losses comparable "
                             "to float precision)")
    parser.add_argument("--max-length", type=int, default=int(config.get("train.max-length", 512)),
                        help="longer instances are dropped, as the ClientApp does (train.max-length)")
    parser.add_argument("--probe", type=int, default=16, help="training instances whose loss is measured before and after")
    parser.add_argument("--trl-padding-free", action="store_true",
                        help="TRL flattens each batch into one row (correct with sdpa, slower on CPU)")
    parser.add_argument("--random-init", action="store_true", help="random weights, the model's architecture and tokenizer")
    parser.add_argument("--arch", action="append", default=[], metavar="KEY=VALUE", help="architecture change (with --random-init)")
    parser.add_argument("--write-encoded", type=Path, help="save the tokenized instances and exit")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--require-loss-drop", action="store_true", help="exit 1 unless every run lowered the loss")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.arch and not args.random_init:
        parser.error("--arch needs --random-init")
    arms = tuple(a.strip() for a in args.arms.split(",") if a.strip())
    if not arms or any(a not in ARMS for a in arms):
        parser.error(f"--arms {args.arms!r}: expected some of {','.join(ARMS)}")
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
        lora = replace(lora_config, dropout=args.lora_dropout)
        result = measure(model_name, examples, quantization=args.quantization, dtype=args.dtype,
                         device=args.device, steps=args.steps, warmup=args.warmup, repeats=args.repeats,
                         batch_size=args.batch_size, probe=args.probe, lora=lora,
                         learning_rate=args.learning_rate, max_grad_norm=args.max_grad_norm, seed=args.seed, arms=arms,
                         trl_padding_free=args.trl_padding_free)
    result["setup"]["model"] = args.model + (f" (random init{', ' + str(arch) if arch else ''})" if args.random_init else "")
    print_report(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.require_loss_drop and not result["setup"]["loss_dropped"]:
        print("FAILED: the probe loss did not drop in every run", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
