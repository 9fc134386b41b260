"""The ClientApp's handlers: one hospital's local LoRA training and validation
(registered on the ClientApp in client_app/app.py, which imports this module on first use).

Only adapter arrays, scalar metrics and the site's name leave the site. Errors sent to
the coordinator say what kind of thing failed and give a site error id, never a path, a
document id or note text; the full detail stays in this site's log under that id.
"""

from __future__ import annotations

import functools
import logging
import time
import traceback

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from clinical_ie.tagging import LabelSetError
from data_loaders.brat import AnnotationError
from data_loaders.sites import SiteFolderError
from modeling.adapter_io import get_adapter_state, set_adapter_state
from modeling.base import model_dtype
from modeling.training import train_round
from settings.config import ConfigError, validate
from settings.logs import setup_logging
from wire import protocol
from wire.arrays import from_arrayrecord, to_arrayrecord

from . import optimizer_state, timings
from .factors import trained_factors
from .failures import SiteFailure, failure_reason
from .runtime import SiteDataError, check_base_model, model_runtime, site_runtime

log = logging.getLogger(__name__)

# Errors about what the coordinator sent (its run config, its message, its base model) name
# only keys and values it sent: they go back in full. Our errors about the site's own data
# and files name paths, lines and document ids: they go back as a category.
# A site's types missing from the coordinator's label set (token classification) names only
# the site and entity types: it goes back in full too.
_ABOUT_THE_COORDINATOR = (ConfigError, protocol.BaseModelMismatch, protocol.MalformedMessage, LabelSetError)
_SITE_DATA = (AnnotationError, SiteDataError, SiteFolderError)


def _category(err: Exception) -> str:
    """What the coordinator is told failed (client_app/failures.py, `failure_reason`)."""
    if isinstance(err, _ABOUT_THE_COORDINATOR):
        return f"{type(err).__name__}: {err}"
    if isinstance(err, _SITE_DATA):
        return f"malformed site data: {type(err).__name__}"
    if isinstance(err, OSError):  # an unreadable file, a folder where a file belongs
        return f"unreadable site file: {type(err).__name__}"
    frame = traceback.extract_tb(err.__traceback__)[-1]  # a line of code, not of data
    return f"{type(err).__name__} at {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}"


def _report_safely(handler):
    @functools.wraps(handler)
    def wrapper(msg: Message, context: Context) -> Message:
        try:
            return handler(msg, context)
        except Exception as err:  # noqa: BLE001 - every failure becomes a safe report
            detail = f"{handler.__name__} failed:\n{traceback.format_exc()}"
            raise SiteFailure(failure_reason(_category(err), detail)) from None

    return wrapper


def _setup(msg: Message, context: Context):
    """Config, cached model and site data; refuses a coordinator with another base model
    (first the site's pinned `base-model`, before loading; then the weights' hash)."""
    setup_logging()
    cfg = validate(context.run_config)
    check_base_model(context.node_config, cfg)
    config = msg.content[protocol.CONFIG]
    # Token classification: the head's labels are the coordinator's, carried by every message.
    label_types = protocol.label_types(config) if cfg.token_classification() else ()
    runtime = model_runtime(cfg, threads=int(context.node_config.get("threads", 0)), label_types=label_types)
    protocol.check_base(config, runtime.identity, cfg.lora_settings())
    site = site_runtime(context.node_config, cfg, runtime.tokenizer, label_types)
    return cfg, runtime, site, config


def _prepare(msg: Message, context: Context):
    """`_setup`, then the message's adapter loaded into the cached model."""
    cfg, runtime, site, config = _setup(msg, context)
    set_adapter_state(runtime.model, from_arrayrecord(msg.content[protocol.ARRAYS]))
    return cfg, runtime, site, config


@_report_safely
def train(msg: Message, context: Context) -> Message:
    cfg, runtime, site, config = _prepare(msg, context)
    server_round = int(config["server-round"])
    settings = cfg.train_settings()
    train_factors, send_factors = protocol.factor_rule(config)
    with trained_factors(runtime.model, train_factors) as frozen:
        result = train_round(
            runtime.model,
            site.train,
            settings,
            runtime.tokenizer.pad_token_id,
            server_round=server_round,
            num_rounds=int(config["num-server-rounds"]),
            proximal_mu=float(config.get("proximal-mu", 0.0)),
            description=f"{site.site.name} round {server_round}",
            optimizer_state=optimizer_state.load(context, server_round) if settings.keep_optimizer_state else None,
            step=site.step,
        )
    optimizer_state.save(context, result.optimizer_state, server_round)
    log.info("site %s round %d: %d steps, loss %.4f, %.0f tokens/s",
             site.site.name, server_round, result.steps, result.loss, result.tokens_per_second)
    metrics = MetricRecord({
        "num-examples": len(site.train),
        "train-loss": result.loss,
        "train-tokens": result.tokens,
        "train-seconds": result.seconds,
        "train-steps": result.steps,
        "optimizer-restored": int(result.optimizer_restored),
        # the factors the round's rule froze (FFA-LoRA: A) left the round bit-identical
        "frozen-parameters": sum(p.numel() for p in frozen.params),
        "frozen-unchanged": int(frozen.unchanged()),
        "train-end-time": time.time(),  # unix seconds: lets a benchmark tell concurrent sites' work apart from waiting
        **timings.current().to_metrics(),
    })
    arrays: ArrayRecord = to_arrayrecord(protocol.selected_factors(get_adapter_state(runtime.model), send_factors))
    content = RecordDict({
        protocol.ARRAYS: arrays,
        protocol.METRICS: metrics,
        # what the coordinator's audit trail records at join (docs/threat-model.md)
        protocol.SITE: ConfigRecord({"name": site.site.name, **protocol.site_report(runtime.identity, model_dtype(runtime.model))}),
    })
    return Message(content=content, reply_to=msg)  # transport_mod (client_app/app.py) packs and encodes it


@_report_safely
def evaluate(msg: Message, context: Context) -> Message:
    _, runtime, site, config = _prepare(msg, context)
    start = time.perf_counter()
    evaluation = site.evaluator.evaluate(runtime.model, f"{site.site.name} validation")
    metrics = {**evaluation.to_metrics(), "eval-seconds": time.perf_counter() - start, "eval-end-time": time.time(),
               **timings.current().to_metrics()}
    log.info("site %s round %s: val-loss %.4f strict-f1 %.3f lenient-f1 %.3f", site.site.name,
             config.get("server-round"), metrics["val-loss"], metrics["strict-f1"], metrics["lenient-f1"])
    content = RecordDict({
        protocol.METRICS: MetricRecord(metrics),
        protocol.SITE: ConfigRecord({"name": site.site.name}),
    })
    return Message(content=content, reply_to=msg)


@_report_safely
def score(msg: Message, context: Context) -> Message:
    """The validation loss of each of the round's K candidate adapters on this site's data.

    The loss is the one the coordinator computes in its own mode (mean cross-entropy per
    answer token, `InstanceEvaluator.loss`), on the validation instances this site's
    evaluate handler scores (`eval.max-instances` caps them). The cached model's adapter is
    left at the last candidate: train and evaluate always load the adapter they are sent.
    """
    _, runtime, site, config = _setup(msg, context)
    candidates = protocol.candidate_records(msg.content)
    evaluator = site.evaluator  # raises SiteDataError, naming the folder, if it has no validation split
    losses = []
    for k, record in enumerate(candidates):
        set_adapter_state(runtime.model, from_arrayrecord(record))
        losses.append(float(evaluator.loss(runtime.model)))
        log.info("site %s round %s: candidate %d of %d, val-loss %.4f", site.site.name,
                 config.get("server-round"), k + 1, len(candidates), losses[-1])
    content = RecordDict({
        protocol.METRICS: MetricRecord({
            protocol.SCORE_LOSSES: losses,
            protocol.SCORE_INSTANCES: len(evaluator.encoded),
            protocol.SCORE_TOKENS: sum(e.answer_len for e in evaluator.encoded),
            **timings.current().to_metrics(),
        }),
        protocol.SITE: ConfigRecord({"name": site.site.name}),
    })
    return Message(content=content, reply_to=msg)
