"""Update-norm bound through the LoRA factors: norms against dense products, the clip factor,
mixed ranks, memory, and the bound inside LoraFedAvg's screening."""

from __future__ import annotations

import logging
import tracemalloc

import numpy as np
import pytest
from flwr.app import ConfigRecord

from strategies import FedMedLoRA, WrapperSettings, compose
from strategies.clipping import lora_pairs, scale_toward, update_norm, update_terms
from support.messages import reply
from support.strategy_harness import FakeGrid, server_identity  # noqa: F401 - autouse fixture: instructions
from wire.arrays import to_arrayrecord

P = "base_model.model.model.layers.0.self_attn"
QA, QB = f"{P}.q_proj.lora_A.weight", f"{P}.q_proj.lora_B.weight"
VA, VB = f"{P}.v_proj.lora_A.weight", f"{P}.v_proj.lora_B.weight"
EMB_A, EMB_B = "base_model.model.model.embed_tokens.lora_embedding_A", "base_model.model.model.embed_tokens.lora_embedding_B"
PLAIN = "base_model.model.score.modules_to_save.weight"


def state(rng: np.random.Generator, r: int = 3, scale: float = 1.0) -> dict[str, np.ndarray]:
    shapes = {QA: (r, 7), QB: (9, r), VA: (r, 7), VB: (4, r), PLAIN: (2, 3)}
    return {k: (scale * rng.standard_normal(s)).astype(np.float32) for k, s in shapes.items()}


def dense_norm(site: dict[str, np.ndarray], global_: dict[str, np.ndarray]) -> float:
    total = 0.0
    for a, b in ((QA, QB), (VA, VB)):
        d = site[b].astype(np.float64) @ site[a] - global_[b].astype(np.float64) @ global_[a]
        total += float(np.sum(d * d))
    d = site[PLAIN].astype(np.float64) - global_[PLAIN]
    return float(np.sqrt(total + np.sum(d * d)))


def test_lora_pairs_finds_linear_and_embedding_pairs() -> None:
    shapes = {QA: (3, 7), QB: (9, 3), EMB_A: (3, 50), EMB_B: (8, 3), PLAIN: (2, 3), VA: (3, 7)}
    assert lora_pairs(shapes) == [(QA, QB), (EMB_A, EMB_B)]  # VA has no partner
    assert lora_pairs({QA: (3, 7), QB: (9, 2)}) == []  # ranks disagree


def test_norm_through_factors_equals_the_dense_norm() -> None:
    rng = np.random.default_rng(0)
    g, s = state(rng), state(rng)
    assert update_norm(s, g) == pytest.approx(dense_norm(s, g), rel=1e-10)
    assert update_norm(g, g) == pytest.approx(0.0, abs=1e-9)


def test_norm_with_another_rank_than_the_global() -> None:
    rng = np.random.default_rng(1)
    g, s = state(rng, r=3), state(rng, r=5)
    assert update_norm(s, g) == pytest.approx(dense_norm(s, g), rel=1e-10)
    assert update_norm(g, s) == pytest.approx(dense_norm(g, s), rel=1e-10)


@pytest.mark.parametrize("t", [0.0, 0.3, 0.7, 1.0])
def test_quartic_matches_the_scaled_adapter(t: float) -> None:
    rng = np.random.default_rng(2)
    g, s = state(rng), state(rng)
    scaled = scale_toward(s, g, t)
    assert update_terms(s, g).norm(t) == pytest.approx(dense_norm(scaled, g), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("bound", [0.05, 1.0, 10.0])
def test_clip_factor_brings_the_norm_to_the_bound(bound: float) -> None:
    rng = np.random.default_rng(3)
    g, s = state(rng), state(rng)
    terms = update_terms(s, g)
    assert terms.norm() > bound
    t = terms.clip_factor(bound)
    assert 0 < t < 1
    after = dense_norm(scale_toward(s, g, t), g)
    assert after == pytest.approx(bound, rel=1e-4)  # float32 rounding of the scaled factors


def test_update_within_the_bound_is_left_alone() -> None:
    rng = np.random.default_rng(4)
    g = state(rng)
    s = {k: v + np.float32(1e-3) for k, v in g.items()}
    assert update_terms(s, g).clip_factor(10.0) == 1.0
    with pytest.raises(ValueError, match="strategy.max-update-norm"):
        update_terms(s, g).clip_factor(0.0)


def test_scale_toward_keeps_keys_and_the_site_rank() -> None:
    rng = np.random.default_rng(5)
    g, s = state(rng, r=3), state(rng, r=4)
    out = scale_toward(s, g, 0.5)
    assert list(out) == list(s)
    assert {k: v.shape for k, v in out.items()} == {k: v.shape for k, v in s.items()}
    assert all(v.dtype == np.float32 for v in out.values())
    np.testing.assert_allclose(scale_toward(s, g, 1.0)[QB][:, :3], s[QB][:, :3], rtol=1e-6)


def test_8b_module_norm_never_forms_the_dense_matrix() -> None:
    rng = np.random.default_rng(6)
    dim, r = 4096, 16
    g = {"m.lora_A.weight": rng.standard_normal((r, dim), np.float32), "m.lora_B.weight": rng.standard_normal((dim, r), np.float32)}
    s = {k: v + np.float32(0.01) for k, v in g.items()}
    tracemalloc.start()
    terms = update_terms(s, g)
    scale_toward(s, g, terms.clip_factor(1.0))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < dim * dim * 8 / 8, f"peak {peak / 2**20:.0f} MiB: a dense {dim}x{dim} product was formed?"


# --- the bound in LoraFedAvg's screening -----------------------------------------------


def _strategy(action: str, bound: float = 1.0) -> FedMedLoRA:
    strategy = compose(FedMedLoRA(expected_shapes={k: v.shape for k, v in GLOBAL.items()}),
                       WrapperSettings(max_update_norm=bound, update_norm_action=action))
    strategy.configure_train(2, to_arrayrecord(GLOBAL), ConfigRecord(), FakeGrid())  # the round's global adapter
    return strategy


GLOBAL = state(np.random.default_rng(7), scale=0.1)
NEAR = {k: v + np.float32(0.001) for k, v in GLOBAL.items()}
FAR = {k: v + np.float32(3.0) for k, v in GLOBAL.items()}


def test_reject_names_the_site_and_the_bound(caplog: pytest.LogCaptureFixture) -> None:
    strategy = _strategy("reject")
    with caplog.at_level(logging.WARNING, logger="flwr"):
        arrays, _ = strategy.aggregate_train(2, [reply(1, NEAR, 10, "near"), reply(2, FAR, 10, "far")])
    report = strategy.round_report()
    assert [u.site for u in report.updates] == ["near"]
    assert report.rejected[0][0] == "far"
    assert "exceeds strategy.max-update-norm = 1" in report.rejected[0][1]
    assert "round 2: update from site far rejected: update norm" in caplog.text
    np.testing.assert_allclose(arrays[QA].numpy(), NEAR[QA])


def test_clip_scales_the_update_to_the_bound_and_logs_it(caplog: pytest.LogCaptureFixture) -> None:
    strategy = _strategy("clip")
    with caplog.at_level(logging.WARNING, logger="flwr"):
        strategy.aggregate_train(2, [reply(1, NEAR, 10, "near"), reply(2, FAR, 10, "far")])
    report = strategy.round_report()
    assert [u.site for u in report.updates] == ["far", "near"] and report.rejected == []
    clipped = report.extra["clipped"]["far"]
    assert clipped["update-norm"] == pytest.approx(dense_norm(FAR, GLOBAL), rel=1e-6)
    assert 0 < clipped["factor"] < 1
    assert "round 2: update from site far clipped" in caplog.text
    assert set(report.extra["update-norm"]) == {"near", "far"}


def test_bound_needs_the_global_adapter() -> None:
    strategy = compose(FedMedLoRA(expected_shapes={k: v.shape for k, v in GLOBAL.items()}),
                       WrapperSettings(max_update_norm=1.0))
    with pytest.raises(RuntimeError, match="configure_train"):
        strategy.aggregate_train(1, [reply(1, NEAR, 10, "near")])


def test_wrapper_settings_name_bad_keys() -> None:
    with pytest.raises(ValueError, match="strategy.max-update-norm"):
        WrapperSettings(max_update_norm=-1.0)
    with pytest.raises(ValueError, match=r"strategy.update-norm-action.*'clip', 'reject'"):
        WrapperSettings(update_norm_action="drop")
    with pytest.raises(ValueError, match="strategy.proximal-mu"):
        WrapperSettings(proximal_mu=float("nan"))


def test_proximal_mu_goes_into_the_train_config() -> None:
    class Spy(FedMedLoRA):
        def configure_train(self, server_round, arrays, config, grid):  # noqa: ANN001, ANN202
            self.config = config
            return []

    strategy = compose(Spy())
    strategy.configure_train(1, to_arrayrecord(GLOBAL), ConfigRecord(), grid=None)
    assert "proximal-mu" not in strategy.core.config
    strategy = compose(Spy(), WrapperSettings(proximal_mu=0.01))
    strategy.configure_train(1, to_arrayrecord(GLOBAL), ConfigRecord(), grid=None)
    assert strategy.core.config["proximal-mu"] == 0.01
