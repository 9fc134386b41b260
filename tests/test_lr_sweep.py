"""The tables in docs/benchmarks.md that come from committed JSON (the learning-rate sweep,
constrained decoding) match it; the sweep's arm names."""

from __future__ import annotations

import json
import shutil

import pytest

from benchmarks import constrained_decoding, lr_sweep
from benchmarks.protocol.profiles import TRAINING_SITES
from support.paths import REPO


@pytest.mark.parametrize("results", ["docs/benchmarks/lr_sweep.json", "docs/benchmarks/lr_sweep_float32.json"])
def test_the_docs_table_is_generated_from_the_committed_sweep(tmp_path, results):
    page = tmp_path / "benchmarks.md"
    shutil.copy(REPO / "docs" / "benchmarks.md", page)
    lr_sweep.write_markdown(page, json.loads((REPO / results).read_text()), results)
    assert page.read_text() == (REPO / "docs" / "benchmarks.md").read_text(), \
        f"run: python -m benchmarks.lr_sweep --json {results} --report-only"


def test_a_changed_figure_is_caught(tmp_path):
    data = json.loads((REPO / "docs" / "benchmarks" / "lr_sweep.json").read_text())
    arm = next(iter(data["arms"]))
    data["arms"][arm]["mean-ner-strict-f1"] += 0.1
    assert lr_sweep.markdown_table(data) not in (REPO / "docs" / "benchmarks.md").read_text()


def test_arm_and_run_names():
    assert lr_sweep.arm_name("fedmedlora", 1e-3) == "fedmedlora/lr=0.001"
    name = lr_sweep.arm_name("single-chia", 5e-4, 16.0, keep=False, rounds=6, steps=12)
    assert name == "single-chia/lr=0.0005,loraplus=16,fresh-optimizer,6x12"
    assert lr_sweep.run_name(name) == "single-chia-lr0.0005-loraplus16-fresh-optimizer-6x12"


def test_the_constrained_decoding_table_is_the_committed_jsons(tmp_path, monkeypatch):
    results = [json.loads(f.read_text()) for f in constrained_decoding.RESULTS]
    assert {r["site"] for r in results} == {"maccrobat", "chia", "ddi-drugbank"}
    assert all(r["arms"]["constrained"]["unaligned"] == 0 for r in results)  # what eval.constrained promises
    page = tmp_path / "benchmarks.md"
    shutil.copy(REPO / "docs" / "benchmarks.md", page)
    constrained_decoding.write_markdown(page, results)
    assert page.read_text() == (REPO / "docs" / "benchmarks.md").read_text(), \
        "run: python -m benchmarks.constrained_decoding --report"


def test_a_second_results_file_gets_a_table_of_its_own(tmp_path):
    """The shapes phase at another dtype writes its own file: its table goes beside the
    sweep's, never over it."""
    page = tmp_path / "benchmarks.md"
    shutil.copy(REPO / "docs" / "benchmarks.md", page)
    sweep = json.loads((REPO / "docs" / "benchmarks" / "lr_sweep.json").read_text())
    other = {**sweep, "arms": dict(list(sweep["arms"].items())[:1])}
    lr_sweep.write_markdown(page, other, "docs/benchmarks/other.json")
    text = page.read_text()
    assert lr_sweep.markdown_table(sweep) in text
    assert lr_sweep.markdown_table(other, "docs/benchmarks/other.json") in text
    lr_sweep.write_markdown(page, other, "docs/benchmarks/other.json")  # rewritten in place, not appended twice
    assert page.read_text() == text


def test_the_float32_shapes_and_singles_ran_at_the_training_defaults():
    """The shapes phase in a file without federated arms takes the training defaults (the run
    config's): the committed float32 federated arms were made at them; the singles phase
    trains each site at them and as plain LoRA at every rate."""
    from modeling.training import TrainSettings

    arms = json.loads((REPO / "docs" / "benchmarks" / "lr_sweep_float32.json").read_text())["arms"]
    defaults = TrainSettings()
    default = (defaults.learning_rate, defaults.loraplus_lr_ratio)
    federated = [a for name, a in arms.items() if name.startswith("fedmedlora/")]
    assert {(a["setting"]["learning-rate"], a["setting"]["loraplus-lr-ratio"]) for a in federated} == {default}
    assert {(a["setting"]["rounds"], a["setting"]["steps"]) for a in federated} == set(lr_sweep.SHAPES)
    for site in TRAINING_SITES:
        singles = {(a["setting"]["learning-rate"], a["setting"]["loraplus-lr-ratio"])
                   for name, a in arms.items() if name.startswith(f"single-{site}/")}
        assert singles == {default, *((rate, 0.0) for rate in lr_sweep.RATES)}, site
