"""The shared instruction prefix: computed once per batch, it must give the same loss,
gradients and generated answers as the per-instance computation, and the prefix/suffix
split must fall on a token boundary so training and inference see the same ids."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clinical_ie.evaluate import site_instances, training_pairs
from clinical_ie.prompt import PREFIX_END, build_messages
from data_loaders.sites import ensure_demo_corpus, load_site
from modeling.adapter_io import get_adapter_state
from modeling.base import load_base_model
from modeling.generation import generate_answers
from modeling.lora import LoraSettings, attach_lora
from modeling.training import TrainSettings, answer_loss, collate, encode, encode_all, mean_answer_loss, train_round

LORA = LoraSettings(r=4, alpha=16, dropout=0.0)  # no dropout: both paths must be deterministic

INSTRUCTION = [{"role": "system", "content": "You extract clinical entities and answer with JSON only."}]
SENTENCES = [
    "Fever.",
    "The patient reported severe chest pain after taking aspirin 81 mg daily for two weeks.",
    "No rash.",
    "Blood pressure was 140/90 mmHg on admission, and metoprolol was started.",
]


def _messages(sentence: str) -> list[dict[str, str]]:
    user = f"Entity types:\n- problem: a disease\n- drug: a medication\nAnswer with JSON.{PREFIX_END} {sentence}"
    return [*INSTRUCTION, {"role": "user", "content": user}]


def _examples(tokenizer):
    answers = ['{"problem": ["Fever"]}', '{"problem": ["chest pain"], "drug": ["aspirin"]}', "{}",
               '{"drug": ["metoprolol"]}']
    return [encode(tokenizer, _messages(s), a, PREFIX_END) for s, a in zip(SENTENCES, answers)]


def _peft(path, dtype="float32", quantization="none"):
    model, tokenizer = load_base_model(str(path), quantization, dtype)
    peft_model = attach_lora(model, LORA, seed=0, base_model_name=str(path))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # B = 0 at initialisation would hide the adapter's share of the gradient
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_((torch.randn(param.shape, generator=gen) * 0.05).to(param.dtype))
    return peft_model, tokenizer


def _loss_and_grads(model, examples, pad_id, share_prefix):
    model.zero_grad(set_to_none=True)
    loss, count = answer_loss(model, collate(examples, pad_id, "cpu", share_prefix))
    (loss / count).backward()
    grads = {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}
    return float(loss.detach()), grads


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp(min=1e-12))


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_qwen2"])
def test_shared_prefix_loss_and_lora_gradients_equal_per_instance(arch, request):
    model, tokenizer = _peft(request.getfixturevalue(arch))
    examples = _examples(tokenizer)
    suffix_lengths = {len(e.input_ids) - e.prefix_len for e in examples}
    assert len(suffix_lengths) == len(examples)  # different lengths: the batch is padded
    assert len({e.prefix for e in examples}) == 1 and examples[0].prefix_len > 10

    batch = collate(examples, tokenizer.pad_token_id, "cpu", share_prefix=True)
    assert "prefix_ids" in batch and batch["input_ids"].shape[1] == max(suffix_lengths)

    ref_loss, ref_grads = _loss_and_grads(model, examples, tokenizer.pad_token_id, share_prefix=False)
    loss, grads = _loss_and_grads(model, examples, tokenizer.pad_token_id, share_prefix=True)
    assert abs(loss - ref_loss) <= 1e-5 * abs(ref_loss)
    assert set(grads) == set(ref_grads)
    worst = max(_relative(grads[n], ref_grads[n]) for n in ref_grads)
    assert worst <= 1e-5, f"largest relative LoRA gradient difference {worst:.2e}"
    # The prefix's LoRA weights get gradient through the broadcast cache: a layer's A
    # matrices are nonzero for the sentence tokens and the prefix alike.
    assert all(g.abs().sum() > 0 for n, g in grads.items() if "lora_A" in n)


def test_validation_loss_is_the_same_with_and_without_sharing(tiny_llama):
    model, tokenizer = _peft(tiny_llama)
    examples = _examples(tokenizer) * 3
    shared = mean_answer_loss(model, examples, tokenizer.pad_token_id, batch_size=5, share_prefix=True)
    plain = mean_answer_loss(model, examples, tokenizer.pad_token_id, batch_size=5, share_prefix=False)
    assert shared == pytest.approx(plain, rel=1e-5)


def test_one_training_round_gives_the_same_adapter(tiny_llama):
    settings = TrainSettings(learning_rate=1e-3, batch_size=4, max_steps=3, warmup_ratio=0.0, max_grad_norm=0.0)
    states = []
    for share in (False, True):
        model, tokenizer = _peft(tiny_llama)
        result = train_round(model, _examples(tokenizer) * 2, settings, tokenizer.pad_token_id,
                             server_round=1, num_rounds=1, share_prefix=share)
        assert result.steps == 3
        states.append(get_adapter_state(model))
    for key, ref in states[0].items():
        assert np.allclose(states[1][key], ref, rtol=1e-4, atol=1e-6), key


def test_batches_are_formed_from_one_instruction(tiny_llama):
    import random

    from modeling.training import _batches

    _, tokenizer = load_base_model(str(tiny_llama), "none", "float32")
    other = [encode(tokenizer, [{"role": "user", "content": f"Relation types: x{PREFIX_END} {s}"}], "{}",
                    PREFIX_END) for s in SENTENCES]
    examples = _examples(tokenizer) + other
    batches = _batches(examples, 3, random.Random(0))
    assert sum(len(b) for b in batches) == len(examples)
    assert all(len({e.prefix for e in b}) == 1 for b in batches)


def test_generation_with_shared_prefix_gives_the_same_answers(tiny_llama):
    model, tokenizer = _peft(tiny_llama)
    prompts = [_messages(s) for s in SENTENCES] + [[{"role": "user", "content": "no marker here"}]]
    plain = generate_answers(model, tokenizer, prompts, max_new_tokens=12, batch_size=3, prefix_end=PREFIX_END,
                             share_prefix=False)
    shared = generate_answers(model, tokenizer, prompts, max_new_tokens=12, batch_size=3, prefix_end=PREFIX_END)
    assert shared == plain
    assert all(answer for answer in shared)  # a random model still writes something


# Tolerances are those of the arithmetic, not of the method: NF4 computes in bfloat16, and
# LLM.int8 picks its outlier columns over the whole batch, which differs between the paths.
@pytest.mark.parametrize("dtype,quantization,loss_tolerance,grad_tolerance", [
    ("bfloat16", "none", 1e-2, 5e-2),
    ("float32", "4bit", 1e-2, 5e-2),
    ("float32", "8bit", 1e-3, 5e-2),
])
def test_shared_prefix_with_low_precision_and_bitsandbytes(tiny_llama, dtype, quantization, loss_tolerance,
                                                           grad_tolerance):
    model, tokenizer = _peft(tiny_llama, dtype=dtype, quantization=quantization)
    examples = _examples(tokenizer)
    ref_loss, ref_grads = _loss_and_grads(model, examples, tokenizer.pad_token_id, share_prefix=False)
    loss, grads = _loss_and_grads(model, examples, tokenizer.pad_token_id, share_prefix=True)
    assert abs(loss - ref_loss) <= loss_tolerance * abs(ref_loss)
    worst = max(_relative(grads[n], ref_grads[n]) for n in ref_grads)
    assert worst <= grad_tolerance, f"largest relative LoRA gradient difference {worst:.2e}"


# Chat templates of other model families, applied to the embedded tokenizer: the marker
# must still end on a token boundary wherever the template puts the user message.
_TEMPLATES = {
    "llama3": (
        "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
        "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
    ),
    "mistral": (
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
        "{% elif m['role'] == 'system' %}{{ m['content'] }}\n\n{% endif %}{% endfor %}"
    ),
}


@pytest.mark.parametrize("template", ["native", *_TEMPLATES])
def test_prefix_split_falls_on_a_token_boundary(tiny_llama, template):
    """For every NER and RE prompt of the demo corpus: prefix ids + suffix ids equal the
    ids of the whole prompt tokenized at once, and the prefix ends with the marker."""
    _, tokenizer = load_base_model(str(tiny_llama), "none", "float32")
    if template != "native":
        tokenizer.chat_template = _TEMPLATES[template]
    site = load_site(ensure_demo_corpus() / "site-a")
    instances = site_instances(site, "train")[:60]
    assert {i.task for i in instances} == {"ner", "re"}
    prefixes = set()
    for inst in instances:
        messages = build_messages(inst)
        whole = tokenizer(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False),
                          add_special_tokens=False)["input_ids"]
        enc = encode(tokenizer, messages, None, PREFIX_END)
        assert list(enc.input_ids) == whole, inst.text
        assert tokenizer.decode(enc.prefix).endswith(PREFIX_END)
        prefixes.add((inst.task, enc.prefix))
    assert len(prefixes) == 2  # one shared instruction per task at this site


def test_real_corpus_prompts_share_most_of_their_tokens(tiny_llama):
    """The point of the exercise: on a site's real training instances the shared prefix
    is most of every prompt."""
    _, tokenizer = load_base_model(str(tiny_llama), "none", "float32")
    site = load_site(ensure_demo_corpus() / "site-b")
    encoded, _ = encode_all(tokenizer, training_pairs(site_instances(site, "train")[:40]), 384, PREFIX_END)
    shared = sum(e.prefix_len for e in encoded) / sum(len(e.input_ids) for e in encoded)
    assert shared > 0.5


def test_per_instance_losses_keep_the_order_given(tiny_llama):
    """Repeated and interleaved instructions: each instance's loss lands at its position."""
    from modeling.training import instance_answer_losses

    model, tokenizer = _peft(tiny_llama)
    ner = _examples(tokenizer)
    other = [encode(tokenizer, [{"role": "user", "content": f"Relation types: x{PREFIX_END} {s}"}], '{"x": []}',
                    PREFIX_END) for s in SENTENCES]
    mixed = [ner[0], other[1], ner[0], ner[2], other[3], ner[1]]
    losses = instance_answer_losses(model, mixed, tokenizer.pad_token_id, batch_size=2)
    alone = [instance_answer_losses(model, [e], tokenizer.pad_token_id)[0] for e in mixed]
    assert [n for _, n in losses] == [e.answer_len for e in mixed]
    assert losses[0][0] == pytest.approx(losses[2][0], rel=1e-5)
    for (got, _), (want, _) in zip(losses, alone):
        assert got == pytest.approx(want, rel=1e-5)
