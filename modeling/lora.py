"""LoRA settings and attaching a LoRA adapter to a base model with PEFT."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

# The reference paper's choice: every attention and MLP projection of a LLaMA block.
PAPER_TARGET_MODULES: tuple[str, ...] = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)


@dataclass(frozen=True)
class LoraSettings:
    """LoRA hyper-parameters, defaulting to the reference paper's (r=16, alpha=64)."""

    r: int = 16
    alpha: int = 64
    dropout: float = 0.05
    target_modules: tuple[str, ...] = field(default=PAPER_TARGET_MODULES)

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"lora.r: must be a positive integer, got {self.r}")
        if self.alpha <= 0:
            raise ValueError(f"lora.alpha: must be positive, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout: must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ValueError("lora.target-modules: must name at least one module")

    def to_peft_config(self, base_model_name: str | None = None, head: str | None = None):
        """PEFT's LoraConfig; with `head`, a token-classification one that trains and saves that
        classification head whole (`modules_to_save`, modeling/token_classification.py)."""
        from peft import LoraConfig

        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=list(self.target_modules),
            bias="none",
            task_type="TOKEN_CLS" if head else "CAUSAL_LM",
            modules_to_save=[head] if head else None,
            base_model_name_or_path=base_model_name,
        )

    def as_dict(self) -> dict:
        return {
            "r": self.r,
            "alpha": self.alpha,
            "dropout": self.dropout,
            "target-modules": ",".join(self.target_modules),
        }


def attach_lora(model, settings: LoraSettings, seed: int = 0, base_model_name: str | None = None,
                head: str | None = None):
    """Wrap `model` in a PeftModel whose initial adapter depends only on `seed`; `head`: the
    classification head of a token-classification model, trained and sent with the adapter."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        # Keeps norms in fp32 for stable QLoRA; no gradient checkpointing: it trades
        # speed for memory, and memory is not what limits small models.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    missing = [m for m in settings.target_modules if not _has_module(model, m)]
    if missing:
        raise ValueError(
            f"lora.target-modules: {missing} not found in {type(model).__name__}; "
            f"its linear layers include {sorted(_linear_names(model))[:20]}"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(model, settings.to_peft_config(base_model_name, head))


def _linear_names(model) -> set[str]:
    return {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) or "Linear" in type(module).__name__
    }


def _has_module(model, short_name: str) -> bool:
    return any(name.rsplit(".", 1)[-1] == short_name for name, _ in model.named_modules())
