"""The training-speed benchmark compares like with like: the plain PEFT loop sees the batches
`train_round` trains on, in the same order, and both arms end at the same loss."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

import pytest

from modeling.training import Encoded, TrainSettings, _batches

REPO = Path(__file__).resolve().parents[1]


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("train_speed", REPO / "benchmarks" / "train_speed.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_speed"] = module
    spec.loader.exec_module(module)
    return module


train_speed = _load_benchmark()


def examples(n: int = 24, seed: int = 0) -> list[Encoded]:
    rng = random.Random(seed)
    made = []
    for _ in range(n):
        prompt = [rng.randrange(3, 400) for _ in range(rng.randrange(8, 30))]
        answer = [rng.randrange(3, 400) for _ in range(rng.randrange(2, 8))] + [2]
        made.append(Encoded(tuple(prompt + answer), len(answer)))
    return made


def test_round_batches_follow_train_rounds_order() -> None:
    data = examples(10)
    settings = TrainSettings(batch_size=4)
    first = _batches(data, 4, random.Random("0-1"))
    drawn = train_speed.round_batches(data, settings, len(first) + 2)
    assert drawn[: len(first)] == first[::-1]  # train_round pops from the end
    assert len(drawn) == len(first) + 2  # then draws a fresh shuffle, as train_round does


def test_both_arms_train_the_same_adapter_on_the_same_batches(tiny_llama) -> None:
    result = train_speed.measure(str(tiny_llama), examples(), quantization="none", dtype="float32",
                                 steps=3, warmup=1, repeats=2, probe=8)
    runs = {(r["arm"], r["repeat"]): r for r in result["runs"]}
    assert set(runs) == {(arm, rep) for arm in train_speed.ARMS for rep in (0, 1)}
    for rep in (0, 1):
        ours, plain = runs[("fedmedlora", rep)], runs[("peft-loop", rep)]
        assert ours["loss_before"] == pytest.approx(plain["loss_before"], abs=1e-6)  # same start
        assert ours["loss_after"] == pytest.approx(plain["loss_after"], rel=1e-3)    # same steps
        assert ours["loss_after"] != pytest.approx(ours["loss_before"], abs=1e-6)    # it trained
        assert ours["tokens"] == plain["tokens"] > 0 and ours["steps"] == plain["steps"] == 3
    assert result["ratio"] == pytest.approx(
        result["median-tokens-per-second"]["fedmedlora"] / result["median-tokens-per-second"]["peft-loop"])
    assert result["peak-gpu-mb"] is None  # CPU


def test_encoded_instances_round_trip(tmp_path) -> None:
    data = examples(5)
    train_speed.write_encoded(data, tmp_path / "train.json")
    assert train_speed.read_encoded(tmp_path / "train.json") == data


def test_random_init_checkpoint_changes_the_architecture(tmp_path, tiny_llama) -> None:
    from transformers import AutoConfig

    folder = train_speed.random_init_checkpoint(str(tiny_llama), {"num_hidden_layers": 3}, tmp_path / "m")
    assert AutoConfig.from_pretrained(folder).num_hidden_layers == 3
    assert (folder / "tokenizer.json").is_file()
    with pytest.raises(ValueError, match="--arch no_such_field"):
        train_speed.random_init_checkpoint(str(tiny_llama), {"no_such_field": 1}, tmp_path / "n")
