"""A site's training loop: the optimizer across rounds (moments kept in Flower's Context.state),
LoRA+, and how the answer-token loss is weighted."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict

from client_app import optimizer_state
from modeling.adapter_io import get_adapter_state, set_adapter_state
from modeling.base import load_base_model
from modeling.lora import LoraSettings, attach_lora
from modeling.training import OptimizerState, TrainSettings, encode, make_optimizer, train_round

SETTINGS = TrainSettings(batch_size=2, max_steps=2, learning_rate=1e-2, warmup_ratio=0.0, lr_scheduler="constant",
                         keep_optimizer_state=True)


def _site(tiny_llama, r=4):
    model, tokenizer = load_base_model(str(tiny_llama), "none", "float32")
    peft_model = attach_lora(model, LoraSettings(r=r, alpha=16, dropout=0.0), seed=0)
    examples = [encode(tokenizer, [{"role": "user", "content": f"note {i}"}], '{"problem": ["fever"]}')
                for i in range(4)]
    return peft_model, tokenizer, examples


def _context() -> Context:
    return Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})


def test_a_round_continues_the_previous_rounds_moments(tiny_llama):
    model, tokenizer, examples = _site(tiny_llama)
    first = train_round(model, examples, SETTINGS, tokenizer.pad_token_id, server_round=1, num_rounds=2)
    assert not first.optimizer_restored and first.optimizer_state.step == 2
    assert all(torch.count_nonzero(v) > 0 for k, v in first.optimizer_state.moments.items() if "exp_avg_sq" in k)

    context = _context()
    optimizer_state.save(context, first.optimizer_state, server_round=1)
    kept = optimizer_state.load(context, server_round=2)
    assert kept.step == 2 and kept.moments.keys() == first.optimizer_state.moments.keys()
    assert all(torch.equal(kept.moments[k], first.optimizer_state.moments[k]) for k in kept.moments)

    second = train_round(model, examples, SETTINGS, tokenizer.pad_token_id, server_round=2, num_rounds=2,
                         optimizer_state=kept)
    assert second.optimizer_restored and second.optimizer_state.step == 4  # AdamW's count went on

    # The restored moments are what the optimizer starts from: from the same weights and
    # batch, one step with them moves the adapter differently than a fresh optimizer does.
    one = TrainSettings(**{**SETTINGS.__dict__, "max_steps": 1})
    start = get_adapter_state(model)
    fresh = train_round(model, examples, one, tokenizer.pad_token_id, server_round=3, num_rounds=3)
    after_fresh = get_adapter_state(model)
    set_adapter_state(model, start)
    kept = train_round(model, examples, one, tokenizer.pad_token_id, server_round=3, num_rounds=3,
                       optimizer_state=second.optimizer_state)
    after_kept = get_adapter_state(model)
    assert not fresh.optimizer_restored and kept.optimizer_restored
    assert any(not np.allclose(after_fresh[k], after_kept[k]) for k in start)


def test_state_is_used_only_by_the_next_round_and_can_be_turned_off(tiny_llama):
    model, tokenizer, examples = _site(tiny_llama)
    first = train_round(model, examples, SETTINGS, tokenizer.pad_token_id, server_round=1, num_rounds=3)
    context = _context()
    optimizer_state.save(context, first.optimizer_state, server_round=1)
    assert optimizer_state.load(context, server_round=3) is None  # round 2 was missed: afresh
    assert optimizer_state.load(_context(), server_round=2) is None  # a new run (resume): afresh

    off = TrainSettings(**{**SETTINGS.__dict__, "keep_optimizer_state": False})
    result = train_round(model, examples, off, tokenizer.pad_token_id, server_round=2, num_rounds=3,
                         optimizer_state=optimizer_state.load(context, server_round=2))
    assert result.optimizer_state is None and not result.optimizer_restored
    optimizer_state.save(context, None, server_round=2)
    assert optimizer_state.load(context, server_round=3) is None


def test_moments_of_another_adapter_shape_are_not_loaded(tiny_llama):
    model, tokenizer, examples = _site(tiny_llama, r=4)
    first = train_round(model, examples, SETTINGS, tokenizer.pad_token_id, server_round=1, num_rounds=2)
    other, _, _ = _site(tiny_llama, r=8)
    result = train_round(other, examples, SETTINGS, tokenizer.pad_token_id, server_round=2, num_rounds=2,
                         optimizer_state=first.optimizer_state)
    assert not result.optimizer_restored and result.optimizer_state.step == 2


def test_loraplus_gives_b_ratio_times_as_rate_through_the_schedule(tiny_llama):
    model, tokenizer, examples = _site(tiny_llama)
    settings = TrainSettings(**{**SETTINGS.__dict__, "loraplus_lr_ratio": 16.0})
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(model, params, settings)
    ids = {id(p): n for n, p in model.named_parameters()}
    rates = {("lora_B" in ids[id(p)]): g["base_lr"] for g in optimizer.param_groups for p in g["params"]}
    assert rates == {False: 1e-2, True: 16 * 1e-2}
    result = train_round(model, examples, settings, tokenizer.pad_token_id, server_round=1, num_rounds=1)
    assert result.steps == 2 and result.optimizer_state.step == 2


@pytest.mark.parametrize("ratio", [0.5, -1.0])
def test_a_loraplus_ratio_below_one_is_refused_naming_the_key(ratio):
    with pytest.raises(ValueError, match="train.loraplus-lr-ratio"):
        TrainSettings(loraplus_lr_ratio=ratio)


def test_optimizer_state_round_trips_through_context_records():
    state = OptimizerState({"w:exp_avg": torch.ones(2, 3), "w:exp_avg_sq": torch.full((2, 3), 0.5)}, step=7)
    context = _context()
    optimizer_state.save(context, state, server_round=4)
    back = optimizer_state.load(context, server_round=5)
    assert back.step == 7 and torch.equal(back.moments["w:exp_avg_sq"], state.moments["w:exp_avg_sq"])


def test_every_answer_token_weighs_the_same_whatever_batch_it_lands_in(tiny_llama, monkeypatch):
    """Batches group instances of similar length, so dividing each batch's loss by its own
    token count gave a batch of two-token `{}` answers ten times the weight per token of a
    batch of long answers. The gradient reaching each batch's summed loss must be one
    constant: 1 / (batch size x mean answer tokens)."""
    from modeling import training

    model, tokenizer, _ = _site(tiny_llama)
    long_answer = '{"problem": ["' + " ".join(f"finding {i}" for i in range(12)) + '"]}'
    examples = [encode(tokenizer, [{"role": "user", "content": f"note {i}"}], "{}" if i % 2 else long_answer)
                for i in range(8)]
    assert len({e.answer_len for e in examples}) == 2
    seen: list[tuple[int, float]] = []
    real = training.answer_loss

    def recording(model, batch):
        loss, count = real(model, batch)
        loss.register_hook(lambda grad, n=count: seen.append((n, float(grad))))
        return loss, count

    monkeypatch.setattr(training, "answer_loss", recording)
    settings = TrainSettings(batch_size=2, max_steps=4, learning_rate=1e-3)
    train_round(model, examples, settings, tokenizer.pad_token_id, server_round=1, num_rounds=1)
    counts = {n for n, _ in seen}
    assert len(counts) > 1, "the batches should differ in answer tokens"
    expected = 1 / training.loss_scale(examples, 2)
    assert all(abs(g - expected) < 1e-6 * expected for _, g in seen), seen
