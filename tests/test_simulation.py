"""End to end: `flwr run` on Flower's simulation engine with three SuperNodes, a tiny
random LLaMA with the real tokenizer, and a small synthetic corpus."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from fedmedlora.local_run import flwr_run, superlink_pids
from support.paths import REPO

pytestmark = pytest.mark.e2e  # real Flower runs: the slow tier


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory) -> Path:
    from data_loaders.synthetic import generate_corpus

    root = tmp_path_factory.mktemp("corpus")
    generate_corpus(root, seed=3, docs_per_site=24, coordinator_docs=4)
    return root


def _run(tmp_path: Path, tiny_llama: Path, corpus: Path, **extra) -> tuple[int, Path, str]:
    overrides = {
        "model.name": str(tiny_llama), "num-server-rounds": 2, "train.max-steps": 2,
        "train.batch-size": 2, "lora.r": 4, "lora.alpha": 8, "eval.max-instances": 3,
        "eval.max-new-tokens": 8, "data.root": str(corpus),
        "data.server-validation": str(corpus / "coordinator"), "output-dir": str(tmp_path / "outputs"),
        "run-name": "e2e", **extra,
    }
    log = tmp_path / "flwr.log"
    with open(log, "w") as fh:
        code = flwr_run(REPO, tmp_path / "flwr-home", overrides, num_supernodes=3, timeout=900, stdout=fh)
    assert superlink_pids(tmp_path / "flwr-home") == []
    # Every process the run started carries its FLWR_HOME (Ray's too); another Flower run on a
    # shared machine is not this run's leftover.
    assert _processes_of(tmp_path / "flwr-home") == [], "a Flower or Ray process was left running"
    return code, tmp_path / "outputs" / "e2e", log.read_text()


@pytest.mark.parametrize(
    ("strategy", "extra"),
    [
        ("fedmedlora", {}),
        ("fedmedlora-plus", {"train.keep-optimizer-state": False}),  # a fresh optimizer every round
        ("fedmedlora-plus", {"strategy.validation": "sites"}),  # the sites score the candidates
        ("exact", {}),
        # int8 adapters on the wire, both ways, including the candidates sent for scoring
        ("fedmedlora-plus", {"strategy.validation": "sites", "transport.encoding": "int8"}),
    ],
    ids=["fedmedlora", "fedmedlora-plus", "fedmedlora-plus-sites", "exact", "fedmedlora-plus-sites-int8"],
)
def test_three_site_simulation_produces_a_loadable_changed_adapter(strategy, extra, tmp_path, tiny_llama,
                                                                   tiny_corpus):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from modeling.adapter_io import get_adapter_state, load_peft_folder
    from modeling.base import load_base_model
    from modeling.lora import LoraSettings, attach_lora

    code, run_dir, log = _run(tmp_path, tiny_llama, tiny_corpus, **{"strategy.name": strategy, **extra})
    assert code == 0, log[-3000:]
    final = run_dir / "final"
    assert (final / "adapter_config.json").is_file() and (final / "adapter_model.safetensors").is_file()
    assert (run_dir / "round-1").is_dir() and (run_dir / "round-2").is_dir()

    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    for record in rounds[1:]:
        assert sorted(s["site"] for s in record["sites"]) == ["site-a", "site-b", "site-c"]
        assert abs(sum(s["weight"] for s in record["sites"]) - 1) < 1e-6
        assert all(s["bytes-up"] > 0 and np.isfinite(s["train"]["train-loss"]) for s in record["sites"])
        assert all("strict-f1" in s["evaluate"] for s in record["sites"])
        # One machine, one dtype: every site computes in the coordinator's (model.dtype = auto).
        dtype = json.loads((run_dir / "run.json").read_text())["dtype"]
        assert dtype in ("float32", "bfloat16") and {s["reported"]["dtype"] for s in record["sites"]} == {dtype}
        # Each site's AdamW moments come back from its Context.state from round 2 on, unless
        # train.keep-optimizer-state is off.
        kept = extra.get("train.keep-optimizer-state", True)
        assert all(s["train"]["optimizer-restored"] == (kept and record["round"] > 1) for s in record["sites"])
        if strategy in ("fedmedlora", "exact"):  # weights = shares of training instances
            total = sum(s["num-examples"] for s in record["sites"])
            assert all(abs(s["weight"] - s["num-examples"] / total) < 1e-9 for s in record["sites"])
        else:  # weights = softmax(-L_k) of the validation losses (coordinator's, or the sites' mean)
            losses = record["strategy"]["validation-loss"]
            expected = {k: np.exp(1 - v) for k, v in losses.items()}
            norm = sum(expected.values())
            assert all(abs(s["weight"] - expected[s["site"]] / norm) < 1e-6 for s in record["sites"])
        if extra.get("strategy.validation") == "sites":
            # Every site scored all three candidates; L_k is the plain mean of their losses.
            assert record["strategy"]["validation-mode"] == "sites"
            scores = record["strategy"]["site-scores"]
            assert sorted(scores) == ["site-a", "site-b", "site-c"] and record["strategy"]["scoring-ignored"] == {}
            for candidate, loss in losses.items():
                assert abs(loss - np.mean([s["candidate-loss"][candidate] for s in scores.values()])) < 1e-9
            assert all(s["num-examples"] > 0 and s["num-tokens"] > 0 for s in scores.values())
            # Scoring traffic: the 3 candidates down and the losses up, in every site's row.
            for row in record["sites"]:
                adapter = row["bytes-up"] - row["extra-bytes-up"]
                assert row["extra-bytes-down"] == 3 * adapter and row["bytes-down"] == 5 * adapter
                assert 0 < row["extra-bytes-up"] < 100
        else:
            assert all("extra-bytes-down" not in s for s in record["sites"])
    summary = json.loads((run_dir / "summary.json").read_text())
    from wire.transport import adapter_nbytes

    encoding = extra.get("transport.encoding", "float32")
    sent = adapter_nbytes(load_peft_folder(final), encoding)
    assert summary["communication"]["adapter-bytes"] == sent  # the bytes each site sent, as counted
    assert all(s["bytes-up"] - s.get("extra-bytes-up", 0) == sent for r in rounds[1:] for s in r["sites"])
    if encoding == "int8":  # about a quarter (tiny tensors: headers and scales weigh more)
        assert sent < 0.4 * adapter_nbytes(load_peft_folder(final), "float32")
    assert summary["rounds"] == 2 and 0 < summary["communication"]["upload-ratio-to-full-model"] < 1
    scoring_down = summary["communication"]["extra-bytes-down-total"]
    if extra.get("strategy.validation") == "sites":
        assert scoring_down == 2 * 3 * 3 * summary["communication"]["adapter-bytes"]  # rounds x sites x K
        assert "scores from site" not in log and "sent no scores" not in log
    else:
        assert scoring_down == 0

    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), final)
    assert loaded.peft_config["default"].r == 4
    model, _ = load_base_model(str(tiny_llama), "none", "float32")
    initial = get_adapter_state(attach_lora(model, LoraSettings(r=4, alpha=8), seed=0))
    trained = load_peft_folder(final)
    assert list(trained) == list(initial)
    assert any(not np.allclose(trained[k], initial[k]) for k in initial)


@pytest.mark.parametrize("strategy", ["ffa-lora", "rolora", "fedsvd", "fedsa-lora"])
def test_factor_strategies_run_end_to_end_and_frozen_factors_stay_bit_identical(strategy, tmp_path, tiny_llama,
                                                                                 tiny_corpus):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from modeling.adapter_io import get_adapter_state, load_peft_folder
    from modeling.base import load_base_model
    from modeling.lora import LoraSettings, attach_lora
    from wire.transport import adapter_nbytes

    code, run_dir, log = _run(tmp_path, tiny_llama, tiny_corpus, **{"strategy.name": strategy})
    assert code == 0, log[-3000:]
    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][1:]
    model, _ = load_base_model(str(tiny_llama), "none", "float32")
    initial = get_adapter_state(attach_lora(model, LoraSettings(r=4, alpha=8), seed=0))
    adapters = [initial, load_peft_folder(run_dir / "round-1"), load_peft_folder(run_dir / "round-2")]
    a_keys = [k for k in initial if ".lora_A." in k]
    b_keys = [k for k in initial if ".lora_B." in k]
    whole = adapter_nbytes(initial, "float32")
    for record, before, after in zip(rounds, adapters[:-1], adapters[1:], strict=True):
        trained = {"ffa-lora": "B", "fedsvd": "B", "fedsa-lora": "AB"}.get(strategy, "B" if record["round"] == 1 else "A")
        sites = record["sites"]
        assert sorted(s["site"] for s in sites) == ["site-a", "site-b", "site-c"]
        # Each site checked its frozen factor after the round: bit-identical to what it was sent.
        assert all(s["train"]["frozen-unchanged"] == 1 for s in sites)
        frozen = {s["train"]["frozen-parameters"] for s in sites}
        assert frozen == ({0} if trained == "AB" else {sum(initial[k].size for k in (a_keys if trained == "B" else b_keys))})
        if trained != "AB":  # one factor up: about half the adapter
            assert all(s["bytes-up"] < 0.6 * whole for s in sites)
        error = record["strategy"]["aggregation-error"]
        assert error["modules"] > 0 and np.isfinite(error["overall"]) and error["overall"] >= 0
        if strategy != "fedsa-lora":  # one factor shared by every site: averaging is exact
            assert error["overall"] < 1e-5
        kept = b_keys if trained == "A" else a_keys if trained == "B" else []
        if strategy != "fedsvd":  # FedSVD hands out a new A every round
            if record["round"] == 1:  # `initial` is rebuilt here in float32; the run's may be bf16-rounded
                assert all(np.allclose(after[k], before[k], rtol=1e-2, atol=1e-3) for k in kept)
            else:  # both from the run: the kept factor is the very one sent
                assert all(np.array_equal(after[k], before[k]) for k in kept)
        changed = a_keys if trained == "A" else b_keys
        if record["round"] == 1:
            assert any(not np.allclose(after[k], before[k], rtol=1e-2, atol=1e-3) for k in changed)
        else:
            assert any(not np.array_equal(after[k], before[k]) for k in changed)
    if strategy == "fedsa-lora":
        final = load_peft_folder(run_dir / "final")
        for site in ("site-a", "site-b", "site-c"):
            folder = run_dir / "final" / "sites" / site
            own = load_peft_folder(folder)
            assert all(np.array_equal(own[k], final[k]) for k in a_keys)
            assert any(not np.array_equal(own[k], final[k]) for k in b_keys)
            PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), folder)


def test_bad_config_value_stops_the_run_before_training(tmp_path, tiny_llama, tiny_corpus):
    code, run_dir, log = _run(tmp_path, tiny_llama, tiny_corpus, **{"strategy.name": "fedfoo"})
    assert code != 0 or not (run_dir / "round-1").exists()
    assert "fedfoo" in log and "fedmedlora-plus" in log  # the valid choices are listed
    assert not (run_dir / "round-1").exists()


def _processes_of(flwr_home: Path) -> list[int]:
    """Live processes started under this FLWR_HOME (the SuperLink passes it to all below it)."""
    marker = f"FLWR_HOME={flwr_home.resolve()}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0") and \
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                pids.append(int(entry.name))
        except (OSError, IndexError):
            continue
    return pids


def test_a_killed_run_resumes_from_its_last_finished_round(tmp_path, tiny_llama, tiny_corpus):
    """`flwr run` killed after round 2's checkpoint (its SuperLink and everything below it
    stopped), then `resume = true`: round 3 only, in the same folder, one record per round."""
    import threading
    import time

    from fedmedlora.local_run import stop_superlink
    from modeling.adapter_io import load_peft_folder
    from server_app.checkpoint import existing_round

    overrides = {
        "model.name": str(tiny_llama), "num-server-rounds": 3, "train.max-steps": 2,
        "train.batch-size": 2, "lora.r": 4, "lora.alpha": 8, "eval.max-instances": 3,
        "eval.max-new-tokens": 8, "data.root": str(tiny_corpus),
        "data.server-validation": str(tiny_corpus / "coordinator"), "output-dir": str(tmp_path / "outputs"),
        "run-name": "e2e", "strategy.name": "fedadam",  # FedAdam: server state carried over
    }
    run_dir = tmp_path / "outputs" / "e2e"
    home = tmp_path / "flwr-home"
    codes: dict[str, int] = {}

    def first_run() -> None:
        with open(tmp_path / "first.log", "w") as fh:
            codes["first"] = flwr_run(REPO, home, overrides, num_supernodes=3, timeout=900, stdout=fh)

    thread = threading.Thread(target=first_run)
    thread.start()
    deadline = time.monotonic() + 900
    while thread.is_alive() and time.monotonic() < deadline and (existing_round(run_dir) or 0) < 2:
        time.sleep(0.2)
    stop_superlink(home)  # the coordinator dies with its SuperLink
    thread.join(timeout=120)
    first_log = (tmp_path / "first.log").read_text()
    assert not thread.is_alive() and superlink_pids(home) == [] and _processes_of(home) == []
    assert existing_round(run_dir) == 2, first_log[-3000:]
    assert not (run_dir / "summary.json").exists()
    assert [json.loads(line)["round"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2]

    with open(tmp_path / "resumed.log", "w") as fh:
        code = flwr_run(REPO, home, {**overrides, "resume": True}, num_supernodes=3, timeout=900, stdout=fh)
    log = (tmp_path / "resumed.log").read_text()
    assert code == 0, log[-3000:]
    assert superlink_pids(home) == [] and _processes_of(home) == []
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [0, 1, 2, 3]
    assert sorted(s["site"] for s in records[3]["sites"]) == ["site-a", "site-b", "site-c"]
    # A resumed run is a new Flower run: the sites' optimizer state did not survive, and says so.
    assert [s["train"]["optimizer-restored"] for s in records[3]["sites"]] == [0, 0, 0]
    assert all(s["train"]["optimizer-restored"] == 1 for s in records[2]["sites"])
    assert "round 0 (zero-shot" not in (run_dir / "coordinator.log").read_text().split("resuming")[-1]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == 3 and summary["communication"]["site-rounds"] == 9
    assert [r["after-round"] for r in summary["resumed"]] == [2]
    assert summary["final-metrics"] == records[3]["coordinator"]
    assert summary["zero-shot-metrics"] == records[0]["coordinator"]
    final, round2, round3 = (load_peft_folder(run_dir / name) for name in ("final", "round-2", "round-3"))
    assert json.loads((run_dir / "round-3" / "fedmedlora.json").read_text())["server-round"] == 3
    assert all(np.array_equal(final[k], round3[k]) for k in round3)
    assert any(not np.allclose(round2[k], round3[k]) for k in round3)


def test_a_terminated_simulate_command_stops_its_superlink_and_simulation(tmp_path, tiny_llama, tiny_corpus):
    """`kill <pid>` (SIGTERM) of `fedmedlora simulate`, as a scheduler or a script stops it,
    unwinds like Ctrl-C: the SuperLink, the simulation and Ray are stopped, nothing is left."""
    import os
    import signal
    import sys
    import time

    home = tmp_path / "flwr-home"
    command = [sys.executable, "-m", "fedmedlora.cli", "simulate", "--app", str(REPO), "--flwr-home", str(home),
               "--run-config", f"model.name={tiny_llama}", "--run-config", "num-server-rounds=50",
               "--run-config", f"data.root={tiny_corpus}", "--run-config", f"output-dir={tmp_path / 'outputs'}"]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        while not (tmp_path / "outputs").is_dir() or len(_processes_of(home)) < 2:  # the run has started
            assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
            time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=120)[0]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for pid in _processes_of(home):  # what a failing version would leave
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert process.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert superlink_pids(home) == [] and _processes_of(home) == []


@pytest.mark.parametrize("model", ["tiny_bert", "tiny_llama", "default_model_dir"],
                         ids=["tiny-bert", "tiny-llama", "embedded-smollm2"])
def test_token_classification_federates_the_lora_factors_and_the_head(model, request, tmp_path, tiny_corpus):
    """One round of `model.task = token-classification`: the sites train and send the LoRA factors
    and the head, the label set is the union of the site folders' types, and the global adapter
    (with its labels) loads with PEFT's PeftModel.from_pretrained. For an encoder (a tiny random
    BERT), a tiny random LLaMA and the embedded SmolLM2-135M itself."""
    from peft import PeftModel
    from transformers import AutoModelForTokenClassification

    from data_loaders.sites import union_entity_types
    from modeling.adapter_io import get_adapter_state, load_peft_folder
    from modeling.lora import LoraSettings
    from modeling.token_classification import TOKEN_CLASSIFICATION, load_for_task, read_labels

    folder = request.getfixturevalue(model)
    lora = {"lora.target-modules": "query,value"} if model == "tiny_bert" else {}
    code, run_dir, log = _run(tmp_path, folder, tiny_corpus, **{
        "model.task": TOKEN_CLASSIFICATION, "data.tasks": "ner", "num-server-rounds": 1, **lora})
    final = run_dir / "final"
    assert code == 0 and (final / "adapter_model.safetensors").is_file(), log[-3000:]
    types = union_entity_types([tiny_corpus / s for s in ("site-a", "site-b", "site-c", "coordinator")])
    labels = read_labels(final)
    assert labels[0] == "O" and labels[1::2] == tuple(f"B-{t}" for t in types)
    record = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][1]
    assert sorted(s["site"] for s in record["sites"]) == ["site-a", "site-b", "site-c"]
    assert all(np.isfinite(s["train"]["train-loss"]) and "strict-f1" in s["evaluate"] for s in record["sites"])
    assert record["coordinator"]["re-instances"] == 0 and record["coordinator"]["ner-instances"] > 0

    settings = LoraSettings(r=4, alpha=8, **({"target_modules": ("query", "value")} if lora else {}))
    initial, _ = load_for_task(TOKEN_CLASSIFICATION, str(folder), "none", "float32", settings, seed=0, labels=labels)
    initial_state, trained = get_adapter_state(initial), load_peft_folder(final)
    assert list(trained) == list(initial_state)
    head = [k for k in trained if ".lora_" not in k]
    assert head and any(not np.allclose(trained[k], initial_state[k], rtol=1e-2, atol=1e-3) for k in head)
    base = AutoModelForTokenClassification.from_pretrained(folder, num_labels=len(labels))
    loaded = PeftModel.from_pretrained(base, final)
    assert type(loaded).__name__ == "PeftModelForTokenClassification"
