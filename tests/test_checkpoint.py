"""Checkpoints and `resume`: the file round trip, each strategy's state between rounds
(a strategy restored after round 1 gives the same round 2 as one never stopped), Flower's
loop continued at a later round, the config errors, and the ServerApp itself killed after
round 2 and continued (in process, on a fake Grid; tests/test_simulation.py does it with
`flwr run`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from server_app.checkpoint import (
    CHECKPOINT_NAME,
    Checkpoint,
    CheckpointError,
    decode,
    encode,
    existing_round,
    load_checkpoint,
    resume_checkpoint,
    save_checkpoint,
)
from server_app.strategy_factory import build_strategy
from settings.config import ConfigError, RunConfig, validate
from strategies.exact import ExactLoRA
from support.messages import instruction, reply
from support.strategy_harness import (
    GLOBAL,
    SHAPES,
    FakeGrid,
    run_config,
    server_identity,  # noqa: F401 - autouse fixture: lets configure_train build messages
    to_record,
    validation_loss,
)
from wire.arrays import from_arrayrecord

# --- the file ------------------------------------------------------------------------


def _checkpoint(round_: int = 2, cfg: RunConfig | None = None, **state) -> Checkpoint:
    return Checkpoint(
        round=round_,
        global_state={k: v.copy() for k, v in GLOBAL.items()},
        strategy_state=state,
        run_config=(cfg if cfg is not None else validate({"run-name": "r"})).as_dict(),
        coordinator_metrics={0: {"strict-f1": 0.1}, 1: {"strict-f1": 0.2}, 2: {"strict-f1": 0.3}},
        communication={"bytes-up": 10, "bytes-down": 20, "extra-bytes-up": 0, "extra-bytes-down": 0,
                       "site-rounds": 6},
        elapsed_seconds=12.5,
        strategy_class="FedMedLoRA",
    )


def test_encode_decode_round_trip_keeps_arrays_bit_exact() -> None:
    record = ArrayRecord({"x": Array(np.arange(6, dtype=np.float32).reshape(2, 3)), "y": Array(np.ones(2))})
    value = {
        "m_t": {"a": np.float32([1.5, -2.0]), "b": np.zeros((2, 2), np.float64)},
        "momentum": [np.int64([3]), np.float16([0.5])],
        "current": record,
        "norm": np.float64(0.25),
        "count": np.int32(4),
        "flag": np.bool_(True),
        "none": None,
        "pair": (1, "two"),
    }
    arrays: dict[str, np.ndarray] = {}
    encoded = encode(value, arrays)
    back = decode(json.loads(json.dumps(encoded)), arrays)
    assert back["m_t"]["a"].dtype == np.float32 and np.array_equal(back["m_t"]["a"], value["m_t"]["a"])
    assert back["momentum"][1].dtype == np.float16
    assert isinstance(back["current"], ArrayRecord) and list(back["current"].keys()) == ["x", "y"]
    assert np.array_equal(back["current"]["x"].numpy(), record["x"].numpy())
    assert (back["norm"], back["count"], back["flag"], back["none"], back["pair"]) == (0.25, 4, True, None, [1, "two"])


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"a": np.array([object()])}, r"state\.a: cannot checkpoint an array of Python objects"),
        ({"a": {1: 2}}, r"state\.a: dict keys must be strings"),
        ({"__array__": 1}, "dict keys must be strings not starting with '__'"),
        ({"a": [object()]}, r"state\.a\[0\]: cannot checkpoint a object"),
    ],
)
def test_encode_names_what_it_cannot_store(value, message) -> None:
    with pytest.raises(TypeError, match=message):
        encode(value, {})


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    saved = _checkpoint(moments={"k": np.full((2, 6), 0.5, np.float32)})
    path = save_checkpoint(tmp_path, saved)
    assert path == tmp_path / CHECKPOINT_NAME and [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_NAME]
    loaded = load_checkpoint(path)
    assert loaded.round == 2 and list(loaded.global_state) == list(GLOBAL)
    assert all(np.array_equal(loaded.global_state[k], GLOBAL[k]) for k in GLOBAL)
    assert loaded.global_state[next(iter(GLOBAL))].dtype == np.float32
    assert np.array_equal(loaded.strategy_state["moments"]["k"], saved.strategy_state["moments"]["k"])
    assert loaded.coordinator_metrics == saved.coordinator_metrics  # int round keys again
    assert (loaded.communication, loaded.elapsed_seconds, loaded.run_config) == (
        saved.communication, 12.5, saved.run_config)
    assert existing_round(tmp_path) == 2 and existing_round(tmp_path / "nowhere") is None

    # Replaced atomically: the next save leaves one file, with the new round.
    save_checkpoint(tmp_path, _checkpoint(3))
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_NAME] and existing_round(tmp_path) == 3


def test_a_truncated_checkpoint_is_refused_by_name(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, _checkpoint())
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=f"{CHECKPOINT_NAME}: not a readable checkpoint"):
        load_checkpoint(path)
    with pytest.raises(ConfigError, match="resume = true: .*not a readable checkpoint"):
        resume_checkpoint(tmp_path, validate({"run-name": "r", "resume": True}))


# --- the resume key --------------------------------------------------------------------


def test_resume_needs_a_run_name() -> None:
    with pytest.raises(ConfigError, match="resume = true needs run-name"):
        validate({"resume": True})
    with pytest.raises(ConfigError, match="resume: expected true or false"):
        validate({"resume": "yes", "run-name": "r"})


def test_resume_refuses_a_missing_folder_or_checkpoint(tmp_path: Path) -> None:
    cfg = validate({"run-name": "r", "resume": True, "output-dir": str(tmp_path)})
    with pytest.raises(ConfigError, match=r"resume = true: there is no run folder .*run-name = 'r'"):
        resume_checkpoint(tmp_path / "r", cfg)
    (tmp_path / "r").mkdir()
    with pytest.raises(ConfigError, match=f"resume = true: .* has no {CHECKPOINT_NAME}"):
        resume_checkpoint(tmp_path / "r", cfg)


@pytest.mark.parametrize(
    ("changed", "allowed"),
    [
        ({"lora.r": 8}, False),
        ({"model.name": "/elsewhere"}, False),
        ({"quantization": "8bit"}, False),
        ({"strategy.name": "fedadam"}, False),
        ({"strategy.server-learning-rate": 0.1}, False),
        ({"data.server-validation": "/other"}, False),
        ({"num-server-rounds": 5}, True),  # extends the run
        ({"train.learning-rate": 1e-4, "eval.max-instances": 4}, True),
        ({"strategy.round-timeout": 60.0, "strategy.min-sites": 2}, True),
        ({"output-dir": "elsewhere"}, True),  # (the folder is found through it)
    ],
)
def test_resume_compares_the_keys_that_matter(tmp_path: Path, changed: dict, allowed: bool) -> None:
    save_checkpoint(tmp_path, _checkpoint(cfg=validate({"run-name": "r"})))
    cfg = validate({"run-name": "r", "resume": True, **changed})
    if allowed:
        assert resume_checkpoint(tmp_path, cfg).round == 2
    else:
        key = next(iter(changed))
        with pytest.raises(ConfigError, match=rf"resume = true: the run config differs .* in {key}: the checkpoint "
                                              "has .*, this run has"):
            resume_checkpoint(tmp_path, cfg)


def test_resume_refuses_fewer_rounds_than_done(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _checkpoint(round_=3, cfg=validate({"run-name": "r"})))
    with pytest.raises(ConfigError, match="num-server-rounds = 2: .* already finished 3 rounds"):
        resume_checkpoint(tmp_path, validate({"run-name": "r", "resume": True, "num-server-rounds": 2}))


# --- each strategy's state between rounds ------------------------------------------------

STATEFUL = {
    "fedadam": {"strategy.name": "fedadam"},
    "fedyogi": {"strategy.name": "fedyogi"},
    "fedavgm": {"strategy.name": "fedavgm", "strategy.server-momentum": 0.9},
    "dp=server-adaptive": {"strategy.name": "fedmedlora", "strategy.dp": "server-adaptive",
                           "strategy.dp-noise-multiplier": 0.1, "strategy.dp-num-sampled-sites": 4},
}
STATELESS = {
    "fedmedlora": {"strategy.name": "fedmedlora"},
    "fedmedlora-plus": {"strategy.name": "fedmedlora-plus"},
    "exact": {"strategy.name": "exact"},
    "fedprox": {"strategy.name": "fedprox", "strategy.proximal-mu": 0.1},
    "krum": {"strategy.name": "krum"},
}


def _near(state: dict[str, np.ndarray], seed: int) -> list[dict[str, np.ndarray]]:
    """Four site updates around `state`, as after some local training."""
    rng = np.random.default_rng(seed)
    return [{k: (v + 0.02 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in state.items()}
            for _ in range(4)]


def _replies(states: list[dict[str, np.ndarray]]) -> list[Message]:
    return [reply(i + 1, s, 10 * (i + 1), f"h{i + 1}", {"train-loss": 1.0 + 0.25 * i}) for i, s in enumerate(states)]


def _round(strategy, server_round: int, arrays: ArrayRecord) -> ArrayRecord:
    """configure_train + aggregate_train of one round, with seeded DP noise."""
    list(strategy.configure_train(server_round, arrays, ConfigRecord(), FakeGrid()))
    np.random.seed(server_round)
    out, _ = strategy.aggregate_train(server_round, _replies(_near(from_arrayrecord(arrays), server_round)))
    assert out is not None
    return out


def _round_two(overrides: dict, tmp_path: Path | None, restore: bool = True) -> dict[str, np.ndarray]:
    """Round 2's adapter: uninterrupted (tmp_path None) or after a checkpoint after round 1."""
    cfg = run_config(overrides["strategy.name"], **overrides)
    strategy = build_strategy(cfg, SHAPES, validation_loss)
    arrays = _round(strategy, 1, to_record(GLOBAL))
    if tmp_path is not None:
        save_checkpoint(tmp_path, Checkpoint(
            round=1, global_state=from_arrayrecord(arrays), strategy_state=strategy.state_dict(), run_config=cfg.as_dict(),
            coordinator_metrics={}, communication={}, elapsed_seconds=0.0))
        checkpoint = load_checkpoint(tmp_path / CHECKPOINT_NAME)
        strategy = build_strategy(cfg, SHAPES, validation_loss)  # a fresh process
        if restore:
            strategy.load_state_dict(checkpoint.strategy_state)
        arrays = to_record(checkpoint.global_state)
    out = _round(strategy, 2, arrays)
    return {k: out[k].numpy() for k in out.keys()}


@pytest.mark.parametrize("overrides", [*STATEFUL.values(), *STATELESS.values()], ids=[*STATEFUL, *STATELESS])
def test_a_restored_strategy_gives_the_same_next_round(overrides: dict, tmp_path: Path) -> None:
    uninterrupted = _round_two(overrides, None)
    resumed = _round_two(overrides, tmp_path)
    assert list(resumed) == list(uninterrupted)
    for key in uninterrupted:
        np.testing.assert_array_equal(resumed[key], uninterrupted[key])


@pytest.mark.parametrize("overrides", STATEFUL.values(), ids=list(STATEFUL))
def test_without_its_state_the_next_round_differs(overrides: dict, tmp_path: Path) -> None:
    """The check above is not vacuous: these strategies do carry state between rounds."""
    uninterrupted = _round_two(overrides, None)
    fresh = _round_two(overrides, tmp_path, restore=False)
    assert any(not np.array_equal(fresh[k], uninterrupted[k]) for k in uninterrupted)


def test_fedadam_state_holds_flowers_moments() -> None:
    strategy = build_strategy(run_config("fedadam"), SHAPES, validation_loss)
    _round(strategy, 1, to_record(GLOBAL))
    state = strategy.state_dict()  # ScreenedStrategy: the attributes of Flower's FedAdam
    assert set(state) == {"current_arrays", "m_t", "v_t"}
    assert all(np.array_equal(state["m_t"][k], strategy.core.m_t[k]) for k in SHAPES)


def test_a_stateless_strategy_refuses_foreign_state() -> None:
    strategy = build_strategy(run_config("fedmedlora"), SHAPES, validation_loss)
    with pytest.raises(ValueError, match="FedMedLoRA keeps no state between rounds"):
        strategy.load_state_dict({"m_t": {}})


# --- exact: each site's own rank survives a restart -----------------------------------

Q = "base_model.model.model.layers.0.self_attn.q_proj"
A_KEY, B_KEY = f"{Q}.lora_A.weight", f"{Q}.lora_B.weight"
EXACT_SHAPES = {A_KEY: (3, 10), B_KEY: (12, 3)}


def test_exact_site_ranks_survive_a_checkpoint(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    ranks = (2, 3, 5)  # node 2 has the global rank
    states = [{A_KEY: rng.standard_normal((r, 10)).astype(np.float32),
               B_KEY: rng.standard_normal((12, r)).astype(np.float32)} for r in ranks]
    replies = [reply(i + 1, s, 10, f"h{i + 1}", {"train-loss": 1.0, "lora-alpha": 6.0}) for i, s in enumerate(states)]
    strategy = ExactLoRA(alpha=6.0, expected_shapes=EXACT_SHAPES, min_available_nodes=3)
    arrays, _ = strategy.aggregate_train(1, replies)
    grid = SimpleNamespace(get_node_ids=lambda: [1, 2, 3])
    expected = {m.metadata.dst_node_id: next(iter(m.content.array_records.values()))
                for m in strategy.configure_train(2, arrays, ConfigRecord(), grid)}

    save_checkpoint(tmp_path, Checkpoint(round=1, global_state=from_arrayrecord(arrays),
                                         strategy_state=strategy.state_dict(), run_config={},
                                         coordinator_metrics={}, communication={}, elapsed_seconds=0.0))
    checkpoint = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    restored = ExactLoRA(alpha=6.0, expected_shapes=EXACT_SHAPES, min_available_nodes=3)
    restored.load_state_dict(checkpoint.strategy_state)
    sent = {m.metadata.dst_node_id: next(iter(m.content.array_records.values()))
            for m in restored.configure_train(2, to_record(checkpoint.global_state), ConfigRecord(), grid)}
    for node, rank in zip((1, 2, 3), ranks, strict=True):
        assert sent[node][A_KEY].numpy().shape == (rank, 10)
        for key in (A_KEY, B_KEY):
            np.testing.assert_array_equal(sent[node][key].numpy(), expected[node][key].numpy())

    # Another adapter than the one the factors belong to: every site gets it as it is.
    other = ExactLoRA(alpha=6.0, expected_shapes=EXACT_SHAPES, min_available_nodes=3)
    other.load_state_dict(checkpoint.strategy_state)
    changed = to_record({k: v + 1e-3 for k, v in checkpoint.global_state.items()})
    assert all(next(iter(m.content.array_records.values())) is changed
               for m in other.configure_train(2, changed, ConfigRecord(), grid))


# --- Flower's loop continued at a later round -----------------------------------------


class RoundGrid:
    """Four sites; a train reply is the global adapter moved by an amount that depends on
    the node and on the `server-round` it was sent (so a wrong round gives another result)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int]] = []

    def get_node_ids(self) -> list[int]:
        return [1, 2, 3, 4]

    def send_and_receive(self, messages, timeout=None) -> list[Message]:
        out = []
        for msg in messages:
            node, kind = msg.metadata.dst_node_id, msg.metadata.message_type
            server_round = int(msg.content["config"]["server-round"])
            self.sent.append((kind, server_round))
            if kind == MessageType.TRAIN:
                state = {k: v.numpy() + np.float32(1e-3 * node * server_round) * np.sign(v.numpy())
                         for k, v in msg.content["arrays"].items()}
                out.append(Message(content=reply(node, state, 10 * node, f"h{node}").content,
                                   reply_to=instruction(node, kind)))
            else:
                metrics = MetricRecord({"num-examples": 1, "val-loss": float(node)})
                out.append(Message(content=RecordDict({"metrics": metrics}), reply_to=instruction(node, kind)))
        return out


def test_start_continues_at_a_later_round_with_the_runs_round_numbers(tmp_path: Path) -> None:
    cfg = run_config("fedadam")
    evaluated: list[int] = []

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        evaluated.append(server_round)
        return MetricRecord({"round": float(server_round)})

    full_grid = RoundGrid()
    full = build_strategy(cfg, SHAPES, validation_loss).start(full_grid, to_record(GLOBAL), num_rounds=3,
                                                               evaluate_fn=evaluate_fn)
    assert evaluated == [0, 1, 2, 3]
    assert [r for kind, r in full_grid.sent if kind == MessageType.TRAIN] == [1] * 4 + [2] * 4 + [3] * 4

    evaluated.clear()
    first = build_strategy(cfg, SHAPES, validation_loss)
    after_one = first.start(RoundGrid(), to_record(GLOBAL), num_rounds=1, evaluate_fn=evaluate_fn).arrays
    save_checkpoint(tmp_path, Checkpoint(round=1, global_state=from_arrayrecord(after_one),
                                         strategy_state=first.state_dict(), run_config=cfg.as_dict(),
                                         coordinator_metrics={}, communication={}, elapsed_seconds=0.0))
    checkpoint = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    second = build_strategy(cfg, SHAPES, validation_loss)
    second.load_state_dict(checkpoint.strategy_state)
    grid = RoundGrid()
    result = second.start(grid, to_record(checkpoint.global_state), num_rounds=3, evaluate_fn=evaluate_fn,
                          first_round=2)
    assert evaluated == [0, 1, 2, 3]  # round 0 is not evaluated again
    assert {kind for kind, _ in grid.sent} == {MessageType.TRAIN, MessageType.EVALUATE}
    assert [r for _, r in grid.sent] == [2] * 8 + [3] * 8  # the sites see the run's rounds
    assert sorted(result.evaluate_metrics_serverapp) == [2, 3]
    assert sorted(result.train_metrics_clientapp) == sorted(result.evaluate_metrics_clientapp) == [2, 3]
    assert second.round_report().server_round == 3
    for key in SHAPES:
        np.testing.assert_array_equal(result.arrays[key].numpy(), full.arrays[key].numpy())

    # Nothing left to run: no message is sent.
    grid = RoundGrid()
    done = build_strategy(cfg, SHAPES, validation_loss).start(grid, to_record(GLOBAL), num_rounds=3, first_round=4)
    assert grid.sent == [] and done.evaluate_metrics_serverapp == {}
    with pytest.raises(ValueError, match="first_round"):
        build_strategy(cfg, SHAPES, validation_loss).start(grid, to_record(GLOBAL), first_round=0)


# --- the ServerApp: killed after round 2, then continued ----------------------------------


class Killed(Exception):
    """Stands in for the coordinator dying in the middle of a round."""


class SiteGrid:
    """Three sites answering the ServerApp's messages like the real ClientApp, without a
    model: a train reply moves the global adapter by a node- and round-dependent amount.
    Messages arrive and replies leave packed (wire/transport.py), as with the ClientApp."""

    def __init__(self, kill_at_round: int | None = None) -> None:
        self.kill_at_round = kill_at_round
        self.train_rounds: list[int] = []
        self.replies: dict[str, Message] = {}

    def get_node_ids(self) -> list[int]:
        return [1, 2, 3]

    def push_messages(self, messages) -> list[str]:
        for reply_msg in self.answer(messages):
            self.replies[reply_msg.metadata.reply_to_message_id] = reply_msg
        return list(self.replies)

    def pull_messages(self, message_ids) -> list[Message]:
        return [self.replies.pop(i) for i in list(message_ids) if i in self.replies]

    def answer(self, messages) -> list[Message]:
        from wire.transport import decode_content, encode_content

        messages = list(messages)
        out = []
        for msg in messages:
            decode_content(msg.content)
            node, kind = msg.metadata.dst_node_id, msg.metadata.message_type
            config = msg.content["config"]
            server_round = int(config["server-round"])
            assert config["num-server-rounds"] == 3
            site = ConfigRecord({"name": f"site-{'abc'[node - 1]}"})
            if kind == MessageType.TRAIN:
                if server_round == self.kill_at_round:
                    raise Killed(f"killed in round {server_round}")
                self.train_rounds.append(server_round)
                rng = np.random.default_rng(100 * server_round + node)
                state = {k: (v.numpy() + 0.01 * rng.standard_normal(v.shape)).astype(np.float32)
                         for k, v in msg.content["arrays"].items()}
                metrics = {"num-examples": 4 * node, "train-loss": 1.0 / node, "train-tokens": 100.0,
                           "train-seconds": 1.0, "train-steps": 2.0}
                content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in state.items()}),
                                      "metrics": MetricRecord(metrics), "site": site})
            else:
                metrics = {"num-examples": 2, "val-loss": float(node), "strict-f1": 0.1 * node, "lenient-f1": 0.2}
                content = RecordDict({"metrics": MetricRecord(metrics), "site": site})
            out.append(Message(content=encode_content(content, "float32"), reply_to=instruction(node, kind)))
        return out


@pytest.fixture
def restore_logging():
    """The ServerApp adds file handlers to the loggers; take them off again after the test."""
    names = ["", "server_app", "client_app", "strategies", "modeling", "clinical_ie", "data_loaders", "fedmedlora"]
    before = {name: list(logging.getLogger(name).handlers) for name in names}
    yield
    for name, handlers in before.items():
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if h not in handlers]:
            logger.removeHandler(handler)
            handler.close()


@pytest.fixture(scope="module")
def coordinator_corpus(tmp_path_factory) -> Path:
    from data_loaders.synthetic import generate_corpus

    root = tmp_path_factory.mktemp("corpus")
    generate_corpus(root, seed=3, docs_per_site=4, coordinator_docs=4)
    return root / "coordinator"


def _main(tmp_path: Path, tiny_llama: Path, corpus: Path, grid, **overrides) -> None:
    from server_app.app import main

    run_config = {
        "model.name": str(tiny_llama), "num-server-rounds": 3, "lora.r": 4, "lora.alpha": 8,
        "eval.max-instances": 2, "eval.max-new-tokens": 4, "data.server-validation": str(corpus),
        "output-dir": str(tmp_path), "strategy.name": "fedadam", **overrides,
    }
    main(grid, SimpleNamespace(run_config=run_config, run_id=1))


def _rounds(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.usefixtures("restore_logging")
def test_the_server_app_continues_a_killed_run_as_if_never_stopped(tmp_path, tiny_llama, coordinator_corpus) -> None:
    from modeling.adapter_io import load_peft_folder

    full_grid = SiteGrid()
    _main(tmp_path, tiny_llama, coordinator_corpus, full_grid, **{"run-name": "full"})
    full = tmp_path / "full"
    assert full_grid.train_rounds == [1] * 3 + [2] * 3 + [3] * 3

    killed = tmp_path / "killed"
    with pytest.raises(Killed):
        _main(tmp_path, tiny_llama, coordinator_corpus, SiteGrid(kill_at_round=3), **{"run-name": "killed"})
    assert existing_round(killed) == 2 and not (killed / "summary.json").exists()
    assert [r["round"] for r in _rounds(killed)] == [0, 1, 2]
    # As if it had died after writing round 3's adapter and metrics but before the checkpoint,
    # with a line cut short.
    (killed / "round-3").mkdir()
    with open(killed / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps({"round": 3, "coordinator": {}}) + "\n" + '{"round": 4, "coordi')

    # A new run does not write over it; resuming with another strategy is refused.
    with pytest.raises(ConfigError, match="run-name = 'killed': .* already holds a run .*after round 2.*resume = true"):
        _main(tmp_path, tiny_llama, coordinator_corpus, SiteGrid(), **{"run-name": "killed"})
    with pytest.raises(ConfigError, match="strategy.name: the checkpoint has 'fedadam', this run has 'fedyogi'"):
        _main(tmp_path, tiny_llama, coordinator_corpus, SiteGrid(),
              **{"run-name": "killed", "resume": True, "strategy.name": "fedyogi"})
    with pytest.raises(ConfigError, match="resume = true: there is no run folder"):
        _main(tmp_path, tiny_llama, coordinator_corpus, SiteGrid(), **{"run-name": "nothing", "resume": True})
    assert not (tmp_path / "nothing").exists()

    grid = SiteGrid()
    _main(tmp_path, tiny_llama, coordinator_corpus, grid, **{"run-name": "killed", "resume": True})
    assert grid.train_rounds == [3] * 3  # the remaining round only, sent as server-round 3

    def untimed(metrics: dict) -> dict:  # how long an evaluation took differs between runs
        return {k: v for k, v in metrics.items() if k not in ("eval-seconds", "eval-end-time")}

    records, full_records = _rounds(killed), _rounds(full)
    assert [r["round"] for r in records] == [0, 1, 2, 3]
    for record, reference in zip(records, full_records, strict=True):
        assert untimed(record["coordinator"]) == untimed(reference["coordinator"])
        assert record.get("sites") == reference.get("sites")
    summary, full_summary = (json.loads((d / "summary.json").read_text()) for d in (killed, full))
    assert summary["rounds"] == 3 and summary["communication"] == full_summary["communication"]
    assert untimed(summary["zero-shot-metrics"]) == untimed(full_summary["zero-shot-metrics"])
    assert untimed(summary["final-metrics"]) == untimed(full_summary["final-metrics"])
    assert [r["after-round"] for r in summary["resumed"]] == [2] and "resumed" not in full_summary
    # The audit trail goes on across the resume, one chain: rounds 1, 2, then (resumed) 3; the
    # killed run wrote no run-end, the resumed one seals the whole chain.
    from wire.audit import read_chain

    trail = [(e["event"], e.get("round")) for e in read_chain(killed / "audit.jsonl") if e["event"] != "join"]
    assert trail == [("run-start", None), ("global", 0), ("round", 1), ("round", 2), ("run-start", None), ("round", 3),
                     ("run-end", None)]
    assert existing_round(killed) == 3
    # FedAdam's moments came back: round 3's adapter is the uninterrupted run's, bit for bit.
    for name in ("round-1", "round-2", "round-3", "final"):
        ours, theirs = load_peft_folder(killed / name), load_peft_folder(full / name)
        assert all(np.array_equal(ours[k], theirs[k]) for k in theirs), name
    round2, round3 = load_peft_folder(killed / "round-2"), load_peft_folder(killed / "round-3")
    assert any(not np.array_equal(round2[k], round3[k]) for k in round2)

    # Resuming a finished run only writes its summary again; more rounds extend it.
    grid = SiteGrid()
    _main(tmp_path, tiny_llama, coordinator_corpus, grid, **{"run-name": "killed", "resume": True})
    assert grid.train_rounds == [] and [r["round"] for r in _rounds(killed)] == [0, 1, 2, 3]


@pytest.mark.usefixtures("restore_logging")
def test_a_dp_run_reports_the_epsilon_it_spent_and_refuses_one_past_its_limit(
        tmp_path, tiny_llama, coordinator_corpus) -> None:
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    from strategies.dp_budget import DpBudget

    dp = {"strategy.name": "fedmedlora", "strategy.dp": "server-fixed", "strategy.dp-noise-multiplier": 1.5}
    _main(tmp_path, tiny_llama, coordinator_corpus, SiteGrid(), **{"run-name": "dp", **dp})
    rounds = _rounds(tmp_path / "dp")[1:]
    spent = [r["dp"] for r in rounds]
    # Sites of 4, 8 and 12 instances: Fed-MedLoRA gives the largest half the weight, so one
    # site moves the mean by C / 2, not C / 3, and the noise z C / 3 is 1.0 of that, not 1.5.
    assert [max(s["weight"] for s in r["sites"]) for r in rounds] == pytest.approx([0.5] * 3)

    def independent(rounds_done: int) -> float:  # the accountant at z = 1.5 / (3 x 0.5), by hand
        accountant = RdpAccountant()
        accountant.compose(dp_accounting.GaussianDpEvent(1.0), rounds_done)
        return accountant.get_epsilon(1e-5)

    assert [s["epsilon"] for s in spent] == pytest.approx([independent(r) for r in (1, 2, 3)])
    assert all(s["noise-multiplier-effective"] == pytest.approx(1.0) and s["noise-multiplier"] == 1.5 for s in spent)
    assert all(s["epsilon-round"] == pytest.approx(independent(1)) and s["delta"] == 1e-5 for s in spent)
    assert spent[-1]["epsilon"] > DpBudget(1.5, 1e-5).epsilon(3) * 1.3  # what equal weights would have claimed
    summary = json.loads((tmp_path / "dp" / "summary.json").read_text())
    assert summary["dp"]["epsilon"] == pytest.approx(independent(3)) and summary["dp"]["rounds"] == 3

    grid = SiteGrid()
    with pytest.raises(ConfigError, match="strategy.dp-max-epsilon"):
        _main(tmp_path, tiny_llama, coordinator_corpus, grid, **{"run-name": "over", **dp,
                                                                  "strategy.dp-max-epsilon": 1.0})
    assert grid.train_rounds == [] and not (tmp_path / "over").exists()
