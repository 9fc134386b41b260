"""Adapter weights <-> numpy / Flower ArrayRecord, and export as a PEFT folder.

An adapter travels as a flat dict of float32 arrays keyed by PEFT's own state-dict
names, so a folder written here is exactly what `PeftModel.from_pretrained` reads.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch


def get_adapter_state(peft_model) -> OrderedDict[str, np.ndarray]:
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(peft_model)
    # float32: ArrayRecord cannot carry bfloat16, and averaging wants full precision.
    return OrderedDict(
        (k, v.detach().to(device="cpu", dtype=torch.float32).numpy().copy())
        for k, v in sorted(state.items())
    )


def set_adapter_state(peft_model, state: dict[str, np.ndarray]) -> None:
    """Load `state` into the model's adapter; the keys and shapes must match exactly."""
    from peft import set_peft_model_state_dict

    expected = get_adapter_state_shapes(peft_model)
    check_state_matches(state, expected, where="adapter")
    tensors = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in state.items()}
    result = set_peft_model_state_dict(peft_model, tensors)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ValueError(f"adapter: PEFT did not recognise keys {unexpected[:5]}")


def get_adapter_state_shapes(peft_model) -> dict[str, tuple[int, ...]]:
    from peft import get_peft_model_state_dict

    return {k: tuple(v.shape) for k, v in get_peft_model_state_dict(peft_model).items()}


def check_state_matches(
    state: dict[str, np.ndarray], expected: dict[str, tuple[int, ...]], where: str
) -> None:
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise ValueError(
            f"{where}: keys differ from the model's adapter: "
            f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {extra[:3]}{'...' if len(extra) > 3 else ''}"
        )
    for key, shape in expected.items():
        if tuple(state[key].shape) != tuple(shape):
            raise ValueError(
                f"{where}: {key} has shape {tuple(state[key].shape)}, expected {tuple(shape)}"
            )


def save_peft_folder(
    state: dict[str, np.ndarray],
    lora_config,
    folder: Path,
    extra_metadata: dict | None = None,
) -> Path:
    """Write `adapter_config.json` + `adapter_model.safetensors` (PEFT's own layout)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lora_config.save_pretrained(str(folder))
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in state.items()}
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    if extra_metadata:
        (folder / "fedmedlora.json").write_text(json.dumps(extra_metadata, indent=2, sort_keys=True))
    return folder


def load_peft_folder(folder: Path) -> OrderedDict[str, np.ndarray]:
    from safetensors.numpy import load_file

    path = Path(folder) / "adapter_model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (not a PEFT adapter folder)")
    return OrderedDict(sorted(load_file(str(path)).items()))


def attach_saved_adapter(model, folder: Path):
    """Wrap `model` with the LoRA adapter saved in `folder` (a PEFT folder)."""
    from .lora import LoraSettings, attach_lora

    config_path = Path(folder) / "adapter_config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} does not exist (not a PEFT adapter folder)")
    config = json.loads(config_path.read_text())
    try:
        settings = LoraSettings(r=config["r"], alpha=config["lora_alpha"], dropout=0.0,
                                target_modules=tuple(sorted(config["target_modules"])))
    except KeyError as err:
        raise ValueError(f"{config_path}: missing key {err}") from None
    # A token-classification adapter trains and saves its classification head whole.
    head = (config.get("modules_to_save") or [None])[0] if config.get("task_type") == "TOKEN_CLS" else None
    peft_model = attach_lora(model, settings, head=head)
    set_adapter_state(peft_model, load_peft_folder(folder))
    return peft_model
