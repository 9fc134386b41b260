"""The pure parts of the single-site and validation-subset benchmarks."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from benchmarks import single_site, strategies_f1, validation_subset


def _round(cells: dict[int, tuple[bool, float]]) -> dict:
    return {"by_size": {n: {"same_ranking": same, "weight_l1": l1} for n, (same, l1) in cells.items()}}


def test_smallest_agreeing_size_needs_every_larger_size_and_round_to_agree():
    agree_from_32 = _round({8: (True, 0.01), 16: (False, 0.2), 32: (True, 0.02), 64: (True, 0.01)})
    assert validation_subset.smallest_agreeing_size([agree_from_32], 0.05) == 32
    later_round = _round({8: (True, 0.0), 16: (True, 0.0), 32: (True, 0.09), 64: (True, 0.01)})
    assert validation_subset.smallest_agreeing_size([agree_from_32, later_round], 0.05) == 64
    never = _round({8: (True, 0.0), 64: (False, 0.0)})
    assert validation_subset.smallest_agreeing_size([never], 0.05) is None


def test_softmax_weights_are_fed_medlora_plus_weights():
    w = validation_subset.softmax_weights([0.5, 1.0, 2.0])
    expected = np.exp([0.5, 0.0, -1.0]) / np.exp([0.5, 0.0, -1.0]).sum()
    assert w == pytest.approx(expected)
    assert validation_subset.ranking([0.7, 0.2, 0.9]) == [1, 0, 2]


def test_single_site_test_set_pairs_relations_with_the_chosen_sentences():
    from data_loaders.sites import ensure_demo_corpus, load_site

    site = load_site(ensure_demo_corpus() / "site-a")
    chosen = single_site.test_instances(site, 10, "given-entities")
    ner = [(i.doc_id, i.offset) for i in chosen if i.task == "ner"]
    re_ = [(i.doc_id, i.offset) for i in chosen if i.task == "re"]
    assert len(ner) == 10 and re_ and set(re_) <= set(ner)
    assert all(i.given_entities for i in chosen if i.task == "re")


def _metrics_line(round_: int, coordinator_f1: float, site_losses: list[float] | None) -> str:
    import json

    scores = {"strict-f1": coordinator_f1, "lenient-f1": coordinator_f1 + 0.1, "re-strict-f1": 0.0,
              "re-lenient-f1": 0.0, "val-loss": 1.0}
    sites = [{"site": f"s{i}", "weight": 0.5, "evaluate": {**scores, "strict-f1": 0.2 * i, "val-loss": loss}}
             for i, loss in enumerate(site_losses or [])]
    return json.dumps({"round": round_, "coordinator": scores, "sites": sites, "elapsed-seconds": 10.0 * (round_ + 1)})


def test_strategies_table_reads_runs_and_summarises_the_last_round(tmp_path):
    run = tmp_path / "fedadam-eta-0.01"
    run.mkdir()
    (run / "metrics.jsonl").write_text("\n".join([_metrics_line(0, 0.0, None), _metrics_line(1, 0.25, [0.8, 1.2])]))
    assert strategies_f1.read_run(run) is None  # no summary.json: the run did not finish
    (run / "summary.json").write_text("{}")
    result = strategies_f1.read_run(run)
    assert result["rounds"][1]["sites-mean"]["val-loss"] == pytest.approx(1.0)
    assert result["rounds"][1]["sites-mean"]["strict-f1"] == pytest.approx(0.1)
    text = strategies_f1.markdown({"fedadam-eta-0.01": result, "fedyogi": None}, "cmd", {
        "num-server-rounds": 1, "train.max-steps": 8, "eval.max-instances": 16})
    last = text.split("Every round:")[0]
    assert "| fedadam-eta-0.01 | 1.000 | 0.100 / 0.350 | 0.250 / 0.350 | 20 |" in last
    assert "| fedyogi | run missing or failed |" in last
    assert text.count("| fedadam-eta-0.01 |") == 3  # the summary row and one row per round


def test_every_sweep_arm_is_a_valid_config():
    from settings.config import validate

    assert not set(strategies_f1.SERVER_OPTIMIZER_SWEEP) & set(strategies_f1.ARMS)
    for arm, keys in strategies_f1.KNOWN_ARMS.items():
        validate(keys)  # raises ConfigError naming the key
        assert keys["strategy.name"] in arm


def test_a_strategy_at_its_default_reuses_the_sweep_run_with_the_same_values(tmp_path):
    from strategies.flower import DEFAULT_SERVER_LR

    common = {"num-server-rounds": 3, "train.max-steps": 8}
    twin = f"fedadam-eta-{DEFAULT_SERVER_LR['fedadam']:g}"
    assert twin in strategies_f1.SERVER_OPTIMIZER_SWEEP  # the default is one of the swept values
    assert strategies_f1.same_run_config("fedadam", common, tmp_path) is None  # nothing finished yet
    (tmp_path / twin).mkdir()
    (tmp_path / twin / "summary.json").write_text("{}")
    assert strategies_f1.same_run_config("fedadam", common, tmp_path) == twin
    assert strategies_f1.same_run_config("fedyogi", common, tmp_path) is None  # another strategy


def test_finished_arms_are_recorded_and_a_later_checkout_does_not_run_them_again(tmp_path, monkeypatch, capsys):
    import shutil

    out, results = tmp_path / "out", tmp_path / "strategies.json"
    for arm in ("fedmedlora", "fedprox"):  # two finished runs, as a run leaves them
        (out / arm).mkdir(parents=True)
        (out / arm / "metrics.jsonl").write_text("\n".join([_metrics_line(0, 0.0, None), _metrics_line(1, 0.2, [0.9])]))
        (out / arm / "summary.json").write_text("{}")
    argv = ["strategies_f1.py", "--data", str(tmp_path), "--server-validation", str(tmp_path), "--out", str(out),
            "--results", str(results), "--only", "fedmedlora,fedprox"]
    monkeypatch.setattr(sys, "argv", argv)
    assert strategies_f1.main() == 0
    recorded = __import__("json").loads(results.read_text())
    assert set(recorded) == {"fedmedlora", "fedprox"}
    assert recorded["fedprox"]["config"]["strategy.proximal-mu"] == 0.01 and "data.root" not in recorded["fedprox"]["config"]
    first = capsys.readouterr().out

    shutil.rmtree(out)  # another checkout: no run folders, only the committed file
    monkeypatch.setattr(sys, "argv", [*argv[:-1], "fedmedlora,fedprox"])
    assert strategies_f1.main() == 0
    second = capsys.readouterr().out
    assert "fedprox: recorded in" in second and "running" not in second
    table = lambda text: text[text.index("After the last round:"):]  # noqa: E731
    assert table(second) == table(first)
