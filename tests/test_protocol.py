"""The protocol benchmark's parts: sites split by source, the new site's few documents,
federation overhead, the federated-centralized gap, and the report and plots it writes."""

from __future__ import annotations

import json
import re
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from benchmarks import claims
from benchmarks.protocol.arms import site_speed
from benchmarks.protocol.overhead import COLD_DEPLOYMENT, overhead, overhead_file, write_overhead_section
from benchmarks.protocol.profiles import EXTERNAL, PROFILES, TRAINING_SITES, single_site_steps
from benchmarks.protocol.report import add_claims, claims_so_far, federated_gap, markdown, plot_curves
from benchmarks.protocol.scoring import not_in_sentence
from benchmarks.protocol.sites import SKEW_GROUPS, SKEW_SITES, prepare_label_skew_sites, prepare_sites
from benchmarks.protocol.store import ArmStore, compact_json
from benchmarks.protocol.workbench import outputs_key
from benchmarks.provenance import REPO, repo_relative
from data_loaders.sites import load_site


def write_site(folder: Path, name: str, ids: list[tuple[str, str | None]], score_by: str | None = None) -> None:
    folder.mkdir(parents=True)
    site = {"name": name, "entity_types": ["drug"], "relation_types": []}
    if score_by:
        site["score_by"] = score_by
    (folder / "site.json").write_text(json.dumps(site))
    lines = []
    for doc_id, source_split in ids:
        text = f"Patient {doc_id} took aspirin daily."
        lines.append(json.dumps({"id": doc_id, "text": text, "source_split": source_split, "attributes": [],
                                 "groups": [], "relations": [],
                                 "entities": [{"id": "T1", "type": "drug", "spans": [[len(text) - 13, len(text) - 6]],
                                               "text": "aspirin"}]}))
    (folder / "documents.jsonl").write_text("\n".join(lines) + "\n")


@pytest.fixture
def data(tmp_path) -> Path:
    root = tmp_path / "data"
    for name in ("maccrobat", "chia"):
        write_site(root / name, name, [(f"{name}-{i}", None) for i in range(10)])
    write_site(root / "ade", "ade", [(f"ade-{i}", None) for i in range(10)], "relations-and-entity-recall")
    ddi = [(f"Drug{i}_ddi", "train") for i in range(30)] + [(f"Drug{i}_test", "test") for i in range(5)]
    ddi += [(str(10_000_000 + i), "train") for i in range(40)] + [(str(20_000_000 + i), "test") for i in range(6)]
    write_site(root / "ddi", "ddi", ddi)
    return root


def test_sites_split_ddi_by_source_and_keep_a_few_new_site_documents(data, tmp_path) -> None:
    sites = prepare_sites(data, tmp_path / "out", new_site_documents=4)
    assert set(sites) == {"maccrobat", "chia", "ddi-drugbank", "ade", "ddi-medline"}
    drugbank = load_site(sites["ddi-drugbank"])
    assert drugbank.name == "ddi-drugbank"
    assert all(not d.doc_id.isdigit() for split in drugbank.splits.values() for d in split)
    assert sum(len(s) for s in drugbank.splits.values()) == 35
    medline = load_site(sites["ddi-medline"])
    assert medline.name == "ddi-medline"
    assert len(medline.splits["train"]) == 4  # exactly the few, all of them kept for training
    assert len(medline.splits["test"]) == 6 and all(d.doc_id.startswith("2") for d in medline.splits["test"])
    assert load_site(sites["ade"]).score_by == "relations-and-entity-recall"
    # Run again: the folders are reused as they are.
    assert prepare_sites(data, tmp_path / "out", new_site_documents=4) == sites


def test_missing_prepared_folder_is_named(data, tmp_path) -> None:
    (data / "chia" / "site.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"chia is not a prepared site folder.*--preset chia"):
        prepare_sites(data, tmp_path / "out", 4)


def _write_run(run: Path, rounds: list[dict], wall: float, start: float | None = None) -> Path:
    run.mkdir()
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rounds) + "\n")
    timing = {"wall-seconds": wall} if start is None else {"wall-seconds": wall, "start-time": start}
    (run / "wall.json").write_text(json.dumps(timing))
    return run


def _phase(kind: str, seconds: float, end: float) -> dict:
    return {f"{kind}-seconds": seconds, f"{kind}-end-time": end}


def test_overhead_of_sites_working_one_after_another(tmp_path) -> None:
    # Clock (unix seconds from 1000): coordinator 1000-1002, a trains 1005-1015, b 1015-1035,
    # a evaluates 1036-1040, b 1040-1041, coordinator 1042-1045: 40 s busy in 50 s.
    run = _write_run(tmp_path / "run", [
        {"round": 0, "coordinator": _phase("eval", 2.0, 1002.0)},
        {"round": 1, "coordinator": _phase("eval", 3.0, 1045.0), "sites": [
            {"site": "a", "train": {**_phase("train", 10.0, 1015.0), "train-tokens": 1000},
             "evaluate": _phase("eval", 4.0, 1040.0)},
            {"site": "b", "train": {**_phase("train", 20.0, 1035.0), "train-tokens": 1000},
             "evaluate": _phase("eval", 1.0, 1041.0)},
        ]},
    ], wall=50.0, start=999.0)
    o = overhead(run)
    assert o["site-train-seconds"] == 30 and o["site-eval-seconds"] == 5 and o["coordinator-eval-seconds"] == 5
    assert o["busy-seconds"] == pytest.approx(40.0)
    assert o["overhead-seconds"] == pytest.approx(10.0) and o["overhead-share"] == pytest.approx(0.2)
    # Startup lasts until every site has begun work (b at 1015): 15 s less the work meanwhile (the
    # coordinator 1000-1002, a 1005-1015), so 4 s; 4 s after the last work (1045-1049); the rest,
    # 1035-1036 before a's evaluation and 1041-1042 before the coordinator's, is between work.
    assert o["startup-seconds"] == pytest.approx(4.0) and o["shutdown-seconds"] == pytest.approx(4.0)
    assert o["between-work-seconds"] == pytest.approx(2.0) and o["between-work-seconds-per-round"] == pytest.approx(2.0)
    assert site_speed(run) == {"a": 100.0, "b": 50.0}


def _causes(start: float, imports: float, model: float, data: float) -> dict:
    return {"site-process-start-seconds": start, "site-import-seconds": imports,
            "site-model-load-seconds": model, "site-data-load-seconds": data}


def test_between_work_is_split_by_the_causes_the_sites_report(tmp_path) -> None:
    # Two rounds, two sites side by side. Round 1's train messages start the sites (startup);
    # every later message's causes fall between work, averaged over the two sites.
    def site(name: str, round_: int, train: dict, evaluate: dict) -> dict:
        return {"site": name, "train": {**_phase("train", 1.0, 1000.0 + 20 * round_), **train},
                "evaluate": {**_phase("eval", 1.0, 1010.0 + 20 * round_), **evaluate}}

    cold, warm = _causes(3.0, 2.0, 4.0, 1.0), _causes(0.0, 0.0, 0.0, 0.0)
    run = _write_run(tmp_path / "run", [
        {"round": 1, "coordinator": _phase("eval", 1.0, 1012.0 + 20), "sites": [
            site("a", 1, cold, cold), site("b", 1, cold, warm)]},
        {"round": 2, "coordinator": _phase("eval", 1.0, 1012.0 + 40), "sites": [
            site("a", 2, cold, warm), site("b", 2, warm, warm)]},
    ], wall=60.0, start=1000.0)
    o = overhead(run)
    split = o["between-work-split-per-round"]
    # Between work: a's round-1 evaluate and round-2 train (cold), over 2 sites and 2 rounds.
    assert split["process start"] == pytest.approx(2 * 3.0 / 2 / 2)
    assert split["imports"] == pytest.approx(1.0) and split["model load"] == pytest.approx(2.0)
    assert split["data load"] == pytest.approx(0.5)
    assert split["polling and transfer"] == pytest.approx(o["between-work-seconds-per-round"] - 5.0)
    assert sum(split.values()) == pytest.approx(o["between-work-seconds-per-round"])


def test_overhead_counts_concurrent_sites_once(tmp_path) -> None:
    # A deployment: a trains 1005-1015 while b trains 1000-1020; summing would exceed the wall.
    run = _write_run(tmp_path / "run", [
        {"round": 1, "coordinator": _phase("eval", 3.0, 1025.0), "sites": [
            {"site": "a", "train": {**_phase("train", 10.0, 1015.0), "train-tokens": 1000}, "evaluate": {}},
            {"site": "b", "train": {**_phase("train", 20.0, 1020.0), "train-tokens": 1000}, "evaluate": {}},
        ]},
    ], wall=30.0)
    o = overhead(run)
    assert o["site-train-seconds"] == 30 and o["busy-seconds"] == pytest.approx(23.0)
    assert o["overhead-seconds"] == pytest.approx(7.0)
    assert "startup-seconds" not in o  # no start time recorded: no split


def test_overhead_of_a_run_without_end_times_is_refused(tmp_path) -> None:
    run = _write_run(tmp_path / "run", [{"round": 0, "coordinator": {"eval-seconds": 2.0}}], wall=5.0)
    with pytest.raises(KeyError, match=r"metrics.jsonl: eval-seconds without eval-end-time"):
        overhead(run)


def test_the_overhead_section_shows_before_and_after_and_replaces_an_earlier_one(tmp_path) -> None:
    o = {"wall-seconds": 50.0, "busy-seconds": 40.0, "overhead-seconds": 10.0, "overhead-share": 0.2,
         "site-train-seconds": 30.0, "site-eval-seconds": 5.0, "coordinator-eval-seconds": 5.0,
         "startup-seconds": 1.0, "shutdown-seconds": 4.0, "between-work-seconds": 5.0,
         "between-work-seconds-per-round": 5.0,
         "between-work-split-per-round": {"process start": 1.0, "imports": 0.5, "model load": 2.0, "data load": 0.5,
                                          "polling and transfer": 1.0}}
    warm = {**o, "wall-seconds": 40.0, "overhead-share": 0.1}
    figures = overhead_file({"simulation": o, "loopback deployment": warm, COLD_DEPLOYMENT: o},
                                     None, "python -m benchmarks.protocol --only overhead",
                                     vars(PROFILES["quick"]))
    assert figures["simulation"]["before"] is None  # no earlier measurement given
    assert figures["deployment"]["before"]["wall_seconds"] == 50.0 and figures["deployment"]["after"]["wall_seconds"] == 40.0
    assert figures["deployment"]["after"]["between_work_seconds_per_round"] == 5.0
    results_md = tmp_path / "RESULTS.md"
    results_md.write_text("# Results\n\n## Federation overhead\n\nold\n\n## Later section\n\nkept\n")
    for _ in range(2):  # a second run replaces the section, it does not stack it
        write_overhead_section(results_md, figures)
    text = results_md.read_text()
    assert "old" not in text and text.count("## Federation overhead") == 1 and text.endswith("## Later section\n\nkept\n")
    assert "| | simulation, after | deployment, before | deployment, after | deployment, no site workers |" in text
    assert "| wall | 50.0 s | 50.0 s | 40.0 s | 50.0 s |" in text
    assert "| overhead (share of wall) | 20% | 20% | 10% | 20% |" in text
    assert "| - model load | 2.0 s | 2.0 s | 2.0 s | 2.0 s |" in text
    fresh = tmp_path / "fresh.md"
    fresh.write_text("# Results\n")
    write_overhead_section(fresh, figures)
    assert fresh.read_text().startswith("# Results\n\n## Federation overhead\n")
    # A later measurement keeps the first one as `before`: changes are measured against where the work started.
    later = overhead_file({"simulation": warm, "loopback deployment": warm, COLD_DEPLOYMENT: warm},
                                   None, "again", vars(PROFILES["quick"]), previous=figures)
    assert later["deployment"]["before"] == figures["deployment"]["before"]
    assert later["deployment"]["no_site_workers"]["wall_seconds"] == 40.0


def _scores(value: float) -> dict:
    interval = {"value": value, "low": value - 0.1, "high": value + 0.1}
    return {"instances": 10, "documents": 3,
            "scores": {k: interval for k in ("ner-strict-f1", "ner-lenient-f1", "re-strict-f1", "re-lenient-f1")}}


def test_gap_report_and_plots(tmp_path) -> None:
    tests = (*TRAINING_SITES, EXTERNAL)
    scores = {"centralized": {t: _scores(0.5) for t in tests}, "fedmedlora": {t: _scores(0.45) for t in tests}}
    gap = federated_gap(scores)
    assert gap == {"fedmedlora": pytest.approx({m: -5.0 for m in ("ner-strict", "ner-lenient", "re-strict", "re-lenient")})}

    rounds = [{"round": r, "coordinator": {"strict-f1": 0.1 * r, "lenient-f1": 0.2 * r, "re-strict-f1": 0.0,
                                           "re-lenient-f1": 0.0, "val-loss": 2 - r},
               "sites": None if r == 0 else {"strict-f1": 0.1, "lenient-f1": 0.2, "re-strict-f1": 0.0,
                                             "re-lenient-f1": 0.0, "val-loss": 1.0}} for r in range(3)]
    plots = plot_curves({"fedmedlora": rounds}, tmp_path / "plots")
    assert len(plots) == 4
    for plot in plots:
        assert Path(plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    results = {
        "command": "python -m benchmarks.protocol --profile quick --data data", "hardware": "2 CPU cores",
        "profile": vars(PROFILES["quick"]), "budget": {"steps-per-round": 18, "total-steps": 54},
        "scores": scores, "gap": gap, "new-site": {"zero-shot": _scores(0.0)},
        "curves": {"fedmedlora": rounds}, "plots": plots,
        "speed": {"loop": {"fedmedlora": 200.0, "peft-loop": 190.0, "ratio": 200 / 190}, "sites": {"a": 180.0}},
        "communication": {"adapter-bytes": 19_591_680, "full-model-bytes-bf16": 269_030_016,
                          "upload-ratio-to-full-model": 0.0728, "upload-reduction-percent": 92.7,
                          "bytes-per-round": 176e6},
        "encodings": {"float32": {"adapter-bytes": 19_591_680, "upload-ratio-to-full-model": 0.0728,
                                  "ner-strict": 0.30, "re-strict": 0.10},
                      "int8": {"adapter-bytes": 4_899_600, "upload-ratio-to-full-model": 0.0182,
                               "ner-strict": 0.28, "re-strict": 0.10}},
        "overhead": {"simulation": {"wall-seconds": 50.0, "overhead-seconds": 10.0, "overhead-share": 0.2,
                                    "busy-seconds": 40.0, "site-train-seconds": 30.0, "site-eval-seconds": 5.0,
                                    "coordinator-eval-seconds": 5.0}},
        "seconds": 2730.0,
    }
    results["claims"] = [{"claim": "fedmedlora is within 2 points of centralized", "profile": "quick",
                          "a": "fedmedlora", "b": "centralized", "threshold": -2.0, "estimate": -5.0,
                          "measure": "ner-strict-f1, mean over maccrobat, chia, ddi-drugbank",
                          "low": -9.0, "high": -1.0, "verdict": "undecided"}]
    results["half_width"] = {t: 4.0 for t in TRAINING_SITES}
    text = markdown(results)
    # The measure tells apart claims that pair the same arms on different test sets.
    assert ("| fedmedlora | centralized | ner-strict-f1, mean over maccrobat, chia, ddi-drugbank | -5.0 | "
            "[-9.0, -1.0] | undecided |") in text
    assert "maccrobat ±4.0, chia ±4.0, ddi-drugbank ±4.0 points" in text
    assert "- *fedmedlora is within 2 points of centralized* (quick profile): -5.0 points" in text
    assert "Time: 46 min for this invocation" in text
    assert "| fedmedlora | ade | 10 | 0.450 [0.350, 0.550] |" in text
    assert "| fedmedlora | -5.0 | -5.0 | -5.0 | -5.0 |" in text
    assert "105.3%" in text  # 200 / 190 tokens/s
    assert "10 s of 50 s wall (20%" in text
    assert "| int8 | 4.90 MB | 1.82% | 0.280 (-2.0 points) | 0.100 (+0.0 points) |" in text
    assert "[rounds-strict-f1.png](plots/rounds-strict-f1.png)" in text



@pytest.mark.parametrize(("low", "high", "threshold", "at_least", "expected"), [
    (-1.5, 3.0, -2.0, True, "confirmed"),   # within 2 points: the whole interval is >= -2
    (-2.0, 1.0, -2.0, True, "confirmed"),
    (-6.0, 1.0, -2.0, True, "undecided"),
    (-6.0, -2.5, -2.0, True, "refuted"),
    (0.1, 4.0, 0.0, False, "confirmed"),    # beats: the whole interval is > 0
    (0.0, 4.0, 0.0, False, "undecided"),
    (-3.0, 0.0, 0.0, False, "refuted"),
])
def test_verdicts_follow_the_interval(low, high, threshold, at_least, expected) -> None:
    assert claims.verdict(low, high, threshold, at_least) == expected


def _arm(per_doc: list[tuple[int, int, int]]) -> dict:
    """One test set's entry as `scoring.scored` writes it, NER strict counts only."""
    counts = [[list(row), [0, 0, 0], [0, 0, 0], [0, 0, 0]] for row in per_doc]
    tp, fp, fn = (sum(r[i] for r in per_doc) for i in range(3))
    f1 = 2 * tp / (2 * tp + fp + fn)
    return {"instances": len(per_doc), "documents": len(per_doc), "document-counts": counts,
            "scores": {"ner-strict-f1": {"value": f1, "low": f1 - 0.1, "high": f1 + 0.1}}}


def test_claims_are_paired_comparisons_with_a_verdict_and_a_sentence() -> None:
    tests = TRAINING_SITES
    docs = [(8, 2, 2), (1, 3, 6), (5, 1, 4), (9, 0, 1)] * 10  # documents of very different difficulty
    better = [(tp + 1, fp, fn - 1) for tp, fp, fn in docs]
    scores = {
        "centralized": {t: _arm(docs) for t in tests},
        "fedmedlora": {t: _arm(docs) for t in tests},          # the same outputs as centralized
        "fedmedlora-plus": {t: _arm(better) for t in tests},   # one more entity found per document
        "single-maccrobat": {t: _arm(docs) for t in tests},
        "single-chia": {t: _arm([(max(tp - 3, 0), fp + 3, fn + min(tp, 3)) for tp, fp, fn in docs]) for t in tests},
    }
    found = {c["claim"]: c for c in claims.evaluate_claims(scores, tests, "quick", resamples=300)}
    same = found["fedmedlora is within 2 points of centralized"]
    assert (same["estimate"], same["low"], same["high"], same["verdict"]) == (0.0, 0.0, 0.0, "confirmed")
    assert found["fedmedlora beats the best single site (single-maccrobat)"]["verdict"] == "refuted"  # a tie
    plus = found["fedmedlora-plus beats fedmedlora"]
    assert plus["verdict"] == "confirmed" and 0 < plus["low"] < plus["estimate"] < plus["high"]
    assert set(plus) >= {"claim", "profile", "estimate", "low", "high", "verdict"}
    text = claims.sentence(plus)
    assert text.startswith("- *fedmedlora-plus beats fedmedlora* (quick profile): +") and "confirmed" in text
    # The weighting claims pair the same arms on one test set: MACCROBAT's documents only.
    on_maccrobat = found["fedmedlora-plus beats fedmedlora on MACCROBAT"]
    assert on_maccrobat["measure"] == "ner-strict-f1, mean over maccrobat" and on_maccrobat["verdict"] == "confirmed"
    assert "fedmedlora-plus beats fedmedlora on the external set" not in found  # no ADE scores here

    results = {"scores": scores}
    add_claims(results, "quick")
    assert results["half_width"] == {t: pytest.approx(10.0) for t in tests}
    assert [c["verdict"] for c in results["claims"]] == [c["verdict"] for c in found.values()]


def test_two_arms_that_find_nothing_leave_the_claim_undecided() -> None:
    nothing = [(0, 2, 5), (0, 0, 3)] * 10  # every answer wrong or empty
    scores = {arm: {"maccrobat": _arm(nothing)} for arm in ("fedmedlora-skew", "fedmedlora-plus-skew")}
    specs = [c for c in claims.CLAIMS if "label skew" in c.claim]
    (skew,) = claims.evaluate_claims(scores, ("maccrobat",), "standard", specs=specs, resamples=100)
    assert (skew["estimate"], skew["low"], skew["high"]) == (0.0, 0.0, 0.0)
    assert skew["verdict"] == "undecided"  # not "refuted": a 0 - 0 tie says nothing
    assert "neither arm found a single correct entity" in claims.sentence(skew)


def _recall_arm(per_doc: list[tuple[int, int, int]]) -> dict:
    """An external (ADE) entry: entity recall, since its gold is partial."""
    entry = _arm(per_doc)
    tp, fn = (sum(r[i] for r in per_doc) for i in (0, 2))
    entry["scores"] = {"ner-strict-recall": {"value": tp / (tp + fn), "low": 0.0, "high": 1.0}}
    return entry


def test_claims_state_their_budget_and_the_external_claim_pairs_recall() -> None:
    """The paper's shape picks among `single-*` arms, the equal-instances claims among
    `equal-instances/single-*`; on ADE the difference is of recall, so predictions that the
    partial gold cannot judge (false positives) do not count against an arm."""
    tests = TRAINING_SITES
    docs = [(4, 1, 4), (2, 2, 6), (6, 0, 2)] * 10
    more_found = [(tp + 2, fp + 9, fn - 2) for tp, fp, fn in docs]  # higher recall, many more fps
    scores = {
        "centralized": {t: _arm(docs) for t in tests},
        "fedmedlora": {**{t: _arm(docs) for t in tests}, "ade": _recall_arm(more_found)},
        "single-chia": {**{t: _arm(docs) for t in tests}, "ade": _recall_arm(docs)},
        "equal-instances/single-chia": {**{t: _arm(more_found) for t in tests}, "ade": _recall_arm(more_found)},
    }
    found = {(c["claim"]): c for c in claims.evaluate_claims(scores, tests, "standard", resamples=300)}
    external = found["fedmedlora beats the best single site (single-chia) on the external set"]
    assert external["budget"] == "equal-local-steps" and external["measure"].startswith("ner-strict-recall")
    assert external["verdict"] == "confirmed" and external["estimate"] > 0
    equal = found["fedmedlora beats the best single site (equal-instances/single-chia) at equal instances"]
    assert equal["budget"] == "equal-instances" and equal["b"] == "equal-instances/single-chia"
    assert found["fedmedlora beats the best single site (single-chia)"]["b"] == "single-chia"
    assert all("budget" in c for c in found.values())


def test_claims_so_far_come_from_the_arms_recorded_while_a_profile_runs(tmp_path) -> None:
    tests = TRAINING_SITES
    docs = [(4, 1, 4), (2, 2, 6), (6, 0, 2)] * 10
    better = [(tp + 2, fp, fn - 2) for tp, fp, fn in docs]
    arms = {
        "single-chia": {**{t: _arm(docs) for t in tests}, "ade": _recall_arm(docs)},
        "fedmedlora": {**{t: _arm(better) for t in tests}, "ade": _recall_arm(better)},
        "run/fedmedlora": {"curve": []},  # a federated run's own record: not an arm's scores
    }
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"profiles": {"standard": {"arms": arms, "seconds": 600.0,
                                                          "invocations": [{"seconds": 600.0}]}}}))
    text, record = claims_so_far(path, "standard")
    assert record["arms"] == ["fedmedlora", "single-chia"] and [c["b"] for c in record["claims"]] == ["single-chia"] * 2
    assert "2 arm(s) recorded" in text and "10 min over 1 invocation(s)" in text
    assert f"| fedmedlora | {_arm(better)['scores']['ner-strict-f1']['value']:.3f} |" in text
    assert "(recall)" in text
    # Centralized is not recorded yet: only the claims against the best single site are decided.
    assert "*fedmedlora beats the best single site (single-chia)*" in text and "centralized" not in text
    assert "confirmed" in text and "[budget: equal-local-steps]" in text
    with pytest.raises(SystemExit, match="no recorded arm of the quick profile"):
        claims_so_far(path, "quick")


def test_claims_need_per_document_counts() -> None:
    entry = _arm([(1, 0, 0)])
    del entry["document-counts"]
    scores = {arm: {t: entry for t in TRAINING_SITES} for arm in ("fedmedlora", "centralized")}
    assert claims.evaluate_claims(scores, TRAINING_SITES, "quick") == []


def test_results_json_keeps_number_lists_on_one_line() -> None:
    data = {"document-counts": [[[1, 0, 2], [0, 0, 0]]], "runs": [1.5, -2e-05], "name": "a, b", "empty": []}
    text = compact_json(data)
    assert json.loads(text) == data
    assert "[1, 0, 2]" in text and "[1.5, -2e-05]" in text and len(text.splitlines()) < 12


def test_label_skew_sites_annotate_one_group_of_types_each(tmp_path) -> None:
    root = tmp_path / "data" / "maccrobat"
    root.mkdir(parents=True)
    types = [t for group in SKEW_GROUPS for t in group]
    (root / "site.json").write_text(json.dumps({"name": "maccrobat", "entity_types": types,
                                                "relation_types": ["dosage", "causes", "bodyloc"]}))
    docs = []
    for i in range(9):
        text = "Fever treated with aspirin 5 mg in the chest."
        entities = [{"id": "T1", "type": "problem", "spans": [[0, 5]], "text": "Fever"},
                    {"id": "T2", "type": "drug", "spans": [[19, 26]], "text": "aspirin"},
                    {"id": "T3", "type": "dosage", "spans": [[27, 31]], "text": "5 mg"},
                    {"id": "T4", "type": "bodyloc", "spans": [[39, 44]], "text": "chest"}]
        relations = [{"id": "R1", "type": "dosage", "arg1": "T2", "arg2": "T3"},
                     {"id": "R2", "type": "bodyloc", "arg1": "T1", "arg2": "T4"}]
        docs.append({"id": f"d{i}", "text": text, "entities": entities, "relations": relations,
                     "attributes": [{"id": "A1", "type": "NEG", "target": "T1", "value": "NEG"}],
                     "groups": [], "source_split": None})
    (root / "documents.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    folders = prepare_label_skew_sites(tmp_path / "data", tmp_path / "out")
    assert list(folders) == list(SKEW_SITES)
    seen = []
    for name, group in zip(SKEW_SITES, SKEW_GROUPS):
        site = load_site(folders[name], name=name)
        assert list(site.entity_types) == list(group)
        documents = [d for split in site.splits.values() for d in split]
        assert {e.type for d in documents for e in d.entities} <= set(group)
        seen += [d.doc_id for d in documents]
    assert sorted(seen) == sorted(d["id"] for d in docs)  # every document dealt once
    skew_b = json.loads((folders["skew-b"] / "site.json").read_text())
    assert skew_b["relation_types"] == ["dosage"]  # drug and dosage are both skew-b's
    assert json.loads((folders["skew-c"] / "site.json").read_text())["relation_types"] == []  # problem is skew-a's


def test_finished_arms_are_kept_in_the_results_file_and_reused(tmp_path) -> None:
    path = tmp_path / "docs" / "results.json"
    settings = {"profile": {"steps": 16, "federated_arms": ("fedmedlora",)}, "data": "/data"}
    store = ArmStore(path, "standard", settings)
    assert store.scores("centralized") is None
    store.save("centralized", {"maccrobat": {"instances": 3}})
    # A later run (another --out) finds the arm in the committed file.
    later = ArmStore(path, "standard", settings)
    assert later.scores("centralized") == {"maccrobat": {"instances": 3}}
    later.finish({"claims": [{"profile": "standard", "claim": "x"}]})
    data = json.loads(path.read_text())
    assert data["claims"] == [{"profile": "standard", "claim": "x"}]
    assert data["profiles"]["standard"]["arms"]["centralized"] == {"maccrobat": {"instances": 3}}
    with pytest.raises(SystemExit, match="standard profile's arms there were made with other settings"):
        ArmStore(path, "standard", {**settings, "data": "/other"})
    assert ArmStore(path, "quick", settings).scores("centralized") is None  # profiles apart


def test_the_profile_wall_time_sums_the_invocations_that_trained_arms(tmp_path) -> None:
    path = tmp_path / "results.json"
    settings = {"profile": {}, "data": "/data"}
    ArmStore(path, "standard", settings).save("zero-shot", {})
    ArmStore(path, "standard", settings, timed=False).finish({})  # --report-only: not an invocation
    second = ArmStore(path, "standard", settings)
    second.record_dtype("float32")
    second.save("centralized", {})
    timing = second.profile_time()
    # Each invocation names its machine and what it computed in: sessions' machines differ.
    assert timing["invocations"][1]["dtype"] == "float32" and "CPU" in timing["invocations"][1]["machine"]
    assert [i["arms"] for i in timing["invocations"]] == [["zero-shot"], ["centralized"]]
    assert timing["seconds"] == pytest.approx(sum(i["seconds"] for i in timing["invocations"]), abs=0.11)
    assert json.loads(path.read_text())["profiles"]["standard"]["seconds"] == timing["seconds"]
    assert ArmStore(tmp_path / "other.json", "quick", settings).profile_time() is None


def test_a_results_file_of_one_profile_is_read_as_the_quick_profile(tmp_path) -> None:
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"profile": {"rounds": 3}, "scores": {}}))
    store = ArmStore(path, "quick", {"profile": {}, "data": "d"})
    assert store.data["profiles"]["quick"]["results"] == {"profile": {"rounds": 3}, "scores": {}}


def test_the_paper_budget_shape_gives_a_single_site_its_federated_steps() -> None:
    site_steps = {"maccrobat": 24, "chia": 24, "ddi-drugbank": 10}  # a small site runs out of instances
    standard = PROFILES["standard"]
    assert standard.budget == "equal-local-steps" and standard.equal_instances_arms
    assert single_site_steps(standard, site_steps) == site_steps
    equal = replace(standard, budget="equal-instances")
    assert single_site_steps(equal, site_steps) == {n: 58 for n in site_steps}


def test_committed_results_name_no_folder_of_the_machine_they_ran_on() -> None:
    """Results files are read on other machines: paths in them are relative to the repository."""
    import re

    absolute = re.compile(r'"/(?:work|tmp|home|root|Users|mnt|opt|var)/')
    files = [REPO / "docs" / "results.json", *sorted((REPO / "docs" / "benchmarks").glob("*.json"))]
    offenders = {str(f.relative_to(REPO)): absolute.findall(f.read_text()) for f in files}
    assert {f: n for f, n in offenders.items() if n} == {}
    assert repo_relative(REPO / "data") == "data"
    assert repo_relative(REPO.parent / "data") == "../data"  # a --data beside the checkout


def test_unaligned_counts_only_strings_that_are_not_in_the_sentence() -> None:
    """A relation repeated past its arguments' occurrences is dropped by scoring (a false
    positive) but its strings are in the sentence: not unaligned."""
    from types import SimpleNamespace

    ner = SimpleNamespace(text="Chest pain and fever.", task="ner", entity_types=("problem",),
                          relation_types=(), given_entities=False)
    rel = SimpleNamespace(text="Coronary angiography was normal.", task="re", entity_types=(),
                          relation_types=("bodyloc",), given_entities=False)
    outputs = ['{"problem": ["chest pain", "headache", "fever"]}',
               '{"bodyloc": [["angiography", "Coronary"], ["angiography", "Coronary"], ["angiography", "heart"]]}']
    assert not_in_sentence([ner, rel], outputs) == 2  # "headache", "heart"
    assert not_in_sentence([ner], ['{"problem": ["CHEST PAIN"]}']) == 0  # case aside, it is there


def test_cached_answers_belong_to_the_adapter_that_generated_them(tmp_path) -> None:
    """A run made again replaces its adapter; the answers cached for the old one must not
    be scored for the new one."""
    from clinical_ie.instances import NER, Instance

    instances = [Instance(doc_id="d1", offset=0, text="Fever.", entity_types=("problem",), entities=(), task=NER)]
    adapters = []
    for n, weights in enumerate((b"old weights", b"new weights", b"old weights")):
        folder = tmp_path / f"adapter-{n}"
        folder.mkdir()
        (folder / "adapter_model.safetensors").write_bytes(weights)
        adapters.append(folder)
    keys = [outputs_key(instances, True, a) for a in adapters]
    assert keys[0] != keys[1] and keys[0] == keys[2]
    assert outputs_key(instances, True, None) != keys[0]
    assert outputs_key(instances, False, adapters[0]) != keys[0]


def test_a_restart_in_an_out_folder_holding_trained_arms_is_refused(tmp_path) -> None:
    """Trained arms are reused by name, so a restart there would score the adapters it means
    to replace."""
    import subprocess

    adapter = tmp_path / "out" / "arms" / "single-chia" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    done = subprocess.run([sys.executable, "-m", "benchmarks.protocol", "--profile", "standard",
                           "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"),
                           "--results", str(tmp_path / "RESULTS.md"), "--restart-profile"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 2 and "holds trained arms that would be reused" in done.stderr, done.stderr
    assert not (tmp_path / "results.json").exists()


def test_token_classification_arms_score_spans_and_pair_with_the_generative_arm_on_the_same_documents() -> None:
    """A tagger's spans and a generative arm's answers on the same test instances give counts of
    the same documents in the same order, so the new claim pairs them; a relation instance
    counts its gold as missed, and nothing a tagger predicts is unaligned."""
    from benchmarks.protocol.profiles import TOKEN_ARMS
    from benchmarks.protocol.scoring import scored, scored_spans
    from clinical_ie.instances import RE, GoldEntity, GoldRelation, Instance

    aspirin, daily = GoldEntity("drug", ((8, 15),), "aspirin"), GoldEntity("frequency", ((16, 21),), "daily")
    text = "She took aspirin daily."
    instances = [
        Instance("d1", 0, text, ("drug",), (aspirin,)),
        Instance("d2", 0, text, ("drug", "frequency"), (aspirin, daily)),
        Instance("d2", 0, text, ("drug", "frequency"), (), task=RE, relation_types=("frequency",),
                 relations=(GoldRelation("frequency", aspirin, daily),)),
    ]
    generative = scored(instances, ['{"drug": ["aspirin"]}', '{"drug": ["took"]}', "{}"], None)
    tagger = scored_spans(instances, [[("drug", 8, 15)], [("drug", 8, 15), ("frequency", 16, 21)], None], None)
    assert tagger["unaligned"] == 0 and tagger["documents"] == generative["documents"] == 2
    assert tagger["scores"]["ner-strict-f1"]["value"] == 1.0 and tagger["scores"]["re-strict-f1"]["value"] == 0.0
    assert tagger["document-counts"][1][2] == [0, 0, 1]  # d2's relation: missed
    assert TOKEN_ARMS[-1] == "token-classification/fedmedlora"
    scores = {"fedmedlora": {t: generative for t in TRAINING_SITES},
              "token-classification/fedmedlora": {t: tagger for t in TRAINING_SITES}}
    (claim,) = claims.evaluate_claims(scores, TRAINING_SITES, "standard", resamples=100)
    assert claim["claim"] == "generative fedmedlora beats token-classification/fedmedlora"
    assert claim["estimate"] < 0 and claim["budget"] == "equal-local-steps"
    # Without the tagger's arm (a profile recorded before them), the claim is not made.
    assert claims.evaluate_claims({"fedmedlora": scores["fedmedlora"]}, TRAINING_SITES, "standard") == []


def test_lora_strategy_arms_pair_with_fedmedlora_and_report_bytes_and_aggregation_error(tmp_path) -> None:
    """The side-by-side summary: each arm's F1 per test set, its paired difference against
    fedmedlora over the in-domain sets (a better arm on the same documents is ahead), the
    bytes per round its run recorded and every round's aggregation error from metrics.jsonl."""
    from benchmarks.protocol.arms import aggregation_errors
    from benchmarks.protocol.scoring import scored
    from benchmarks.protocol.strategy_arms import STRATEGY_ARMS, own_adapter, summary, table
    from clinical_ie.instances import GoldEntity, Instance

    assert {"ffa-lora", "rolora", "fedsa-lora", "fedsvd", "fedmedlora", "exact"} <= set(STRATEGY_ARMS)
    text = "She took aspirin daily."
    aspirin = GoldEntity("drug", ((9, 16),), "aspirin")
    instances = [Instance(f"d{i}", 0, text, ("drug",), (aspirin,)) for i in range(6)]
    right, wrong = '{"drug": ["aspirin"]}', '{"drug": ["took"]}'
    baseline = scored(instances, [right, wrong, wrong, wrong, right, wrong], None)
    better = scored(instances, [right] * 6, None)
    scores = {"fedmedlora": {t: baseline for t in TRAINING_SITES}, "ffa-lora": {t: better for t in TRAINING_SITES},
              "rolora": {t: baseline for t in TRAINING_SITES}}
    run = tmp_path / "runs" / "ffa-lora"
    run.mkdir(parents=True)
    rounds = [{"round": 0}, {"round": 1, "strategy": {"aggregation-error": {"overall": 0.0, "max": 0.0, "modules": 2}}},
              {"round": 2}]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rounds) + "\n")
    store = ArmStore(None, "standard", {})
    store.save("run/ffa-lora", {"communication": {"bytes-per-round": 2.5e6}, "aggregation-error": aggregation_errors(run)})
    store.save("run/rolora", {"communication": {"bytes-per-round": 1e6}, "aggregation-error": [0.5, 0.25]})
    arms = summary(scores, store, resamples=200)
    diff = arms["ffa-lora"]["minus-fedmedlora"]
    assert diff["estimate"] > 0 and diff["low"] <= diff["estimate"] <= diff["high"] and diff["verdict"] != "refuted"
    assert "minus-fedmedlora" not in arms["fedmedlora"]
    assert arms["ffa-lora"]["bytes-per-round"] == 2.5e6 and arms["ffa-lora"]["aggregation-error"] == [0.0, None]
    assert aggregation_errors(run) == [0.0, None]
    assert arms["rolora"]["aggregation-error"] == [0.5, 0.25]
    assert arms["rolora"]["minus-fedmedlora"]["estimate"] == 0.0
    assert "| ffa-lora | 1.000 | 1.000 | 1.000 | - | +" in table(arms)
    with pytest.raises(RuntimeError, match="no adapter of site 'chia' under final/sites/"):
        own_adapter(run, "chia")


def test_the_committed_report_is_rebuilt_from_the_committed_results_alone(tmp_path, monkeypatch) -> None:
    """`--report-only` without the run's cached outputs: docs/results.json keeps every count,
    so the rebuilt RESULTS.md is the committed one, claims table included."""
    from benchmarks.protocol.cli import report_only

    docs = tmp_path / "docs"
    (docs / "benchmarks").mkdir(parents=True)
    (docs / "benchmarks" / "overhead.json").write_bytes((REPO / "docs" / "benchmarks" / "overhead.json").read_bytes())
    monkeypatch.setattr(sys, "argv", "protocol --profile standard --data data --out outputs/standard "
                                     "--results docs/RESULTS.md --report-only".split())
    committed = json.loads((REPO / "docs" / "results.json").read_text())
    (docs / "results.json").write_text(compact_json(committed))
    settings = committed["profiles"]["standard"]["settings"]
    report_only(tmp_path / "out", {}, PROFILES["standard"], "standard", docs / "RESULTS.md", settings)

    def body(text: str) -> str:  # a report written by the run itself has no rebuild line
        return re.sub(r"Report rebuilt, claims recomputed[^\n]*\n\n", "", text)

    assert body((docs / "RESULTS.md").read_text()) == body((REPO / "docs" / "RESULTS.md").read_text()), \
        "run: python -m benchmarks.protocol --profile standard --data data --out outputs/standard " \
        "--results docs/RESULTS.md --report-only"
    assert sorted(p.name for p in (docs / "plots").iterdir()) == sorted(
        p.name for p in (REPO / "docs" / "plots").iterdir() if p.name.startswith("rounds-"))


def test_report_only_without_any_results_names_what_is_missing(tmp_path) -> None:
    from benchmarks.protocol.cli import report_only

    with pytest.raises(SystemExit, match=r"out/results\.json nor the 'standard' profile's results"):
        report_only(tmp_path / "out", {}, PROFILES["standard"], "standard", tmp_path / "RESULTS.md", {})


def _sweep_arm(lr: float, ratio: float, f1: float, loss: float = 0.7, keep: bool = True) -> dict:
    return {"setting": {"learning-rate": lr, "loraplus-lr-ratio": ratio, "keep-optimizer-state": keep, "rounds": 3},
            "mean-ner-strict-f1": f1, "scores": {"x": {"val-loss": loss}}}


def test_tuned_single_sites_take_their_own_best_validation_setting_and_decide_their_claims(tmp_path) -> None:
    """Each site's rate is its best single-site arm on validation (a fresh-optimizer arm is not
    a candidate; a tie goes to the lower loss); a sweep of another dtype or without a site's
    arms is refused by name; the tuned arms decide only their own claims."""
    from benchmarks.protocol.profiles import TUNED_PREFIX
    from benchmarks.protocol.tuned_singles import chosen_settings

    arms = {"fedmedlora/lr=0.00025,loraplus=16": _sweep_arm(2.5e-4, 16, 0.9),  # federated: not a candidate
            "single-maccrobat/lr=0.00025,loraplus=16": _sweep_arm(2.5e-4, 16, 0.30),
            "single-maccrobat/lr=0.002": _sweep_arm(2e-3, 0, 0.32),
            "single-maccrobat/lr=0.002,fresh-optimizer": _sweep_arm(2e-3, 0, 0.50, keep=False),
            "single-chia/lr=0.0005": _sweep_arm(5e-4, 0, 0.25, loss=0.8),
            "single-chia/lr=0.001": _sweep_arm(1e-3, 0, 0.25, loss=0.6),
            "single-ddi-drugbank/lr=0.0002": _sweep_arm(2e-4, 0, 0.58)}
    sweep = tmp_path / "sweep.json"
    sweep.write_text(json.dumps({"settings": {"dtype": "float32"}, "arms": arms}))
    chosen = chosen_settings(sweep, "float32")
    assert chosen["maccrobat"]["arm"] == "single-maccrobat/lr=0.002" and chosen["maccrobat"]["loraplus-lr-ratio"] == 0
    assert chosen["chia"]["learning-rate"] == 1e-3  # the tie at 0.25 goes to the lower validation loss
    assert chosen["ddi-drugbank"]["validation-f1"] == 0.58
    with pytest.raises(SystemExit, match="computed in float32, this machine computes in bfloat16"):
        chosen_settings(sweep, "bfloat16")
    del arms["single-ddi-drugbank/lr=0.0002"]
    sweep.write_text(json.dumps({"settings": {"dtype": "float32"}, "arms": arms}))
    with pytest.raises(SystemExit, match="no single-site arm of 'ddi-drugbank'"):
        chosen_settings(sweep, "float32")

    docs = [(8, 2, 2), (1, 3, 6), (5, 1, 4), (9, 0, 1)] * 10
    weaker = [(max(tp - 3, 0), fp + 3, fn + min(tp, 3)) for tp, fp, fn in docs]
    tests = (*TRAINING_SITES, claims.EXTERNAL_TEST)
    scores = {"fedmedlora": {t: _arm(docs) for t in tests},
              "single-chia": {t: _arm(weaker) for t in tests},             # at the defaults: weaker
              f"{TUNED_PREFIX}single-chia": {t: _arm(docs) for t in tests}}  # at its own rate: a tie
    found = {c["claim"]: c for c in claims.evaluate_claims(scores, TRAINING_SITES, "standard", resamples=200)}
    assert found["fedmedlora beats the best single site (single-chia)"]["verdict"] == "confirmed"
    tuned = found[f"fedmedlora beats the best single site ({TUNED_PREFIX}single-chia) at its own rate"]
    assert tuned["verdict"] == "refuted" and tuned["estimate"] == 0.0
    assert f"fedmedlora beats the best single site ({TUNED_PREFIX}single-chia) on the external set at its own rate" \
        in found
    del scores[f"{TUNED_PREFIX}single-chia"]  # a profile without the opt-in arms: no tuned claim
    assert not any("own rate" in c["claim"] for c in claims.evaluate_claims(scores, TRAINING_SITES, "standard",
                                                                             resamples=50))
