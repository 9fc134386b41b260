"""Training and scoring seconds of the two tasks side by side: the generative extractor and the
token-classification tagger (docs/token-classification.md), each as the `standard` profile's
single-site arm on one site (`--site`, default MACCROBAT): 3 rounds x 24 steps of batch 4 on
the site's training notes, then scored on the profile's test sentences of that site. The
same base model, dtype, LoRA settings and machine, one task after the other in one process.

The protocol's own token-classification arms record their seconds; its generative arms do
not, so this script measures both in one invocation. It prints a table and writes `--json`
(docs/benchmarks/task_seconds.json). F1 is printed as a check that the arms are the
protocol's (it is the protocol's figure where the machine repeats its sums).

    python -m benchmarks.task_seconds --data data --out outputs/task-seconds --json docs/benchmarks/task_seconds.json
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from benchmarks.protocol.profiles import PROFILES, TRAINING_SITES
from benchmarks.protocol.scoring import scored, scored_spans, test_instances
from benchmarks.protocol.sites import prepare_sites
from benchmarks.protocol.store import compact_json
from benchmarks.protocol.token_arms import TaggerBench
from benchmarks.protocol.workbench import Workbench
from benchmarks.provenance import command, machine
from data_loaders.sites import union_entity_types
from modeling.training import TrainSettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder of the prepared site folders")
    parser.add_argument("--out", type=Path, default=Path("outputs/task-seconds"))
    parser.add_argument("--json", type=Path, default=None, help="results file (docs/benchmarks/task_seconds.json)")
    parser.add_argument("--site", default="maccrobat", choices=TRAINING_SITES)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    profile = PROFILES["standard"]
    out = args.out.resolve()
    if out.exists() and any(out.glob("*/adapter")):
        parser.error(f"--out {out}: holds adapters of an earlier run; seconds are measured from scratch, "
                     "so pass an empty folder")
    sites = prepare_sites(args.data.resolve(), out, profile.new_site_documents)
    instances, score_by = test_instances(sites[args.site], args.site, profile.test_limit(args.site))
    rows = {}

    bench = Workbench(profile)
    adapter = bench.train(bench.examples(args.site, sites[args.site]), profile.steps, profile.rounds, None,
                          out / "generative" / "adapter")
    train = json.loads((adapter / "training.json").read_text())
    start = time.perf_counter()
    outputs = bench.outputs(adapter, instances, out / "generative" / "outputs.json", "generative")
    rows["generative"] = {"train-seconds": train["train-seconds"], "score-seconds": time.perf_counter() - start,
                          "ner-strict-f1": scored(instances, outputs, score_by)["scores"]["ner-strict-f1"]["value"],
                          "dtype": bench.dtype}
    del bench

    tagger = TaggerBench(profile, union_entity_types([sites[n] for n in TRAINING_SITES]))
    adapter = tagger.train(tagger.examples(args.site, sites[args.site]), profile.steps, profile.rounds, None,
                           out / "token-classification" / "adapter")
    train = json.loads((adapter / "training.json").read_text())
    spans, seconds = tagger.spans(adapter, instances, out / "token-classification" / "spans.json")
    rows["token-classification"] = {
        "train-seconds": train["train-seconds"], "score-seconds": seconds,
        "ner-strict-f1": scored_spans(instances, spans, score_by)["scores"]["ner-strict-f1"]["value"],
        "dtype": tagger.dtype}

    result = {"command": command("benchmarks.task_seconds", argv), "hardware": machine(), "site": args.site,
              "steps": f"{profile.rounds} x {profile.steps} of batch {TrainSettings().batch_size}", "test-instances": len(instances),
              "tasks": rows,
              "generative-over-token": {k: rows["generative"][k] / rows["token-classification"][k]
                                        for k in ("train-seconds", "score-seconds")}}
    print(f"| task | train s | score s ({len(instances)} test sentences) | NER strict F1 |")
    print("|---|---:|---:|---:|")
    for task, row in rows.items():
        print(f"| {task} | {row['train-seconds']:.0f} | {row['score-seconds']:.0f} | {row['ner-strict-f1']:.3f} |")
    ratio = result["generative-over-token"]
    print(f"generative / token-classification: training {ratio['train-seconds']:.1f}x, "
          f"scoring {ratio['score-seconds']:.1f}x")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(compact_json(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
