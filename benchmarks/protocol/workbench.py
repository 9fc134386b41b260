"""One base model with a LoRA adapter, loaded once per invocation: the local arms' training
(the ClientApp's `train_round`, round by round) and every arm's generated answers."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from clinical_ie.evaluate import InstanceEvaluator, site_instances, training_pairs
from clinical_ie.prompt import PREFIX_END
from data_loaders.sites import load_site
from modeling.training import TrainSettings, encode_all, train_round

from .profiles import TRAINING_SITES, Profile


class Workbench:
    """One base model with a LoRA adapter, loaded once, for local training and scoring."""

    step = None  # how `train_round` trains (None: generative answers; token_arms.TaggerBench: tags)

    def __init__(self, profile: Profile, dtype: str = "auto") -> None:
        from modeling.base import load_base_model
        from modeling.lora import LoraSettings, attach_lora

        self.profile = profile
        model, self.tokenizer = load_base_model(profile.model, profile.quantization, dtype)
        self.dtype = str(next(model.parameters()).dtype).removeprefix("torch.")  # what this bench computes in
        self.model = attach_lora(model, LoraSettings(), seed=0)
        from modeling.adapter_io import get_adapter_state

        self.initial = get_adapter_state(self.model)
        self._examples: dict[str, list] = {}

    def examples(self, name: str, folder: Path) -> list:
        if name not in self._examples:
            site = load_site(folder, name=name)
            self._examples[name], _ = encode_all(self.tokenizer, training_pairs(site_instances(site, "train")),
                                                 self.profile.max_length, PREFIX_END)
        return self._examples[name]

    def settings(self, steps: int, **overrides: Any) -> TrainSettings:
        return TrainSettings(max_steps=steps, max_length=self.profile.max_length, **overrides)

    def train(self, examples: Sequence, steps_per_round: int, rounds: int, start: dict | None, target: Path,
              **overrides: Any) -> Path:
        """R rounds of `steps_per_round` steps, as a site trains them (the optimizer's moments
        kept from round to round unless `keep_optimizer_state=False`, one learning-rate
        schedule across rounds); saves a PEFT adapter folder. `overrides`: TrainSettings
        fields (learning_rate, loraplus_lr_ratio, ...)."""
        from modeling.adapter_io import get_adapter_state, save_peft_folder, set_adapter_state

        if (target / "adapter_model.safetensors").is_file():
            return target
        set_adapter_state(self.model, start or self.initial)
        settings = self.settings(steps_per_round, **overrides)
        seconds = tokens = 0.0
        kept = None
        for r in range(1, rounds + 1):
            result = train_round(self.model, examples, settings, self.tokenizer.pad_token_id, r, rounds,
                                 description=f"{target.parent.name} round {r}", optimizer_state=kept, step=self.step)
            kept = result.optimizer_state
            seconds += result.seconds
            tokens += result.tokens
        tmp = target.with_name(target.name + ".tmp")
        save_peft_folder(get_adapter_state(self.model), self.model.peft_config["default"], tmp)
        self.save_beside(tmp)
        (tmp / "training.json").write_text(json.dumps({"rounds": rounds, "steps-per-round": steps_per_round,
                                                       "train-seconds": seconds, "train-tokens": tokens,
                                                       "dtype": self.dtype, "settings": asdict(settings)}))
        tmp.rename(target)
        return target

    def save_beside(self, folder: Path) -> None:
        """What else a saved adapter needs beside it (a tagger's labels); nothing here."""
        del folder

    def outputs(self, adapter: Path | None, instances: Sequence, cache: Path, description: str) -> list[str]:
        """Generated answers of an adapter (None = the base model) for `instances`, cached."""
        from modeling.adapter_io import load_peft_folder, set_adapter_state

        key = outputs_key(instances, self.profile.constrained, adapter)
        if cache.is_file():
            saved = json.loads(cache.read_text())
            if saved.get("instances") == key:
                return saved["outputs"]
        set_adapter_state(self.model, load_peft_folder(adapter) if adapter else self.initial)
        evaluator = InstanceEvaluator(self.tokenizer, instances, self.profile.max_length,
                                      self.profile.max_new_tokens, self.profile.eval_batch_size,
                                      constrained=self.profile.constrained)
        start = time.perf_counter()
        outputs = evaluator.generate(self.model, description)
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"instances": key, "outputs": outputs,
                                     "seconds": time.perf_counter() - start}))
        return outputs


def outputs_key(instances: Sequence, constrained: bool, adapter: Path | None) -> str:
    """What cached answers were generated from: the instances, the decoding and the
    adapter's weights, so a run made again (other settings, other code) is never scored with
    the answers of the adapter it replaced."""
    weights = hashlib.sha256((adapter / "adapter_model.safetensors").read_bytes()).hexdigest() if adapter else "base"
    return hashlib.sha256(json.dumps([[i.doc_id, i.offset, i.task] for i in instances]
                                     + [constrained, weights]).encode()).hexdigest()[:16]


def steps_per_round(bench: Workbench, sites: dict[str, Path]) -> int:
    """The federation's optimizer steps per round, summed over the training sites."""
    settings = bench.settings(bench.profile.steps)
    return sum(settings.steps_per_round(len(bench.examples(n, sites[n]))) for n in TRAINING_SITES)
