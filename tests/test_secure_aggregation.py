"""Secure aggregation (strategy.secure-aggregation, strategies/secure_aggregation.py and
client_app/secure_aggregation.py): Flower's SecAgg+ run by Flower's simulation engine, the
sum it returns against the plain size-weighted mean, a site lost after sending its masked
adapter, what the coordinator's messages hold, and the combinations refused at start."""

from __future__ import annotations

import json

import numpy as np
import pytest

from settings.config import ConfigError, validate

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("key", "value"), [("strategy.name", "fedmedlora-plus"), ("strategy.name", "krum"),
                                            ("strategy.max-update-norm", 1.0), ("strategy.dp", "server-fixed")])
def test_combinations_that_need_each_sites_adapter_are_refused_at_start(key, value):
    with pytest.raises(ConfigError, match=rf"strategy.secure-aggregation = true cannot be combined with {key}"):
        validate({"strategy.secure-aggregation": True, key: value})
    assert validate({"strategy.secure-aggregation": False, key: value})


def test_more_sites_than_the_modulus_can_sum_are_refused_at_start():
    from strategies.secure_aggregation import MAX_SITES

    with pytest.raises(ConfigError, match=r"strategy.min-sites = 256 with strategy.secure-aggregation.*wraps"):
        validate({"strategy.secure-aggregation": True, "strategy.min-sites": MAX_SITES + 1})
    assert validate({"strategy.secure-aggregation": True, "strategy.min-sites": MAX_SITES})


def test_fedmedlora_and_fedprox_are_accepted():
    for name in ("fedmedlora", "fedprox"):
        assert validate({"strategy.secure-aggregation": True, "strategy.name": name}).strategy.secure_aggregation


# --------------------------------------------------------------------------- the protocol, in process

SITES = (1, 2, 3)


@pytest.fixture(scope="module")
def secure_setup(tiny_llama, tmp_path_factory):
    from flwr.supercore.task_identity import TaskIdentity

    # What a ServerApp process has set before its strategy creates messages.
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    """A validated run config with secure aggregation, three sites' node configs and round 1's
    train instruction content (the global adapter and the round's config)."""
    from client_app.runtime import model_runtime
    from data_loaders.synthetic import generate_corpus
    from modeling.adapter_io import get_adapter_state
    from wire import protocol

    root = tmp_path_factory.mktemp("corpus")
    generate_corpus(root, seed=3, docs_per_site=24, coordinator_docs=4)
    cfg = validate({"model.name": str(tiny_llama), "lora.r": 4, "lora.alpha": 8, "train.max-steps": 2,
                    "train.batch-size": 2, "eval.max-instances": 3, "data.root": str(root),
                    # float32 and no dropout: the same instruction trains the same adapter every time
                    "model.dtype": "float32", "lora.dropout": 0.0, "strategy.secure-aggregation": True,
                    # a max weight near the sites' counts: finer weights (the error bound below)
                    "strategy.secagg-max-weight": 500})
    runtime = model_runtime(cfg)
    config = {**protocol.base_config(runtime.identity, cfg.lora_settings(), 1), "server-round": 1}
    return cfg, config, get_adapter_state(runtime.model)


def _instructions(secure_setup, nodes=SITES, **extra):
    from flwr.app import ConfigRecord, Message, MessageType, RecordDict

    from wire import protocol
    from wire.arrays import to_arrayrecord

    _, config, initial = secure_setup
    config = ConfigRecord({**config, **extra})
    return [Message(content=RecordDict({protocol.ARRAYS: to_arrayrecord(initial), protocol.CONFIG: config}),
                    dst_node_id=node, message_type=MessageType.TRAIN, group_id="1") for node in nodes]


def _grid(secure_setup):
    from benchmarks.grids import LocalGrid
    from wire.transport import transport_grid

    cfg = secure_setup[0]
    local = LocalGrid(cfg, {node: {"partition-id": i} for i, node in enumerate(SITES)})
    return local, transport_grid(local, "float32")


def _plain_updates(secure_setup, **extra) -> dict[int, tuple[dict[str, np.ndarray], int]]:
    """Each site's own adapter and count for round 1, trained without secure aggregation."""
    from wire import protocol
    from wire.arrays import from_arrayrecord

    _, grid = _grid(secure_setup)
    replies = grid.send_and_receive(_instructions(secure_setup, **extra), timeout=5)
    return {r.metadata.src_node_id: (from_arrayrecord(r.content[protocol.ARRAYS]),
                                     int(r.content[protocol.METRICS]["num-examples"])) for r in replies}


def _mean(updates, nodes):
    total = sum(updates[n][1] for n in nodes)
    return {k: sum(updates[n][0][k].astype(np.float64) * updates[n][1] for n in nodes) / total
            for k in updates[nodes[0]][0]}


def _tolerance(cfg, updates, nodes) -> float:
    """SecAgg+'s quantization error bound: one step of 2 c / 2^24 per site, divided by the
    sum of the weights count / max-weight (plus float32 rounding)."""
    from strategies.secure_aggregation import QUANTIZATION_RANGE

    step = 2 * cfg.strategy.secagg_clipping_range / QUANTIZATION_RANGE
    weights = sum(updates[n][1] / cfg.strategy.secagg_max_weight for n in nodes)
    return len(nodes) * step / weights + 1e-6


def _secure(secure_setup, silent=(), **extra):
    from strategies.secure_aggregation import SecureAggregationGrid

    cfg = secure_setup[0]
    local, grid = _grid(secure_setup)
    local.silent.update(silent)
    secure = SecureAggregationGrid(grid, cfg.strategy.secagg_clipping_range, cfg.strategy.secagg_max_weight)
    replies = secure.send_and_receive(_instructions(secure_setup, **extra), timeout=2)
    return local, secure, list(replies)


@pytest.fixture(scope="module")
def plain(secure_setup):
    return _plain_updates(secure_setup)


def test_the_secure_sum_equals_the_plain_size_weighted_mean(secure_setup, plain):
    from strategies.secure_aggregation import SECURE_AGGREGATION
    from wire import protocol
    from wire.arrays import from_arrayrecord

    cfg = secure_setup[0]
    local, secure, replies = _secure(secure_setup)
    assert sorted(r.metadata.src_node_id for r in replies) == list(SITES) and not any(r.has_error() for r in replies)
    expected = _mean(plain, SITES)
    tolerance = _tolerance(cfg, plain, SITES)
    for reply in replies:  # every site's reply carries the sum, its own count and metrics
        node = reply.metadata.src_node_id
        assert int(reply.content[protocol.METRICS]["num-examples"]) == plain[node][1]
        got = from_arrayrecord(reply.content[protocol.ARRAYS])
        worst = max(float(np.abs(got[k] - expected[k]).max()) for k in expected)
        assert worst <= tolerance, (worst, tolerance)
        assert reply.content[SECURE_AGGREGATION]["sites"] == 3
        assert reply.content[SECURE_AGGREGATION]["bytes-up"] > 0
    # A check that can fail: one site's own adapter is far from the mean.
    own = plain[SITES[0]][0]
    assert max(float(np.abs(own[k] - expected[k]).max()) for k in expected) > 10 * tolerance
    assert secure.last_round["sites"] == 3 and secure.last_round["bytes-received"] > 0
    print(f"secure aggregation, 3 sites of {[plain[n][1] for n in SITES]} instances: {secure.last_round}; "
          f"largest error {worst:.3g}, bound {tolerance:.3g} (quantization part "
          f"{tolerance - 1e-6:.3g})")


def test_a_round_that_sends_one_factor_sums_that_factor_only(secure_setup):
    """FFA-LoRA under SecAgg+: the sites mask and send B alone, and the sum is B's mean."""
    from wire import protocol
    from wire.arrays import from_arrayrecord

    rule = {protocol.TRAIN_FACTORS: "B", protocol.SEND_FACTORS: "B"}
    plain_b = _plain_updates(secure_setup, **rule)
    assert all(all(".lora_B." in k for k in state) for state, _ in plain_b.values())
    _, _, replies = _secure(secure_setup, **rule)
    assert not any(r.has_error() for r in replies), [r.error.reason for r in replies if r.has_error()]
    expected = _mean(plain_b, SITES)
    for reply in replies:
        got = from_arrayrecord(reply.content[protocol.ARRAYS])
        assert sorted(got) == sorted(expected)
        assert max(float(np.abs(got[k] - expected[k]).max()) for k in expected) <= _tolerance(
            secure_setup[0], plain_b, SITES)


def test_no_message_the_coordinator_receives_holds_a_sites_adapter(secure_setup, plain):
    """Replies carry no float tensors; the masked vectors do not correlate with the site's adapter."""
    from flwr.common import bytes_to_ndarray
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

    from wire.transport import decode_content

    local, _, _ = _secure(secure_setup)
    masked = {}
    for reply in local.received:
        content = decode_content(reply.content)
        assert all(len(record) == 0 for record in content.array_records.values()), list(content.array_records)
        vectors = content.config_records[RECORD_KEY_CONFIGS].get(Key.MASKED_PARAMETERS)
        if vectors is not None:
            masked[reply.metadata.src_node_id] = [bytes_to_ndarray(b) for b in vectors][1:]  # [0]: the weight
    assert sorted(masked) == list(SITES)
    for node, vectors in masked.items():
        adapter = np.concatenate([v.ravel() for v in plain[node][0].values()])
        values = np.concatenate([v.ravel() for v in vectors]).astype(np.float64)
        assert values.size == adapter.size
        assert abs(np.corrcoef(values, adapter)[0, 1]) < 0.05  # masked: noise to the coordinator
        assert values.min() >= 0 and values.max() < 2**32 and values.std() > 2**30  # uniform over the modulus
        raw = adapter.astype(np.float32).tobytes()[:64]
        assert not any(raw in bytes(b) for r in local.received
                       for b in r.content.config_records[RECORD_KEY_CONFIGS].get(Key.MASKED_PARAMETERS, []))


def test_a_secure_round_leaves_site_trails_that_match_the_coordinators_in_both_directions(secure_setup, tmp_path):
    """The real ClientApp under SecAgg+, each site keeping its audit trail: every stage's
    reply is recorded in round 1 with the coordinator's head, and `audit-verify` matches the
    sites' SecAgg+ lines with the coordinator's round (tests/test_audit_tamper.py attacks them)."""
    from benchmarks.grids import LocalGrid
    from fedmedlora.audit_check import verify
    from server_app.audit_trail import CoordinatorAudit, coordinator_key
    from strategies.screening import site_label
    from strategies.secure_aggregation import SecureAggregationGrid
    from wire import protocol
    from wire.audit import read_chain
    from wire.transport import adapter_sha256, payload_digest, transport_grid

    cfg, _, initial = secure_setup
    run = validate({**cfg.as_dict(), "output-dir": str(tmp_path / "outputs")})
    folder = tmp_path / "outputs" / "run"
    coordinator = CoordinatorAudit(folder, 1, "base", "b" * 64, run, coordinator_key(run, folder))
    coordinator.initial(adapter_sha256(initial, "float32"))
    names = ("site-a", "site-b", "site-c")
    trails = {name: tmp_path / "sites" / name / "audit.jsonl" for name in names}
    keys = [tmp_path / "outputs" / "audit.key", *[tmp_path / "keys" / f"{name}.key" for name in names]]
    local = LocalGrid(cfg, {node: {"partition-id": i, "site-name": names[i], "audit-log": str(trails[names[i]]),
                                   "audit-key": str(keys[i + 1])} for i, node in enumerate(SITES)})
    grid = SecureAggregationGrid(transport_grid(local, "float32", stamp=coordinator.stamp),
                                 cfg.strategy.secagg_clipping_range, cfg.strategy.secagg_max_weight)
    replies = grid.send_and_receive(_instructions(secure_setup), timeout=2)
    rows = [{"site": site_label(r), "node-id": r.metadata.src_node_id, "sha256": payload_digest(r.content) or "",
             "num-examples": int(r.content[protocol.METRICS]["num-examples"]), "weight": 1 / 3} for r in replies]
    coordinator.round({"round": 1, "sites": rows, "rejected": [], "strategy": {"secure-aggregation": {}}}, "f" * 64)
    coordinator.end()
    assert sorted(r["site"] for r in rows) == list(names) and all(r["sha256"] == "" for r in rows)
    for name, path in trails.items():
        sent = [e for e in read_chain(path) if e["event"] == "sent"]
        assert len(sent) == 4 and all(e["round"] == 1 and e["secure-aggregation"] for e in sent), (name, sent)
        heads = [e[protocol.AUDIT_LINES] for e in read_chain(path) if e["event"] == "received"]
        assert heads == [2] * 4  # run-start and the initial global: nothing is written during the round
    assert verify(folder / "audit.jsonl", list(trails.values()), keys) == []
    # The other direction: a SecAgg+ round the coordinator says site-a took part in, that site-a never saw.
    coordinator = CoordinatorAudit(folder, 1, "base", "b" * 64, run, coordinator_key(run, folder))
    coordinator.round({"round": 2, "sites": rows, "rejected": [], "strategy": {"secure-aggregation": {}}}, "e" * 64)
    coordinator.end()
    problems = verify(folder / "audit.jsonl", [trails["site-a"]], keys)
    assert len(problems) == 1 and "a reply from site-a in round 2 of run 1;" in problems[0], problems


def test_a_site_lost_after_sending_its_masked_adapter_is_still_in_the_sum(secure_setup, plain):
    from flwr.common.secure_aggregation.secaggplus_constants import Stage

    from wire import protocol
    from wire.arrays import from_arrayrecord

    lost = SITES[2]
    local, _, replies = _secure(secure_setup, silent=[(lost, Stage.UNMASK)])
    assert sorted(r.metadata.src_node_id for r in replies) == list(SITES)  # its masked adapter counted
    expected = _mean(plain, SITES)
    got = from_arrayrecord(replies[0].content[protocol.ARRAYS])
    assert max(float(np.abs(got[k] - expected[k]).max()) for k in expected) <= _tolerance(secure_setup[0], plain, SITES)


def test_a_site_lost_before_its_masked_adapter_is_left_out_of_the_sum(secure_setup, plain):
    from flwr.common.secure_aggregation.secaggplus_constants import Stage

    from wire import protocol
    from wire.arrays import from_arrayrecord

    lost = SITES[0]
    _, _, replies = _secure(secure_setup, silent=[(lost, Stage.COLLECT_MASKED_VECTORS)])
    kept = SITES[1:]
    assert sorted(r.metadata.src_node_id for r in replies) == list(kept)
    expected = _mean(plain, kept)
    got = from_arrayrecord(replies[0].content[protocol.ARRAYS])
    assert max(float(np.abs(got[k] - expected[k]).max()) for k in expected) <= _tolerance(secure_setup[0], plain, kept)


def test_a_site_whose_count_exceeds_the_max_weight_says_which_key_to_raise(secure_setup):
    from client_app.app import SiteFailure

    cfg, config, initial = secure_setup
    with pytest.raises(SiteFailure, match=r"more than strategy.secagg-max-weight = 10; raise it"):
        _secure((validate({**cfg.as_dict(), "strategy.secagg-max-weight": 10}), config, initial))


def test_a_round_with_more_sites_than_the_modulus_can_sum_sends_nothing(secure_setup):
    """256 sites x 2^24 per value reaches Flower's modulus 2^32: their sum could wrap into a
    finite, wrong global. The round is refused before any key is exchanged."""
    from strategies.secure_aggregation import MAX_SITES, SecureAggregationGrid

    class Recording:
        def __init__(self):
            self.sent = []

        def send_and_receive(self, messages, *, timeout=None):
            self.sent.extend(messages)
            return []

    cfg = secure_setup[0]
    grid = Recording()
    nodes = range(1, MAX_SITES + 2)
    replies = list(SecureAggregationGrid(grid, cfg.strategy.secagg_clipping_range, cfg.strategy.secagg_max_weight)
                   .send_and_receive(_instructions(secure_setup, nodes=nodes), timeout=1))
    assert grid.sent == []
    assert sorted(r.metadata.src_node_id for r in replies) == list(nodes)
    assert all(r.has_error() and "modulus 2^32" in r.error.reason for r in replies)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_adapter_value_is_refused_at_the_site_before_quantization(secure_setup, bad):
    from flwr.app import MetricRecord, RecordDict

    from client_app.app import SiteFailure
    from client_app.secure_aggregation import as_fitres
    from wire import protocol
    from wire.arrays import to_arrayrecord

    cfg, _, initial = secure_setup
    state = {k: v.copy() for k, v in initial.items()}
    state[next(iter(state))].flat[0] = bad
    content = RecordDict({protocol.ARRAYS: to_arrayrecord(state), protocol.METRICS: MetricRecord({"num-examples": 10})})
    with pytest.raises(SiteFailure, match="non-finite values in 1 tensor"):
        as_fitres(content, list(state), cfg.as_dict())


def test_a_site_that_skips_its_check_cannot_slip_a_wrapped_value_into_the_global(secure_setup, monkeypatch):
    """A site that sends a NaN anyway (Flower quantizes it to -2^31, which wraps): the
    unmasked mean is out of what in-range inputs give, and the round's sum is discarded."""
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
    from flwr.compat.common import recorddict_compat as compat

    from wire import protocol

    sent = []

    def unchecked(content, keys, run_config):
        del run_config
        tensors = [content[protocol.ARRAYS][k].numpy().copy() for k in keys]
        if not sent:
            tensors[0].flat[0] = np.nan  # the first site to answer
        sent.append(True)
        fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(tensors),
                        int(content[protocol.METRICS]["num-examples"]), {})
        reply = compat.fitres_to_recorddict(fitres, keep_input=False)
        for name, record in content.items():
            if name != protocol.ARRAYS:
                reply[name] = record
        return reply

    monkeypatch.setattr("client_app.secure_aggregation.as_fitres", unchecked)
    _, _, replies = _secure(secure_setup)
    assert len(sent) == len(SITES) and replies and all(r.has_error() for r in replies)
    assert all("the round's sum is discarded" in r.error.reason for r in replies)


@pytest.mark.parametrize("required", ["true", True])
def test_a_site_that_requires_secure_aggregation_refuses_a_plain_round_before_training(secure_setup, required):
    from flwr.app import Context, RecordDict

    from client_app.app import SiteFailure
    from client_app.secure_aggregation import secure_aggregation_mod

    trained = []
    plain = _instructions(secure_setup, nodes=SITES[:1])[0]
    context = Context(run_id=1, node_id=SITES[0], node_config={"require-secure-aggregation": required},
                      state=RecordDict(), run_config=secure_setup[0].as_dict())
    with pytest.raises(SiteFailure, match="requires secure aggregation"):
        secure_aggregation_mod(plain, context, lambda msg, ctx: trained.append(msg))
    assert trained == []  # nothing trained, nothing sent
    context = Context(run_id=1, node_id=SITES[0], node_config={}, state=RecordDict(), run_config=secure_setup[0].as_dict())
    secure_aggregation_mod(plain, context, lambda msg, ctx: trained.append(msg))
    assert trained == [plain]  # a site that does not require it trains as before


# --------------------------------------------------------------------------- end to end


@pytest.mark.e2e
def test_a_secure_simulation_run_reports_the_sum_only(tmp_path, tiny_llama):
    """`flwr run` on Flower's simulation engine, 3 sites, 2 rounds, with SecAgg+."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from data_loaders.synthetic import generate_corpus
    from fedmedlora.deploy import free_ports
    from fedmedlora.local_run import flwr_run
    from support.paths import REPO

    corpus = tmp_path / "corpus"
    generate_corpus(corpus, seed=3, docs_per_site=24, coordinator_docs=4)
    overrides = {"model.name": str(tiny_llama), "num-server-rounds": 2, "train.max-steps": 2, "train.batch-size": 2,
                 "lora.r": 4, "lora.alpha": 8, "eval.max-instances": 3, "eval.max-new-tokens": 8,
                 "data.root": str(corpus), "data.server-validation": str(corpus / "coordinator"),
                 "output-dir": str(tmp_path / "outputs"), "run-name": "secure", "strategy.secure-aggregation": True}
    http_port, control_port = free_ports(2)
    with open(tmp_path / "flwr.log", "w") as log:
        code = flwr_run(REPO, tmp_path / "flwr-home", overrides, num_supernodes=3, http_port=http_port,
                        control_port=control_port, timeout=900, stdout=log)
    run_dir = tmp_path / "outputs" / "secure"
    assert code == 0, (tmp_path / "flwr.log").read_text()[-3000:]
    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    for record in rounds[1:]:
        secure = record["strategy"]["secure-aggregation"]
        assert secure["sites"] == 3 and secure["bytes-sent"] > 0 and secure["seconds"] > 0
        assert sorted(s["site"] for s in record["sites"]) == ["site-a", "site-b", "site-c"]
        total = sum(s["num-examples"] for s in record["sites"])
        assert all(abs(s["weight"] - s["num-examples"] / total) < 1e-9 for s in record["sites"])
        assert all(s["sha256"] == "" and s["extra-bytes-down"] > 0 for s in record["sites"])  # no site's adapter
    audit = [json.loads(line) for line in (run_dir / "audit.jsonl").read_text().splitlines()]
    assert [e.get("secure-aggregation") for e in audit if e["event"] == "round"] == [True, True]
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), run_dir / "final")
    assert loaded.peft_config["default"].r == 4
    print(f"secure simulation: {[r['strategy']['secure-aggregation'] for r in rounds[1:]]}")
