"""Base-model loading, LoRA adapters, their exchange format and local training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modeling.adapter_io import get_adapter_state, load_peft_folder, save_peft_folder, set_adapter_state
from modeling.base import EMBEDDED_DEFAULT, load_base_model, model_identity, resolve_model_path
from modeling.generation import generate_answers
from modeling.lora import LoraSettings, attach_lora
from modeling.training import TrainSettings, collate, encode, lr_factor, mean_answer_loss, train_round
from wire.arrays import from_arrayrecord, to_arrayrecord

SMALL_LORA = LoraSettings(r=4, alpha=16, dropout=0.0)


def _peft(path, seed=0, quantization="none"):
    model, tokenizer = load_base_model(str(path), quantization, "float32")
    return attach_lora(model, SMALL_LORA, seed=seed, base_model_name=str(path)), tokenizer


def _randomise_b(peft_model, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_qwen2"])
def test_adapter_arrayrecord_round_trip_is_lossless(arch, request):
    path = request.getfixturevalue(arch)
    peft_model, _ = _peft(path)
    _randomise_b(peft_model)
    state = get_adapter_state(peft_model)
    assert state and all(v.dtype == np.float32 for v in state.values())
    assert all(("lora_A" in k or "lora_B" in k) for k in state)
    back = from_arrayrecord(to_arrayrecord(state))
    assert list(back) == list(state)
    for key in state:
        assert np.array_equal(back[key], state[key])

    other, _ = _peft(path, seed=7)  # different initial A
    set_adapter_state(other, back)
    for key, value in get_adapter_state(other).items():
        assert np.array_equal(value, state[key])


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_qwen2"])
def test_exported_folder_loads_in_peft_with_identical_outputs(arch, request, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    path = request.getfixturevalue(arch)
    peft_model, tokenizer = _peft(path)
    _randomise_b(peft_model)
    state = get_adapter_state(peft_model)
    folder = save_peft_folder(state, SMALL_LORA.to_peft_config(str(path)), tmp_path / "adapter")

    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path), folder)
    ids = tokenizer("Aspirin 81 mg daily for chest pain.", return_tensors="pt").input_ids
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
        got = loaded(input_ids=ids).logits
    assert torch.allclose(expected, got, atol=1e-5)
    base = AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        assert not torch.allclose(base(input_ids=ids).logits, got, atol=1e-4)  # the adapter matters
    assert all(np.array_equal(v, state[k]) for k, v in load_peft_folder(folder).items())


def test_set_adapter_state_rejects_wrong_keys_and_shapes(tiny_llama):
    peft_model, _ = _peft(tiny_llama)
    state = get_adapter_state(peft_model)
    key = next(iter(state))
    missing = dict(state)
    del missing[key]
    with pytest.raises(ValueError, match="missing"):
        set_adapter_state(peft_model, missing)
    wrong = dict(state)
    wrong[key] = np.zeros((3, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="shape"):
        set_adapter_state(peft_model, wrong)


def test_unknown_target_module_is_named(tiny_llama):
    model, _ = load_base_model(str(tiny_llama), "none", "float32")
    with pytest.raises(ValueError, match="lora.target-modules.*qkv_proj"):
        attach_lora(model, LoraSettings(target_modules=("qkv_proj",)))


def test_missing_checkpoint_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        resolve_model_path(str(tmp_path / "does-not-exist"))
    with pytest.raises(ValueError, match="embedded"):
        resolve_model_path("embedded:nope")


def test_four_bit_nf4_path_trains_on_cpu(tiny_llama):
    import bitsandbytes as bnb

    peft_model, tokenizer = _peft(tiny_llama, quantization="4bit")
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in peft_model.modules())
    before = get_adapter_state(peft_model)
    examples = [encode(tokenizer, [{"role": "user", "content": f"note {i}"}], '{"problem": ["fever"]}')
                for i in range(4)]
    result = train_round(peft_model, examples, TrainSettings(batch_size=2, max_steps=2, learning_rate=1e-2),
                         tokenizer.pad_token_id, server_round=1, num_rounds=1)
    assert np.isfinite(result.loss) and result.steps == 2
    after = get_adapter_state(peft_model)
    assert any(not np.array_equal(before[k], after[k]) for k in before)


def test_collate_labels_only_answer_tokens(tiny_llama):
    _, tokenizer = load_base_model(str(tiny_llama), "none", "float32")
    short = encode(tokenizer, [{"role": "user", "content": "a"}], '{"drug": ["x"]}')
    long = encode(tokenizer, [{"role": "user", "content": "a much longer note here"}], "{}")
    batch = collate([short, long], tokenizer.pad_token_id, "cpu")
    labels, ids = batch["labels"], batch["input_ids"]
    for row, enc in enumerate([short, long]):
        labelled = (labels[row] != -100).nonzero().flatten().tolist()
        assert len(labelled) == enc.answer_len
        assert labelled == list(range(ids.shape[1] - enc.answer_len, ids.shape[1]))
        assert ids[row, -enc.answer_len:].tolist() == list(enc.input_ids[-enc.answer_len:])
    assert batch["keep"] == max(short.answer_len, long.answer_len) + 1
    # left padding: padded positions are masked and the first real token has position 0
    pad = ids.shape[1] - len(short.input_ids)
    assert batch["attention_mask"][0, :pad].sum() == 0 and batch["position_ids"][0, pad] == 0


def test_answer_only_logits_give_the_full_forward_loss(tiny_llama):
    import torch.nn.functional as F

    peft_model, tokenizer = _peft(tiny_llama)
    examples = [encode(tokenizer, [{"role": "user", "content": t}], a)
                for t, a in [("fever and cough", '{"problem": ["fever", "cough"]}'), ("no entities", "{}")]]
    fast = mean_answer_loss(peft_model, examples, tokenizer.pad_token_id)
    total, count = 0.0, 0
    with torch.no_grad():
        for e in examples:  # unpadded, all logits
            ids = torch.tensor([e.input_ids])
            logits = peft_model(input_ids=ids).logits[0, :-1]
            labels = ids[0, 1:].clone()
            labels[: len(e.input_ids) - 1 - e.answer_len] = -100
            total += float(F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum"))
            count += e.answer_len
    assert fast == pytest.approx(total / count, rel=1e-4)


def test_learning_rate_schedule_continues_across_rounds():
    settings = TrainSettings(batch_size=4, local_epochs=1.0, warmup_ratio=0.1)
    steps = settings.steps_per_round(40)
    assert steps == 10
    factors = [lr_factor(s, 3 * steps, settings) for s in range(3 * steps)]
    assert factors[0] < factors[2] <= 1.0  # warm-up only at the start of the run
    assert factors[steps] < factors[steps - 1]  # round 2 starts where round 1 ended
    assert factors[-1] < 0.05


def test_training_lowers_the_loss(tiny_llama):
    peft_model, tokenizer = _peft(tiny_llama)
    examples = [encode(tokenizer, [{"role": "user", "content": f"Patient {i} has fever."}], '{"problem": ["fever"]}')
                for i in range(8)]
    before = mean_answer_loss(peft_model, examples, tokenizer.pad_token_id)
    train_round(peft_model, examples, TrainSettings(batch_size=4, local_epochs=10, learning_rate=1e-2,
                                                    warmup_ratio=0.0, lr_scheduler="constant", loraplus_lr_ratio=0.0),
                tokenizer.pad_token_id, server_round=1, num_rounds=1)
    assert mean_answer_loss(peft_model, examples, tokenizer.pad_token_id) < 0.7 * before


def test_model_identity_is_stable_and_weight_sensitive(tiny_llama, tmp_path):
    from support.tiny_models import make_tiny_model

    first = model_identity(str(tiny_llama))
    assert first == model_identity(str(tiny_llama))
    other = make_tiny_model(tmp_path / "other", "llama", tiny_llama, seed=1)
    assert model_identity(str(other)).sha256 != first.sha256


def test_embedded_default_model_generates_text():
    model, tokenizer = load_base_model(EMBEDDED_DEFAULT, "none", "float32")
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 30
    answer = generate_answers(model, tokenizer, [[{"role": "user", "content": "What is the capital of France?"}]],
                              max_new_tokens=20)[0]
    assert "Paris" in answer


def test_auto_dtype_on_cpu_follows_the_measured_matmul_and_records_it(monkeypatch, tmp_path):
    import json
    import math

    from modeling import base

    monkeypatch.setattr(base.torch.cuda, "is_available", lambda: False)
    for bf16_seconds, expected in ((0.001, torch.bfloat16), (0.5, torch.float32), (math.inf, torch.float32)):
        monkeypatch.setenv("FEDMEDLORA_CACHE", str(tmp_path / str(bf16_seconds)))
        base.cpu_prefers_bfloat16.cache_clear()
        monkeypatch.setattr(base, "measure_matmul_dtypes", lambda s=bf16_seconds: (0.01, s))
        assert base.resolve_dtype("auto") == expected
        recorded = json.loads((tmp_path / str(bf16_seconds) / "dtype-probe.json").read_text())
        assert recorded["choice"] == str(expected).removeprefix("torch.")
    base.cpu_prefers_bfloat16.cache_clear()


def test_every_process_on_one_machine_takes_the_recorded_dtype(monkeypatch, tmp_path):
    """A later process whose own measurement would flip (a loaded machine) keeps the first
    decision; another machine (CPU, cores or torch differ) measures for itself."""
    from modeling import base

    monkeypatch.setattr(base.torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("FEDMEDLORA_CACHE", str(tmp_path))
    decisions = []
    for measured in ((0.02, 0.008), (0.002, 0.020)):  # bf16 faster, then (noisy) float32 faster
        base.cpu_prefers_bfloat16.cache_clear()
        monkeypatch.setattr(base, "measure_matmul_dtypes", lambda m=measured: m)
        decisions.append(base.resolve_dtype("auto"))
    assert decisions == [torch.bfloat16, torch.bfloat16]
    monkeypatch.setattr(base, "_probe_key", lambda: "another CPU|64 cores|torch 9")
    base.cpu_prefers_bfloat16.cache_clear()
    assert base.resolve_dtype("auto") == torch.float32
    base.cpu_prefers_bfloat16.cache_clear()


def test_a_slow_first_bf16_call_does_not_decide(monkeypatch):
    """The first bf16 matmul of a process can carry tens of milliseconds of set-up: it is a
    warm-up, not a measurement (it once flipped one machine to float32 in one process)."""
    from modeling import base

    calls = {torch.float32: 0, torch.bfloat16: 0}

    def fake(x, y):
        calls[x.dtype] += 1
        if x.dtype == torch.bfloat16:
            return 0.050 if calls[x.dtype] == 1 else 0.001
        return 0.002

    monkeypatch.setattr(base, "_matmul_once", fake)
    fp32, bf16 = base.measure_matmul_dtypes()
    assert (fp32, bf16) == (0.002, 0.001)
    # where bf16 stays slow once warm (emulated), the probe gives up early
    monkeypatch.setattr(base, "_matmul_once", lambda x, y: 0.5 if x.dtype == torch.bfloat16 else 0.002)
    assert base.measure_matmul_dtypes()[1] == float("inf")


def test_the_real_matmul_probe_measures_both_dtypes():
    from modeling.base import measure_matmul_dtypes

    fp32, bf16 = measure_matmul_dtypes(repeats=3)
    assert 0 < fp32 < 5 and bf16 > 0
