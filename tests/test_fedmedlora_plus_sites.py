"""Fed-MedLoRA+ with `strategy.validation = "sites"`: the coordinator sends the round's
candidates to the sites, each returns one validation loss per candidate, and the weights are
softmax(-mean loss). The strategy runs against a fake Grid; the site handler runs with the
tiny random LLaMA on a small synthetic corpus."""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MessageType,
    Metadata,
    MetricRecord,
    RecordDict,
)

from server_app.report import RoundReporter
from server_app.strategy_factory import build_strategy
from settings.config import ConfigError, validate
from strategies import FedMedLoRAPlus, compose
from wire import protocol
from wire.arrays import arrayrecord_nbytes

SHAPES = {"a": (2, 2), "b": (2, 1)}
ADAPTER_BYTES = arrayrecord_nbytes(ArrayRecord({k: Array(np.zeros(s, np.float32)) for k, s in SHAPES.items()}))
ROUND_CONFIG = {"base-model": "tiny", "base-sha256": "0" * 64, "lora-r": 4, "num-server-rounds": 2}


def instruction(node_id: int, message_type: str, content: RecordDict | None = None) -> Message:
    """A message as a SuperNode receives it (with the SuperLink's metadata)."""
    metadata = Metadata(run_id=1, message_id=f"ins-{node_id}", src_node_id=0, dst_node_id=node_id,
                        reply_to_message_id="", group_id="1", created_at=time.time(), ttl=3600.0,
                        message_type=message_type)
    return Message(content=content if content is not None else RecordDict(), metadata=metadata)


def train_reply(node_id: int, value: float, num_examples: int) -> Message:
    content = RecordDict({
        "arrays": ArrayRecord({k: Array(np.full(s, value, np.float32)) for k, s in SHAPES.items()}),
        "metrics": MetricRecord({"num-examples": num_examples, "train-loss": 1.0}),
        "site": ConfigRecord({"name": f"h{node_id}"}),
    })
    return Message(content=content, reply_to=instruction(node_id, MessageType.TRAIN))


class ScoringGrid:
    """Three nodes. Scoring messages are answered from `answers[node]`: a list of losses,
    an `Error`, a RecordDict (sent as is) or None (no reply)."""

    def __init__(self, answers: dict[int, object]) -> None:
        self.answers = answers
        self.sent: list[Message] = []
        self.timeouts: list[float | None] = []

    def get_node_ids(self) -> list[int]:
        return [1, 2, 3]

    def send_and_receive(self, messages, timeout=None) -> list[Message]:
        messages = list(messages)
        self.sent += messages
        self.timeouts.append(timeout)
        out = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            ins = instruction(node, msg.metadata.message_type, msg.content)
            answer = self.answers.get(node)
            if answer is None:
                continue
            if isinstance(answer, Error):
                out.append(Message(answer, reply_to=ins))
                continue
            if not isinstance(answer, RecordDict):
                answer = RecordDict({
                    "metrics": MetricRecord({"candidate-loss": [float(v) for v in answer],
                                             "num-examples": 5, "num-tokens": 50}),
                    "site": ConfigRecord({"name": f"h{node}"}),
                })
            out.append(Message(content=answer, reply_to=ins))
        return out


@pytest.fixture
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supercore.task_identity import TaskIdentity

    # Instruction messages take their run from the ServerApp process's identity.
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 0)


def run_round(answers: dict[int, object], **kwargs) -> tuple[FedMedLoRAPlus, ScoringGrid, ArrayRecord | None]:
    strategy = compose(FedMedLoRAPlus(validation="sites", timeout=12.5, expected_shapes=SHAPES,
                              min_available_nodes=3, min_train_nodes=3, **kwargs))
    grid = ScoringGrid(answers)
    strategy.core.use_grid(strategy.wrap_grid(grid))  # what `start` hands the strategy
    initial = ArrayRecord({k: Array(np.zeros(s, np.float32)) for k, s in SHAPES.items()})
    train_messages = list(strategy.configure_train(1, initial, ConfigRecord(dict(ROUND_CONFIG)), grid))
    assert len(train_messages) == 3
    # Candidate values 1, 2, 4 (sites h1, h2, h3), 10, 20, 30 training examples.
    replies = [train_reply(1, 1.0, 10), train_reply(2, 2.0, 20), train_reply(3, 4.0, 30)]
    arrays, _ = strategy.aggregate_train(1, replies)
    return strategy, grid, arrays


def softmax_weights(mean_losses: list[float], temperature: float = 1.0) -> list[float]:
    raw = [math.exp((1 - loss) / temperature) for loss in mean_losses]
    return [r / sum(raw) for r in raw]


SCORES = {1: [0.5, 1.0, 2.0], 2: [0.9, 1.2, 1.0], 3: [0.4, 0.5, 3.5]}


def test_weights_are_softmax_of_the_sites_mean_losses(task_identity) -> None:
    strategy, grid, arrays = run_round(SCORES)
    means = [np.mean([SCORES[n][k] for n in (1, 2, 3)]) for k in range(3)]
    expected = softmax_weights(means)
    report = strategy.round_report()
    assert [u.site for u in report.updates] == ["h1", "h2", "h3"] and report.rejected == []
    assert [u.weight for u in report.updates] == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(arrays["a"].numpy(), np.full((2, 2), np.dot(expected, [1.0, 2.0, 4.0])), rtol=1e-6)

    # One scoring message per site: all K candidates and the round's config, the round timeout.
    assert sorted(m.metadata.dst_node_id for m in grid.sent) == [1, 2, 3]
    assert grid.timeouts == [12.5]
    for msg in grid.sent:
        assert msg.metadata.message_type == protocol.SCORE_MESSAGE_TYPE == "evaluate.score"
        candidates = protocol.candidate_records(msg.content)
        assert [float(r["a"].numpy().flat[0]) for r in candidates] == [1.0, 2.0, 4.0]
        config = msg.content[protocol.CONFIG]
        assert config["server-round"] == 1 and config["base-sha256"] == ROUND_CONFIG["base-sha256"]

    extra = report.extra
    assert extra["validation-mode"] == "sites"
    assert extra["validation-loss"] == pytest.approx({"h1": means[0], "h2": means[1], "h3": means[2]})
    assert extra["validation-weight"] == pytest.approx(dict(zip(["h1", "h2", "h3"], expected)))
    assert extra["site-scores"]["h2"]["candidate-loss"] == {"h1": 0.9, "h2": 1.2, "h3": 1.0}
    assert extra["site-scores"]["h3"]["num-examples"] == 5 and extra["site-scores"]["h3"]["num-tokens"] == 50
    assert extra["scoring-ignored"] == {}
    # K candidates down to every site; K losses and two counts (8 bytes each) up.
    assert extra["extra-traffic"] == {f"h{n}": {"bytes-down": 3 * ADAPTER_BYTES, "bytes-up": 8 * 5} for n in (1, 2, 3)}


def test_temperature_and_size_weighting_apply_to_the_site_means(task_identity) -> None:
    strategy, _, _ = run_round(SCORES, temperature=2.0, size_weighted=True)
    means = [np.mean([SCORES[n][k] for n in (1, 2, 3)]) for k in range(3)]
    raw = [math.exp((1 - loss) / 2.0) * n for loss, n in zip(means, [10, 20, 30])]
    assert [u.weight for u in strategy.round_report().updates] == pytest.approx([r / sum(raw) for r in raw])


BAD_ANSWERS = {
    "wrong count": ([1.0, 1.0], "expected 3 losses in 'candidate-loss', got 2"),
    "nan": ([0.1, float("nan"), 0.1], "losses must be finite numbers >= 0"),
    "negative": ([0.1, -1.0, 0.1], "losses must be finite numbers >= 0"),
    "no losses": (RecordDict({"metrics": MetricRecord({"val-loss": 1.0})}), "expected one MetricRecord with"),
    "error": (Error(code=7, reason="SiteDataError: /data/site-c: no validation instances"), "error reply (code 7)"),
    "missing": (None, "no reply within 12.5 s"),
}


@pytest.mark.parametrize("case", list(BAD_ANSWERS))
def test_a_site_with_bad_or_no_losses_is_left_out(case: str, task_identity, caplog: pytest.LogCaptureFixture) -> None:
    bad, reason = BAD_ANSWERS[case]
    with caplog.at_level(logging.WARNING, logger="flwr"):
        strategy, _, arrays = run_round({1: SCORES[1], 2: SCORES[2], 3: bad})
    means = [np.mean([SCORES[n][k] for n in (1, 2)]) for k in range(3)]
    report = strategy.round_report()
    assert arrays is not None and report.rejected == []
    assert [u.weight for u in report.updates] == pytest.approx(softmax_weights(means), rel=1e-12)
    assert sorted(report.extra["site-scores"]) == ["h1", "h2"]
    assert list(report.extra["scoring-ignored"]) == ["h3"] and reason in report.extra["scoring-ignored"]["h3"]
    assert "site h3" in caplog.text  # the warning names the site
    # The candidates went down to h3 either way; only a content reply counts bytes up.
    assert report.extra["extra-traffic"]["h3"]["bytes-down"] == 3 * ADAPTER_BYTES
    assert (report.extra["extra-traffic"]["h3"]["bytes-up"] == 0) == (case in ("error", "missing"))


def test_no_usable_losses_rejects_every_candidate(task_identity, caplog: pytest.LogCaptureFixture) -> None:
    answers = {1: [1.0], 2: Error(code=3, reason="boom"), 3: None}
    with caplog.at_level(logging.WARNING, logger="flwr"):
        strategy, _, arrays = run_round(answers)
    report = strategy.round_report()
    assert arrays is None and report.updates == []
    assert [site for site, _ in report.rejected] == ["h1", "h2", "h3"]
    assert all("no site returned usable validation losses" in reason for _, reason in report.rejected)
    assert "the global adapter is unchanged" in caplog.text
    assert sorted(report.extra["scoring-ignored"]) == ["h1", "h2", "h3"]


def test_scoring_needs_the_grid_and_configure_train_first() -> None:
    strategy = compose(FedMedLoRAPlus(validation="sites", expected_shapes=SHAPES))
    with pytest.raises(RuntimeError, match=r"the run's Grid \(handed over by start.*configure_train"):
        strategy.aggregate_train(1, [train_reply(1, 1.0, 10)])


def test_run_config_selects_the_mode() -> None:
    cfg = validate({"strategy.name": "fedmedlora-plus", "strategy.validation": "sites",
                    "strategy.round-timeout": 90.0})
    strategy = build_strategy(cfg, SHAPES, None).core  # no coordinator validation loss needed
    assert isinstance(strategy, FedMedLoRAPlus)
    assert (strategy.validation, strategy.timeout, strategy.score_fn) == ("sites", 90.0, None)
    coordinator = validate({"strategy.name": "fedmedlora-plus"})
    assert coordinator.strategy.validation == "coordinator"
    assert build_strategy(coordinator, SHAPES, lambda s: 1.0).core.validation == "coordinator"
    with pytest.raises(ConfigError, match="validation loss"):
        build_strategy(coordinator, SHAPES, None)
    with pytest.raises(ConfigError, match=r"strategy.validation.*'peers'.*'coordinator', 'sites'"):
        validate({"strategy.validation": "peers"})
    with pytest.raises(ValueError, match="strategy.validation"):
        FedMedLoRAPlus(validation="peers", expected_shapes=SHAPES)


def test_round_report_and_totals_count_the_scoring_traffic(task_identity) -> None:
    strategy, _, _ = run_round({1: SCORES[1], 2: SCORES[2], 3: [1.0]})  # h3's scores ignored
    strategy.last_evaluate_report = []
    reporter = RoundReporter(strategy, ADAPTER_BYTES, 1000 * ADAPTER_BYTES, num_rounds=2)
    record = reporter.round_record(1, {"val-loss": 1.0, "strict-f1": 0.0, "lenient-f1": 0.0})
    rows = {row["site"]: row for row in record["sites"]}
    assert rows["h1"]["bytes-down"] == ADAPTER_BYTES + 3 * ADAPTER_BYTES  # train message + candidates
    assert rows["h1"]["bytes-up"] == ADAPTER_BYTES + 40 and rows["h1"]["extra-bytes-up"] == 40
    assert rows["h3"]["extra-bytes-up"] == 8 * 3  # [1.0] plus the two counts
    assert record["strategy"]["validation-mode"] == "sites"
    totals = reporter.totals()
    assert totals["extra-bytes-down-total"] == 3 * 3 * ADAPTER_BYTES
    assert totals["bytes-down-total"] == 3 * ADAPTER_BYTES + 9 * ADAPTER_BYTES
    assert totals["bytes-up-total"] == 3 * ADAPTER_BYTES + 40 + 40 + 24


# --- the site's handler, with the tiny model ------------------------------------------


@pytest.fixture(scope="module")
def site_corpus(tmp_path_factory):
    from data_loaders.synthetic import generate_corpus

    root = tmp_path_factory.mktemp("corpus")
    generate_corpus(root, seed=3, docs_per_site=24, coordinator_docs=4)
    return root


def test_site_scores_every_candidate_with_the_evaluators_loss(tiny_llama, site_corpus) -> None:
    from client_app.app import SiteFailure, app
    from client_app.runtime import model_runtime, site_runtime
    from modeling.adapter_io import get_adapter_state, set_adapter_state
    from wire.arrays import from_arrayrecord, to_arrayrecord
    from wire.transport import decode_content

    cfg = validate({"model.name": str(tiny_llama), "lora.r": 4, "lora.alpha": 8, "train.max-steps": 2,
                    "train.batch-size": 2, "eval.max-instances": 3, "data.root": str(site_corpus)})
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 0}, state=RecordDict(), run_config=cfg.as_dict())
    runtime = model_runtime(cfg)
    config = ConfigRecord({**protocol.base_config(runtime.identity, cfg.lora_settings(), 2), "server-round": 1})
    initial = get_adapter_state(runtime.model)

    # What this site trains in round 1 (the train handler, routed by message type "train").
    trained_msg = app(instruction(1, MessageType.TRAIN, RecordDict({
        protocol.ARRAYS: to_arrayrecord(initial), protocol.CONFIG: ConfigRecord(dict(config))})), context)
    trained = decode_content(trained_msg.content)[protocol.ARRAYS]  # the reply leaves the ClientApp packed
    rng = np.random.default_rng(0)
    noisy = {k: v + rng.normal(0, 0.05, v.shape).astype(np.float32) for k, v in initial.items()}

    content = RecordDict({protocol.CONFIG: ConfigRecord(dict(config))})
    for k, state in enumerate([to_arrayrecord(initial), trained, to_arrayrecord(noisy)]):
        content[protocol.candidate_name(k)] = state
    reply = app(instruction(1, protocol.SCORE_MESSAGE_TYPE, content), context)  # routed to `score`
    assert reply.has_content() and not reply.content.array_records  # no adapter goes back
    metrics = reply.content[protocol.METRICS]
    losses = metrics[protocol.SCORE_LOSSES]
    assert len(losses) == 3 and all(math.isfinite(v) and v > 0 for v in losses)
    assert reply.content[protocol.SITE]["name"] == "site-a"

    site = site_runtime(context.node_config, cfg, runtime.tokenizer)
    assert metrics[protocol.SCORE_INSTANCES] == len(site.evaluator.encoded) > 0
    assert metrics[protocol.SCORE_TOKENS] == sum(e.answer_len for e in site.evaluator.encoded)
    for k, state in enumerate([initial, from_arrayrecord(trained), noisy]):
        set_adapter_state(runtime.model, state)
        assert losses[k] == pytest.approx(site.evaluator.loss(runtime.model), rel=1e-5)
    assert len(set(losses)) == 3

    # Errors carry what failed, no note text: no candidates, another base model.
    with pytest.raises(SiteFailure, match="MalformedMessage: scoring message"):
        app(instruction(1, protocol.SCORE_MESSAGE_TYPE, RecordDict({protocol.CONFIG: ConfigRecord(dict(config))})),
            context)
    other = RecordDict({protocol.CONFIG: ConfigRecord({**dict(config), "base-sha256": "f" * 64}),
                        protocol.candidate_name(0): to_arrayrecord(initial)})
    with pytest.raises(SiteFailure, match="BaseModelMismatch"):
        app(instruction(1, protocol.SCORE_MESSAGE_TYPE, other), context)
