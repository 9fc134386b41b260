"""The training-speed benchmark compares like with like: the plain PEFT loop and TRL's
SFTTrainer see the batches `train_round` trains on, in the same order, and all three arms
end at the same loss."""

from __future__ import annotations

import json
import random

import pytest
import torch

from benchmarks import train_speed
from modeling.training import Encoded, TrainSettings, _batches


@pytest.fixture
def one_thread():
    """Tiny models are all small operations: on a busy shared CPU, several intra-op threads
    wait on each other at every one of them (seconds per step instead of milliseconds)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def examples(n: int = 24, seed: int = 0, prefixes: int = 2) -> list[Encoded]:
    """Instances of `prefixes` tasks, each task's instances sharing an instruction prefix."""
    rng = random.Random(seed)
    instructions = [[rng.randrange(3, 400) for _ in range(rng.randrange(10, 16))] for _ in range(prefixes)]
    made = []
    for i in range(n):
        prefix = instructions[i % prefixes]
        sentence = [rng.randrange(3, 400) for _ in range(rng.randrange(4, 20))]
        answer = [rng.randrange(3, 400) for _ in range(rng.randrange(2, 8))] + [2]
        made.append(Encoded(tuple(prefix + sentence + answer), len(answer), len(prefix)))
    return made


def test_round_batches_follow_train_rounds_order() -> None:
    data = examples(10)
    settings = TrainSettings(batch_size=4)
    first = _batches(data, 4, random.Random("0-1"))
    drawn = train_speed.round_batches(data, settings, len(first) + 2)
    assert drawn[: len(first)] == first[::-1]  # train_round pops from the end
    assert len(drawn) == len(first) + 2  # then draws a fresh shuffle, as train_round does


def test_full_batch_seed_finds_an_order_without_short_batches() -> None:
    data = examples(18)  # two tasks of 9: each task ends in a batch of 1
    settings = TrainSettings(batch_size=4)
    seed = train_speed.full_batch_seed(data, settings, 3)
    assert seed is not None
    drawn = train_speed.round_batches(data, TrainSettings(batch_size=4, seed=seed), 3)
    assert all(len(group) == 4 for group in drawn)
    assert train_speed.full_batch_seed(data, TrainSettings(batch_size=20), 1) is None  # no batch of 20 exists


def test_batch_figures_count_every_instance_in_full() -> None:
    data = examples(8)
    batches = [data[0:4:2], data[1:4:2]]  # each batch shares one prefix
    figures = train_speed.batch_figures(batches)
    assert figures["instances"] == 4
    assert figures["tokens"] == sum(len(e.input_ids) for e in data[:4])
    assert figures["prefix_tokens"] == sum(e.prefix_len for e in data[:4])
    assert figures["tokens_prefix_once"] == figures["tokens"] - data[0].prefix_len - data[1].prefix_len


def test_plain_collate_labels_only_the_answer() -> None:
    data = examples(3)
    batch = train_speed.plain_collate(data, pad_id=0, device="cpu")
    for row, e in enumerate(data):
        n = len(e.input_ids)
        assert batch["input_ids"][row, :n].tolist() == list(e.input_ids)
        assert batch["attention_mask"][row].sum() == n
        labelled = (batch["labels"][row] != -100).nonzero().flatten().tolist()
        assert labelled == list(range(n - e.answer_len, n))


def test_trl_padding_free_is_correct_with_sdpa(tiny_llama, one_thread) -> None:
    """Flattened batches (no attention mask, positions restarting per instance) get the
    same loss as padded ones under sdpa: transformers builds a block-diagonal mask."""
    pytest.importorskip("trl")  # the `test` extra installs it
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from modeling.base import load_base_model

    model, tokenizer = load_base_model(str(tiny_llama), "none", "float32")
    assert model.config._attn_implementation == "sdpa"
    rows = [{"input_ids": list(e.input_ids),
             "labels": [-100] * (len(e.input_ids) - e.answer_len) + list(e.input_ids[-e.answer_len:])}
            for e in examples(6)]
    losses = []
    for padding_free in (False, True):
        batch = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=padding_free)(rows)
        assert ("attention_mask" in batch) != padding_free
        with torch.no_grad():
            losses.append(float(model(**batch, use_cache=False).loss))
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_three_arms_reach_the_same_loss_on_the_same_batches(tiny_llama, one_thread) -> None:
    pytest.importorskip("trl")  # the `test` extra installs it
    from modeling.lora import LoraSettings

    lora = LoraSettings(r=4, alpha=16, dropout=0.0)  # deterministic: the arms must agree
    result = train_speed.measure(str(tiny_llama), examples(), quantization="none", dtype="float32", device="cpu",
                                 steps=3, warmup=1, repeats=2, batch_size=4, probe=8, lora=lora)
    arms = train_speed.ARMS
    assert set(arms) <= set(result)
    for arm in arms:
        figures = result[arm]
        assert {"instances_per_second", "tokens_per_second", "final_loss", "batch_size", "dtype",
                "device"} <= set(figures)
        assert figures["batch_size"] == 4 and figures["dtype"] == "float32" and figures["device"] == "cpu"
        assert figures["instances"] == 12 and figures["steps"] == 3
        assert figures["tokens_per_second"] == pytest.approx(
            figures["instances_per_second"] * figures["tokens"] / figures["instances"])
        assert [r["repeat"] for r in figures["per_repeat"]] == [0, 1]
        for run in figures["per_repeat"]:
            assert run["steps"] == 3
            assert run["loss_before"] == pytest.approx(result["clientapp"]["initial_loss"], abs=1e-6)  # same start
            assert run["loss_after"] < run["loss_before"]  # it trained
    # Same instances, same steps, same optimizer settings: the same loss, to float precision
    # (the training moves it by about 2e-2 here; the arms agree to about 1e-7).
    reference = result["clientapp"]["final_loss"]
    assert reference < result["clientapp"]["initial_loss"] - 1e-3
    for arm in ("peft", "trl"):
        assert result[arm]["final_loss"] == pytest.approx(reference, abs=1e-5), arm
        for run in result[arm]["per_repeat"]:
            assert run["loss_after"] == pytest.approx(reference, abs=1e-5), arm
    # TRL's logged per-step training loss matches the plain loop's on the same batches
    assert len(result["trl"]["per_repeat"][0]["step_losses"]) == 3
    assert result["trl"]["per_repeat"][0]["step_losses"] == pytest.approx(
        result["peft"]["per_repeat"][0]["step_losses"], rel=1e-5)
    assert result["ratios"]["clientapp/peft"] == pytest.approx(
        result["clientapp"]["instances_per_second"] / result["peft"]["instances_per_second"])
    assert result["ratios"]["clientapp/trl"] == pytest.approx(
        result["clientapp"]["instances_per_second"] / result["trl"]["instances_per_second"])
    assert result["setup"]["timed_batches"]["prefix_tokens"] > 0
    assert result["clientapp"]["peak_gpu_mb"] is None  # CPU
    json.dumps(result)  # --json writes it as is


def test_encoded_instances_round_trip(tmp_path) -> None:
    data = examples(5)
    train_speed.write_encoded(data, tmp_path / "train.json")
    assert train_speed.read_encoded(tmp_path / "train.json") == data
    (tmp_path / "old.json").write_text(json.dumps([[list(e.input_ids), e.answer_len] for e in data]))
    assert [e.prefix_len for e in train_speed.read_encoded(tmp_path / "old.json")] == [0] * 5


def test_random_init_checkpoint_changes_the_architecture(tmp_path, tiny_llama) -> None:
    from transformers import AutoConfig

    folder = train_speed.random_init_checkpoint(str(tiny_llama), {"num_hidden_layers": 3}, tmp_path / "m")
    assert AutoConfig.from_pretrained(folder).num_hidden_layers == 3
    assert (folder / "tokenizer.json").is_file()
    with pytest.raises(ValueError, match="--arch no_such_field"):
        train_speed.random_init_checkpoint(str(tiny_llama), {"no_such_field": 1}, tmp_path / "n")


def test_defaults_follow_the_run_config() -> None:
    from settings.config import KEYS, validate

    config = train_speed.run_config_defaults()
    assert config["train.max-length"] == KEYS["train.max-length"].default
    assert config["train.learning-rate"] == KEYS["train.learning-rate"].default
    assert train_speed.default_lora(config) == validate({}).lora_settings()


def test_trl_padding_free_arm_reaches_the_same_loss(tiny_llama, one_thread) -> None:
    pytest.importorskip("trl")
    from modeling.lora import LoraSettings

    result = train_speed.measure(str(tiny_llama), examples(), quantization="none", dtype="float32", device="cpu",
                                 steps=2, warmup=0, repeats=1, batch_size=4, probe=8,
                                 lora=LoraSettings(r=4, alpha=16, dropout=0.0), arms=("peft", "trl"),
                                 trl_padding_free=True)
    assert set(result) >= {"peft", "trl"} and "clientapp" not in result and result["ratios"] == {}
    assert result["trl"]["settings"]["padding_free"] is True
    assert result["trl"]["final_loss"] == pytest.approx(result["peft"]["final_loss"], abs=1e-5)
    assert result["trl"]["final_loss"] < result["trl"]["initial_loss"]
