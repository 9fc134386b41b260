"""What a site keeps between messages in one process: the base model with its LoRA
adapter, and the site's tokenized data. In simulation one process serves many rounds
(and sites), so the model loads once; in a deployment the site's warm worker
(client_app/worker.py) keeps them, and without one each message gets a fresh process and
this is rebuilt. Nothing here may carry training state across rounds: every message loads
the adapter it is sent."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clinical_ie.evaluate import InstanceEvaluator, site_instances, stable_subset, training_pairs
from clinical_ie.prompt import PREFIX_END
from clinical_ie.tagging import bio_labels, check_label_types
from clinical_ie.token_classification import TaggerEvaluator, training_examples
from data_loaders.sites import SiteData, ensure_demo_corpus, load_site
from modeling.base import ModelIdentity, model_identity
from modeling.token_classification import TAGGING, load_for_task
from modeling.training import BatchStep, encode_all
from settings.config import ConfigError, RunConfig
from wire.protocol import BaseModelMismatch

from . import timings

log = logging.getLogger(__name__)


@dataclass
class ModelRuntime:
    model: Any  # PeftModel
    tokenizer: Any
    identity: ModelIdentity


class SiteDataError(ValueError):
    """A problem with a site's data whose message names only folders and counts."""


@dataclass
class SiteRuntime:
    site: SiteData
    train: list  # Encoded (generative) or Tagged (token classification) training examples
    validation: list  # Instances scored by `evaluator`
    eval_settings: tuple[int, int, int]  # max-length, max-new-tokens, batch-size
    constrained: bool  # eval.constrained
    tokenizer: Any
    labels: tuple[str, ...] = ()  # token classification: the head's BIO labels; () = generative
    _evaluator: InstanceEvaluator | TaggerEvaluator | None = None

    @property
    def step(self) -> BatchStep | None:
        """How `train_round` trains on `train` (None: the generative default)."""
        return TAGGING if self.labels else None

    @property
    def evaluator(self) -> InstanceEvaluator | TaggerEvaluator:
        """Built on first use: training needs none, and a site may have no validation split."""
        if self._evaluator is None:
            if not self.validation:
                raise SiteDataError(
                    f"{self.site.data_dir}: no validation instances (the validation split, 10% of "
                    "documents by a hash of their ids, is empty); add documents to evaluate"
                )
            max_length, max_new_tokens, batch_size = self.eval_settings
            if self.labels:
                self._evaluator = TaggerEvaluator(self.tokenizer, self.validation, self.labels, max_length,
                                                  batch_size, score_by=self.site.score_by)
            else:
                self._evaluator = InstanceEvaluator(self.tokenizer, self.validation, max_length, max_new_tokens,
                                                    batch_size, score_by=self.site.score_by,
                                                    constrained=self.constrained)
        return self._evaluator


_models: dict[tuple, ModelRuntime] = {}
_sites: dict[tuple, SiteRuntime] = {}


def _set_threads(threads: int) -> None:
    # Ray and Flower's subprocess isolation may leave torch with a single thread; sites sharing
    # one machine (a loopback deployment) are given their share by the node config's `threads`.
    torch.set_num_threads(threads if threads > 0 else max(1, len(os.sched_getaffinity(0))))


def model_runtime(cfg: RunConfig, threads: int = 0, label_types: tuple[str, ...] = ()) -> ModelRuntime:
    """The cached base model with its LoRA adapter; `threads` torch threads (0: every core).
    Token classification: the model with a head over the BIO labels of `label_types` (the
    coordinator's), trained and sent with the adapter."""
    _set_threads(threads)
    lora = cfg.lora_settings()
    key = (cfg.model.name, cfg.quantization, cfg.model.dtype, lora, cfg.seed, cfg.model.task, label_types)
    if key not in _models:
        started = time.perf_counter()
        _models.clear()  # one base model per process: memory is the scarce resource
        labels = bio_labels(label_types) if cfg.token_classification() else ()
        if cfg.token_classification() and not labels:
            raise ConfigError("model.task = 'token-classification' needs the label types the coordinator sends")
        peft_model, tokenizer = load_for_task(cfg.model.task, cfg.model.name, cfg.quantization, cfg.model.dtype,
                                              lora, cfg.seed, labels)
        _models[key] = ModelRuntime(peft_model, tokenizer, model_identity(cfg.model.name))
        timings.current().model_load += time.perf_counter() - started
    return _models[key]


def check_base_model(node_config: Mapping[str, Any], cfg: RunConfig) -> None:
    """A site that pins its base model (node config `base-model`, a name or a path) refuses a
    run whose model.name is another, before anything the run names is loaded: the run config
    is the coordinator's, and a checkpoint or Hub id it names would otherwise be read here."""
    pinned = node_config.get("base-model")
    if pinned is None:
        return
    named = str(cfg.model.name)
    if _model_key(str(pinned)) != _model_key(named):
        raise BaseModelMismatch(f"this site's node config pins base-model {str(pinned)!r}; the run names "
                                f"model.name {named!r}, refused before loading it")


def _model_key(name: str) -> str:
    """A path-like model name as an absolute path (two spellings of one folder are one model)."""
    return str(Path(name).expanduser().resolve()) if name.startswith((".", "/", "~")) else name


def site_dir(node_config: Mapping[str, Any], cfg: RunConfig) -> Path:
    """The site's data folder: `data-dir` in deployment, `partition-id` in simulation."""
    if "data-dir" in node_config:
        return Path(str(node_config["data-dir"])).expanduser().resolve()
    if "partition-id" not in node_config:
        raise ConfigError(
            "node config: expected 'data-dir' (deployment: --node-config \"data-dir='...'\") "
            "or 'partition-id' (simulation)"
        )
    names = cfg.site_names()
    pid = int(node_config["partition-id"])
    if pid >= len(names):
        raise ConfigError(
            f"data.sites: partition-id {pid} has no site; data.sites names {len(names)} "
            f"site(s) {names}: run with num-supernodes <= {len(names)} or add sites"
        )
    root = Path(cfg.data.root).expanduser() if cfg.data.root else ensure_demo_corpus()
    return (root / names[pid]).resolve()


def site_runtime(node_config: Mapping[str, Any], cfg: RunConfig, tokenizer,
                 label_types: tuple[str, ...] = ()) -> SiteRuntime:
    """The site's data, tokenized for the run's task (token classification: tagged over the
    BIO labels of `label_types`, which must hold every type the site annotates)."""
    folder = site_dir(node_config, cfg)
    name = node_config.get("site-name")
    key = (str(folder), name, cfg.data.tasks, cfg.data.re_mode, cfg.train.max_length, cfg.data.max_train_instances,
           cfg.eval.max_instances, cfg.eval.max_new_tokens, cfg.eval.batch_size, cfg.eval.constrained,
           cfg.model.task, label_types, id(tokenizer))
    if key not in _sites:
        started = time.perf_counter()
        site = load_site(folder, name=str(name) if name else None)
        labels = bio_labels(label_types) if cfg.token_classification() else ()
        if labels:
            check_label_types(site.name, site.entity_types, label_types)
        train_instances = site_instances(site, "train", cfg.tasks(), cfg.data.re_mode)
        if cfg.data.max_train_instances:
            train_instances = stable_subset(train_instances, cfg.data.max_train_instances)
        if labels:
            train, _ = training_examples(tokenizer, train_instances, labels, cfg.train.max_length)
        else:
            train, _ = encode_all(tokenizer, training_pairs(train_instances), cfg.train.max_length, PREFIX_END)
        if not train:
            raise SiteDataError(f"{folder}: no training instances (or none fits train.max-length="
                                f"{cfg.train.max_length})")
        val_instances = stable_subset(site_instances(site, "validation", cfg.tasks(), cfg.data.re_mode), cfg.eval.max_instances)
        log.info("site %s: %d training and %d validation instances (types: %s)",
                 site.name, len(train), len(val_instances), ", ".join(site.entity_types))
        _sites[key] = SiteRuntime(site, train, val_instances,
                                  (cfg.train.max_length, cfg.eval.max_new_tokens, cfg.eval.batch_size),
                                  cfg.eval.constrained, tokenizer, labels)
        timings.current().data_load += time.perf_counter() - started
    return _sites[key]
