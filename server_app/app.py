"""ServerApp: the coordinator. Builds the strategy from the run config, sends the
initial global adapter, and after every round saves the global adapter as a PEFT
folder, scores it on the coordinator's validation set, logs the round and replaces the
run's checkpoint (server_app/checkpoint.py). With `resume = true` it continues the run
`run-name` from that checkpoint: the remaining rounds only, in the same folder. A round in
which fewer than `strategy.min-sites` sites replied usably stops the run (`TooFewSites`),
with the last finished round checkpointed, so `resume = true` can continue it."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from clinical_ie.evaluate import InstanceEvaluator, site_instances, stable_subset
from clinical_ie.tagging import bio_labels, check_label_types
from clinical_ie.token_classification import TaggerEvaluator
from data_loaders.sites import ensure_demo_corpus, load_site, union_entity_types
from modeling.adapter_io import get_adapter_state, load_peft_folder, set_adapter_state
from modeling.base import model_dtype, model_identity, resolve_model_path
from modeling.token_classification import head_name, load_for_task, save_labels
from settings.config import ConfigError, RunConfig, validate
from settings.logs import setup_logging
from strategies.round_report import TooFewSites
from strategies.wrapper import StrategyWrapper
from wire import protocol
from wire.arrays import from_arrayrecord, to_arrayrecord
from wire.transport import adapter_nbytes, adapter_sha256, transport_grid

from .audit_trail import CoordinatorAudit, coordinator_key
from .checkpoint import Checkpoint, checkpoint_path, existing_round, resume_checkpoint, save_checkpoint
from .outputs import RunRecorder, run_folder, safe_name
from .report import RoundReporter
from .strategy_factory import build_strategy

log = logging.getLogger(__name__)

app = ServerApp()


def _validation_folder(cfg: RunConfig) -> Path:
    if cfg.data.server_validation:
        return Path(cfg.data.server_validation).expanduser().resolve()
    return ensure_demo_corpus() / "coordinator"


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = validate(context.run_config)  # stops here, before any training, on a bad config
    folder = run_folder(cfg.output_dir, cfg.run_name, create=not cfg.resume)
    # Also before any training: the checkpoint a continued run needs, or a new run's refusal
    # to write over the rounds of another run, and the key that seals the audit trail.
    checkpoint = resume_checkpoint(folder, cfg) if cfg.resume else None
    if checkpoint is None:
        _refuse_finished_rounds(folder, cfg)
    audit_key = coordinator_key(cfg, folder)
    setup_logging(folder / "coordinator.log")
    log.info("run folder: %s", folder)
    torch.set_num_threads(max(1, len(__import__("os").sched_getaffinity(0))))

    lora = cfg.lora_settings()
    label_types = run_label_types(cfg) if cfg.token_classification() else ()
    labels = bio_labels(label_types) if label_types else ()
    peft_model, tokenizer = load_for_task(cfg.model.task, cfg.model.name, cfg.quantization, cfg.model.dtype, lora,
                                          cfg.seed, labels)
    # bf16 full update: the base model's weights, which PEFT leaves frozen (the adapter is what trains)
    full_model_bytes = 2 * sum(p.numel() for p in peft_model.parameters() if not p.requires_grad)
    identity = model_identity(cfg.model.name)
    initial = get_adapter_state(peft_model)

    validation = load_site(_validation_folder(cfg), name="coordinator")
    if label_types:
        check_label_types(validation.name, validation.entity_types, label_types)
        log.info("token classification: %d labels over the entity types %s", len(labels), ", ".join(label_types))
    # A site-like folder lends its validation split; a dedicated coordinator set
    # (no validation split of its own, as in the demo) is used whole.
    split_names = ["validation"] if validation.splits["validation"] else ["train", "validation", "test"]
    instances = [i for name in split_names for i in site_instances(validation, name, cfg.tasks(), cfg.data.re_mode)]
    # Fed-MedLoRA+ scores every candidate on these each round: a cap keeps CPU runs short.
    loss_instances = stable_subset(instances, cfg.strategy.validation_instances)
    f1_instances = stable_subset(instances, cfg.eval.max_instances)
    if labels:
        loss_evaluator = TaggerEvaluator(tokenizer, loss_instances, labels, cfg.train.max_length, cfg.eval.batch_size)
        f1_evaluator = TaggerEvaluator(tokenizer, f1_instances, labels, cfg.train.max_length, cfg.eval.batch_size,
                                       score_by=validation.score_by)
    else:
        loss_evaluator = InstanceEvaluator(tokenizer, loss_instances, cfg.train.max_length,
                                           cfg.eval.max_new_tokens, cfg.eval.batch_size)
        f1_evaluator = InstanceEvaluator(tokenizer, f1_instances, cfg.train.max_length, cfg.eval.max_new_tokens,
                                         cfg.eval.batch_size, score_by=validation.score_by,
                                         constrained=cfg.eval.constrained)

    def validation_loss(state) -> float:
        set_adapter_state(peft_model, state)
        return loss_evaluator.loss(peft_model)

    strategy = build_strategy(cfg, {k: v.shape for k, v in initial.items()}, validation_loss)
    done = 0  # rounds finished before this process started
    metrics_by_round: dict[int, dict[str, float]] = {}  # the coordinator's, round 0 included
    resumes: list[dict[str, Any]] = []
    if checkpoint is not None:
        _restore(checkpoint, strategy, initial, folder, cfg)
        done = checkpoint.round
        initial = checkpoint.global_state
        metrics_by_round = dict(checkpoint.coordinator_metrics)
        resumes = [*checkpoint.resumes, {"after-round": done, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}]
    head = head_name(peft_model) if labels else None
    recorder = RunRecorder(folder, lora.to_peft_config(resolve_model_path(cfg.model.name), head), {
        "base-model": identity.name, "base-sha256": identity.sha256, "strategy": cfg.strategy.name,
        "dtype": model_dtype(peft_model), "run-config": cfg.as_dict(),
    }, elapsed_before=checkpoint.elapsed_seconds if checkpoint is not None else 0.0,
        after_save=(lambda adapter: save_labels(adapter, labels)) if labels else None)
    adapter_bytes = adapter_nbytes(initial, cfg.transport.encoding)
    audit = CoordinatorAudit(folder, context.run_id, identity.name, identity.sha256, cfg, audit_key)
    if checkpoint is None:
        audit.initial(adapter_sha256(initial, cfg.transport.encoding))
    # Strategies see float32 either way; every message leaves with the audit trail's head.
    # (With strategy.secure-aggregation the strategy's own wrapper runs train rounds as SecAgg+.)
    grid = transport_grid(grid, cfg.transport.encoding, stamp=audit.stamp)
    reporter = RoundReporter(strategy, adapter_bytes, full_model_bytes, cfg.num_server_rounds, dp=cfg.dp_budget())
    if checkpoint is not None:
        recorder.keep_rounds_up_to(done)
        reporter.load_state_dict(checkpoint.communication)
    log.info("base model %s (sha256 %s), adapter %.2f MB vs full model %.1f MB (%.2f%%)",
             identity.name, identity.sha256[:12], adapter_bytes / 1e6, full_model_bytes / 1e6,
             100 * adapter_bytes / full_model_bytes)

    def after_round(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        state = from_arrayrecord(arrays)
        if server_round > 0:
            recorder.save_adapter(f"round-{server_round}", state, server_round)
        set_adapter_state(peft_model, state)
        start = time.perf_counter()
        metrics = f1_evaluator.evaluate(peft_model, f"coordinator round {server_round}").to_metrics()
        metrics["eval-seconds"] = time.perf_counter() - start
        metrics["eval-end-time"] = time.time()
        metrics_by_round[server_round] = metrics
        record = reporter.round_record(server_round, metrics)
        recorder.append_round(record)
        if server_round > 0:
            audit.round(record, adapter_sha256(state, cfg.transport.encoding))
        # Last: a run killed before this line redoes the round (metrics.jsonl is trimmed).
        save_checkpoint(folder, Checkpoint(
            round=server_round, global_state=state, strategy_state=strategy.state_dict(), run_config=cfg.as_dict(),
            coordinator_metrics=metrics_by_round, communication=reporter.state_dict(),
            elapsed_seconds=recorder.elapsed(), resumes=resumes, strategy_class=strategy.class_name(),
        ))
        return MetricRecord(metrics)

    config = ConfigRecord(protocol.base_config(identity, lora, cfg.num_server_rounds, label_types))
    if done < cfg.num_server_rounds:
        if checkpoint is not None:
            log.info("resuming %s after round %d: rounds %d..%d", folder, done, done + 1, cfg.num_server_rounds)
        try:
            strategy.start(
                grid=grid,
                initial_arrays=to_arrayrecord(initial),
                num_rounds=cfg.num_server_rounds,
                timeout=cfg.strategy.round_timeout,
                train_config=config,
                evaluate_config=ConfigRecord(dict(config)),
                evaluate_fn=after_round,
                first_round=done + 1,
            )
        except TooFewSites as err:
            _log_stopped(err, folder)
            audit.end()  # a stop, not a crash: the trail is complete up to here
            raise
    else:
        log.info("%s already finished all %d rounds; writing its final adapter and summary", folder, done)
    last = max(metrics_by_round)
    final = recorder.finish(last, {
        "rounds": last,
        "final-metrics": metrics_by_round[last],
        "zero-shot-metrics": metrics_by_round[0],
        "communication": reporter.totals(),
        **({"dp": reporter.dp_spent(last)} if reporter.dp is not None and last > 0 else {}),
        **({"resumed": resumes} if resumes else {}),
    })
    for site, site_state in strategy.personal_adapters(load_peft_folder(final)).items():
        log.info("site %s's own adapter: %s", site, recorder.save_adapter(f"final/sites/{safe_name(site)}", site_state, last))
    reporter.log_totals()
    audit.end()
    log.info("global adapter: %s (load it with peft.PeftModel.from_pretrained)", final)
    log.info("metrics per round: %s", recorder.metrics_path)


def run_label_types(cfg: RunConfig) -> tuple[str, ...]:
    """Token classification: the entity types of the head's labels, model.label-types or, when
    empty, the union of the data.sites folders' and the validation folder's (which a
    coordinator can read in simulation; in a deployment it declares them)."""
    declared = cfg.declared_label_types()
    if declared:
        return declared
    root = Path(cfg.data.root).expanduser() if cfg.data.root else ensure_demo_corpus()
    folders = [root / name for name in cfg.site_names()] + [_validation_folder(cfg)]
    missing = [str(f) for f in folders if not (f / "site.json").is_file()]
    if missing:
        raise ConfigError(f"model.label-types is empty, so the label set is the union of the entity types of the "
                          f"data.sites folders and the coordinator's validation folder, but {missing} hold no "
                          "site.json here; declare model.label-types (a deployment's coordinator does not hold "
                          "the sites' folders)")
    return union_entity_types(folders)


def _log_stopped(err: TooFewSites, folder: Path) -> None:
    """Say why the run stopped and how to continue it from its checkpoint."""
    last = existing_round(folder)
    log.error("run stopped: %s", err)
    log.error("the last finished round, %s, is checkpointed in %s; once enough sites can train again (or with "
              "a lower strategy.min-sites), continue it with the same run config plus resume = true and "
              "run-name = %r", last, checkpoint_path(folder), folder.name)


def _refuse_finished_rounds(folder: Path, cfg: RunConfig) -> None:
    """A new run (resume = false) does not write over a folder that holds another run's rounds."""
    done = existing_round(folder)
    if done is not None:
        finished = f"its checkpoint is after round {done}" if done >= 0 else "it has an unreadable checkpoint"
        raise ConfigError(
            f"run-name = {cfg.run_name!r}: {folder} already holds a run ({finished}); set resume = true "
            "to continue it, or choose another run-name (or output-dir)"
        )


def _restore(checkpoint: Checkpoint, strategy: StrategyWrapper, initial, folder: Path, cfg: RunConfig) -> None:
    """Check the saved adapter against this run's and load the strategy's state; ConfigError if not."""
    saved = {k: tuple(v.shape) for k, v in checkpoint.global_state.items()}
    ours = {k: tuple(v.shape) for k, v in initial.items()}
    if saved != ours:
        raise ConfigError(f"resume = true: the adapter in {checkpoint_path(folder)} has other keys or shapes "
                          "than this run's model and lora keys give")
    if checkpoint.strategy_class and checkpoint.strategy_class != strategy.class_name():
        log.warning("the checkpoint was written by strategy class %s, this run built %s",
                    checkpoint.strategy_class, strategy.class_name())
    try:
        strategy.load_state_dict(checkpoint.strategy_state)
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"resume = true: cannot restore the state of strategy.name = "
                          f"{cfg.strategy.name!r} from {checkpoint_path(folder)}: {err}") from err
    prev = checkpoint.run_config.get("num-server-rounds")
    if prev != cfg.num_server_rounds:
        log.warning("num-server-rounds changed from %s to %d: the sites' learning-rate schedule spans the "
                    "new total from round %d on", prev, cfg.num_server_rounds, checkpoint.round + 1)
