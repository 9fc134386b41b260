"""ServerApp: the coordinator. Builds the strategy from the run config, sends the
initial global adapter, and after every round saves the global adapter as a PEFT
folder, scores it on the coordinator's validation set and logs the round."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from clinical_ie.evaluate import InstanceEvaluator, site_instances, stable_subset
from data_loaders.sites import ensure_demo_corpus, load_site
from fedmedlora import protocol
from fedmedlora.config import lora_settings, tasks, validate
from fedmedlora.logs import setup_logging
from modeling.adapter_io import arrayrecord_nbytes, from_arrayrecord, get_adapter_state, set_adapter_state, to_arrayrecord
from modeling.base import load_base_model, model_identity, resolve_model_path
from modeling.lora import attach_lora

from .outputs import RunRecorder, run_folder
from .report import RoundReporter
from .strategy_factory import build_strategy

log = logging.getLogger(__name__)

app = ServerApp()


def _validation_folder(cfg: dict[str, Any]) -> Path:
    if cfg["data.server-validation"]:
        return Path(cfg["data.server-validation"]).expanduser().resolve()
    return ensure_demo_corpus() / "coordinator"


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = validate(context.run_config)  # stops here, before any training, on a bad config
    folder = run_folder(cfg["output-dir"], cfg["run-name"])
    setup_logging(folder / "coordinator.log")
    log.info("run folder: %s", folder)
    torch.set_num_threads(max(1, len(__import__("os").sched_getaffinity(0))))

    lora = lora_settings(cfg)
    model, tokenizer = load_base_model(cfg["model.name"], cfg["quantization"], cfg["model.dtype"])
    full_model_bytes = 2 * sum(p.numel() for p in model.parameters())  # bf16 full update
    peft_model = attach_lora(model, lora, seed=cfg["seed"], base_model_name=resolve_model_path(cfg["model.name"]))
    identity = model_identity(cfg["model.name"])
    initial = get_adapter_state(peft_model)

    validation = load_site(_validation_folder(cfg), name="coordinator")
    # A site-like folder lends its validation split; a dedicated coordinator set
    # (no validation split of its own, as in the demo) is used whole.
    split_names = ["validation"] if validation.splits["validation"] else ["train", "validation", "test"]
    instances = [i for name in split_names for i in site_instances(validation, name, tasks(cfg))]
    # Fed-MedLoRA+ scores every candidate on these each round: a cap keeps CPU runs short.
    loss_instances = stable_subset(instances, cfg["strategy.validation-instances"])
    loss_evaluator = InstanceEvaluator(tokenizer, loss_instances, cfg["train.max-length"],
                                       cfg["eval.max-new-tokens"], cfg["eval.batch-size"])
    f1_evaluator = InstanceEvaluator(tokenizer, stable_subset(instances, cfg["eval.max-instances"]),
                                     cfg["train.max-length"], cfg["eval.max-new-tokens"], cfg["eval.batch-size"],
                                     score_by=validation.score_by)

    def validation_loss(state) -> float:
        set_adapter_state(peft_model, state)
        return loss_evaluator.loss(peft_model)

    strategy = build_strategy(cfg, {k: v.shape for k, v in initial.items()}, validation_loss)
    recorder = RunRecorder(folder, lora.to_peft_config(resolve_model_path(cfg["model.name"])), {
        "base-model": identity.name, "base-sha256": identity.sha256, "strategy": cfg["strategy.name"],
        "run-config": cfg,
    })
    adapter_bytes = arrayrecord_nbytes(to_arrayrecord(initial))
    reporter = RoundReporter(strategy, adapter_bytes, full_model_bytes, cfg["num-server-rounds"])
    log.info("base model %s (sha256 %s), adapter %.2f MB vs full model %.1f MB (%.2f%%)",
             identity.name, identity.sha256[:12], adapter_bytes / 1e6, full_model_bytes / 1e6,
             100 * adapter_bytes / full_model_bytes)

    def after_round(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        state = from_arrayrecord(arrays)
        if server_round > 0:
            recorder.save_adapter(f"round-{server_round}", state, server_round)
        set_adapter_state(peft_model, state)
        metrics = f1_evaluator.evaluate(peft_model, f"coordinator round {server_round}").to_metrics()
        recorder.append_round(reporter.round_record(server_round, metrics))
        return MetricRecord(metrics)

    config = ConfigRecord(protocol.base_config(identity, lora, cfg["num-server-rounds"]))
    result = strategy.start(
        grid=grid,
        initial_arrays=to_arrayrecord(initial),
        num_rounds=cfg["num-server-rounds"],
        timeout=cfg["strategy.round-timeout"],
        train_config=config,
        evaluate_config=ConfigRecord(dict(config)),
        evaluate_fn=after_round,
    )
    last = max(result.evaluate_metrics_serverapp)
    final = recorder.finish(last, {
        "rounds": last,
        "final-metrics": dict(result.evaluate_metrics_serverapp[last]),
        "zero-shot-metrics": dict(result.evaluate_metrics_serverapp[0]),
        "communication": reporter.totals(),
    })
    reporter.log_totals()
    log.info("global adapter: %s (load it with peft.PeftModel.from_pretrained)", final)
    log.info("metrics per round: %s", recorder.metrics_path)
