"""Flower's own strategies and DP wrappers behind our update screening.

`ScreenedStrategy` wraps any flwr `Strategy`: it screens the train replies exactly as
`LoraFedAvg` does (`ReplyScreening`: error, non-finite, wrongly keyed or shaped replies are
rejected and logged with the site, and so are sites that sent no reply in time; the round
goes on if at least `strategy.min-sites` are usable, else the run stops; the update-norm
bound applies),
hands the accepted ones, in a fixed order, to the wrapped strategy's own `aggregate_train`,
and fills `last_train_report` for server_app/report.py. The names registered here are
Flower's FedProx, FedAvgM, FedAdam, FedYogi, FedTrimmedAvg, FedMedian and Krum, each
built from `strategy.*` keys. `with_dp` puts one of Flower's DP wrappers between the
screening and the strategy, so DP sees only clean replies (Flower's wrappers skip the whole
round when any reply is an error).

Report weights (`SiteUpdate.weight`) are the strategy's effective weights where it has them:
the `num-examples` shares of FedAvg-style averaging (FedProx; FedAvgM, FedAdam, FedYogi
average with these shares before their server-side step), 1 for the update Krum selects
and 0 for the others, the core's own weights when the core is a `LoraFedAvg`. FedMedian
and FedTrimmedAvg have no per-site weight: they report the `num-examples` shares as well
(`last_train_report.extra["weights"]` says which kind a round used).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from logging import ERROR, INFO, WARNING
from typing import Any, ClassVar

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    Strategy,
)

from .base import (
    LoraFedAvg,
    Metrics,
    ReplyScreening,
    RoundReport,
    SiteCandidate,
    SiteUpdate,
    _common_metric_keys,
    metric_dict,
)
from .flower_compat import FLOWER_STATE, aggregate_arrayrecords, select_multikrum, valid_train_replies
from .registry import register

# `strategy.dp`: Flower's central-DP wrappers, clipping at the coordinator or at the sites.
DP_MODES = ("none", "server-fixed", "server-adaptive", "client-fixed", "client-adaptive")

# Server learning rates when `strategy.server-learning-rate` = 0. FedAvgM and FedYogi keep
# Flower's defaults; Flower's FedAdam eta = 0.1 is too large for LoRA: with tau = 1e-3 and
# per-element updates below tau (typical for a few local steps at lr 2e-4), a FedAdam step
# is about 10 * eta * the averaged update, so 1e-2 keeps it near one FedAvg step.
DEFAULT_SERVER_LR = {"fedavgm": 1.0, "fedadam": 1e-2, "fedyogi": 1e-2}

class ScreenedStrategy(ReplyScreening, Strategy):
    """Any flwr strategy behind our per-reply screening and update-norm bound.

    Parameters
    ----------
    inner : Strategy
        The strategy that aggregates the accepted replies (possibly a DP wrapper).
    expected_shapes : Mapping[str, Sequence[int]] | None (default: None)
        Keys and shapes of the global adapter; else taken from `initial_arrays` in `start`.
    core : Strategy | None (default: inner)
        The innermost strategy (under any DP wrapper): its `weighted_by_key` is the
        screened weight key, and a `LoraFedAvg` core supplies the report's weights.
    """

    invariants: tuple[str, ...] = ()

    def __init__(
        self,
        inner: Strategy,
        expected_shapes: Mapping[str, Sequence[int]] | None = None,
        *,
        core: Strategy | None = None,
    ) -> None:
        self.inner = inner
        self.core = inner if core is None else core
        self.weighted_by_key = str(getattr(self.core, "weighted_by_key", "num-examples"))
        self.dp_mode = "none"
        self.expected_shapes = None
        self.last_train_report: RoundReport | None = None
        self.last_evaluate_report: list[tuple[str, Metrics]] = []
        if expected_shapes is not None:
            self.set_expected(expected_shapes)

    def set_expected(self, shapes: Mapping[str, Sequence[int]]) -> None:
        """Set the expected keys and shapes, here and in a screening core."""
        super().set_expected(shapes)
        if isinstance(self.core, ReplyScreening):
            self.core.set_expected(shapes)

    def state_dict(self) -> dict[str, Any]:
        """The wrapped strategies' state between rounds (`strategy_state`)."""
        return strategy_state(self.inner)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what `state_dict` returned into the wrapped strategies."""
        load_strategy_state(self.inner, state)

    def check_reply(self, msg: Message, site: str) -> SiteCandidate:
        """A screening core's own checks (ExactLoRA accepts other ranks), else the shared ones."""
        if isinstance(self.core, ReplyScreening):
            return self.core.check_reply(msg, site)
        return super().check_reply(msg, site)

    def summary(self) -> None:
        """Log summary configuration of the strategy."""
        log(INFO, "\t├──> Screening: %s replies checked against the global adapter", type(self.core).__name__)
        if self.max_update_norm > 0:
            log(INFO, "\t│\t└── Update norm bound: %g (%s)", self.max_update_norm, self.update_norm_action)
        if self.min_sites > 0:
            log(INFO, "\t│\t└── Usable replies needed per round (strategy.min-sites): %d", self.min_sites)
        self.inner.summary()

    # --- training ---------------------------------------------------------------------

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The inner strategy's sampling; the global adapter is kept for the norm bound."""
        return self.inner.configure_train(server_round, arrays, self._train_config(arrays, config), grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Screen, then let the inner strategy aggregate the accepted replies.

        `TooFewSites` if fewer than `min_sites` remain, after the screening or after a
        screening core's own rejections."""
        self._require_expected()
        report = self.last_train_report = RoundReport(server_round=server_round)
        candidates = self.screen_replies(server_round, replies)
        if not candidates:
            report.rejected.sort()
            log(WARNING, "round %d: no valid update; the global adapter is unchanged", server_round)
            return None, None

        messages = self._clean_messages(candidates)
        arrays, metrics = self.inner.aggregate_train(server_round, messages)
        updates = self._updates(candidates)
        report.updates = [u for u in updates if u is not None]
        report.rejected.sort()  # independent of arrival order
        self.require_min_sites(server_round, [u.site for u in report.updates])
        if arrays is None:
            log(WARNING, "round %d: %s returned no update; the global adapter is unchanged",
                server_round, type(self.inner).__name__)
            return None, metrics
        arrays = self._checked_output(server_round, arrays)
        if arrays is not None and self.dp_mode != "none":
            self._warn_unequal_weights(server_round, [u.weight for u in report.updates])
        return arrays, metrics

    def _clean_messages(self, candidates: list[SiteCandidate]) -> list[Message]:
        """Fresh replies for the inner strategy: float32 arrays, metrics every site reported.

        Unchanged float32 arrays are shared with the original reply (no copy); Flower's
        robust strategies pop arrays from the records they get, so the records are new.
        A clipped update (and any update of another rank) carries its decoded state.
        """
        assert self.expected_shapes is not None
        common = _common_metric_keys([c.metrics for c in candidates])
        messages = []
        for candidate in candidates:
            assert candidate.message is not None
            original = next(iter(candidate.message.content.array_records.values()))
            arrays = {}
            for key in self.expected_shapes:
                if candidate.clip_factor is not None:  # moved toward the global by the bound
                    arrays[key] = Array(np.asarray(candidate.state[key], np.float32))
                elif np.dtype(original[key].dtype) == np.float32:
                    arrays[key] = original[key]
                else:
                    arrays[key] = Array(original[key].numpy().astype(np.float32))
            content = RecordDict(
                {
                    "arrays": ArrayRecord(arrays),
                    "metrics": MetricRecord({k: candidate.metrics[k] for k in common}),
                    # The site's name record, so a screening core reports the same sites.
                    **candidate.message.content.config_records,
                }
            )
            messages.append(Message(content=content, metadata=copy.copy(candidate.message.metadata)))
        return messages

    def _updates(self, candidates: list[SiteCandidate]) -> list[SiteUpdate | None]:
        """Report rows: a screening core's own weights and rejections, else `site_weights`."""
        report = self.last_train_report
        assert report is not None
        inner = self.core.last_train_report if isinstance(self.core, ReplyScreening) else None
        if inner is not None and inner.server_round == report.server_round:
            report.rejected.extend(inner.rejected)
            report.extra.update(inner.extra)
            weights = {(u.site, u.node_id): u.weight for u in inner.updates}
            report.extra["weights"] = type(self.core).__name__
            return [
                self._update(c, weights[(c.site, c.node_id)]) if (c.site, c.node_id) in weights else None
                for c in candidates
            ]
        kind, weights = self.site_weights(candidates)
        report.extra["weights"] = kind
        return [self._update(c, w) for c, w in zip(candidates, weights, strict=True)]

    def site_weights(self, candidates: list[SiteCandidate]) -> tuple[str, list[float]]:
        """(kind, weight per candidate) for the report; default: the `num-examples` shares."""
        total = math.fsum(c.num_examples for c in candidates)
        return "num-examples share", [c.num_examples / total for c in candidates]

    @staticmethod
    def _update(candidate: SiteCandidate, weight: float) -> SiteUpdate:
        return SiteUpdate(
            node_id=candidate.node_id,
            site=candidate.site,
            num_examples=candidate.num_examples,
            weight=weight,
            metrics=metric_dict([candidate.metrics]),
            bytes_up=candidate.bytes_up,
        )

    def _checked_output(self, server_round: int, arrays: ArrayRecord) -> ArrayRecord | None:
        """The global adapter's keys, order and shapes in float32; a non-finite result is refused."""
        assert self.expected_shapes is not None
        if set(arrays.keys()) != set(self.expected_shapes):
            raise RuntimeError(
                f"{type(self.inner).__name__} returned keys that differ from the global adapter's"
            )
        out = {}
        for key, shape in self.expected_shapes.items():
            values = np.asarray(arrays[key].numpy(), dtype=np.float32)
            # A screening core returns the shapes it documents (ExactLoRA's rank "full" is wider).
            if values.shape != shape and not isinstance(self.core, ReplyScreening):
                raise RuntimeError(f"{type(self.inner).__name__} returned {key} with shape {values.shape}, "
                                   f"expected {shape}")
            if not np.isfinite(values).all():
                log(ERROR, "round %d: %s produced non-finite values in %s; the global adapter is unchanged",
                    server_round, type(self.inner).__name__, key)
                assert self.last_train_report is not None
                self.last_train_report.extra["output-rejected"] = f"non-finite values in {key}"
                return None
            out[key] = Array(values)
        return ArrayRecord(out)

    def _warn_unequal_weights(self, server_round: int, weights: list[float]) -> None:
        if weights and max(weights) - min(weights) > 1e-9:
            log(WARNING, "round %d: strategy.dp: Flower's noise is calibrated for equal site weights "
                "(1/%d); this round's weights range %.3g..%.3g, so the privacy guarantee is weaker than "
                "strategy.dp-noise-multiplier suggests", server_round, len(weights), min(weights), max(weights))

    # --- evaluation -------------------------------------------------------------------

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The inner strategy's evaluation sampling."""
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """The inner strategy's aggregation over the content replies; per-site metrics kept."""
        content = self.screen_evaluate_replies(server_round, replies)
        return self.inner.aggregate_evaluate(server_round, content) if content else None


def strategy_state(strategy: Strategy) -> dict[str, Any]:
    """What `strategy`, and any strategy it wraps, keeps between rounds.

    A strategy with `state_dict()` (ours: `ReplyScreening`) gives its own; Flower's give
    the attributes listed in `FLOWER_STATE`; a DP wrapper adds the strategy it wraps.
    """
    if callable(getattr(strategy, "state_dict", None)):
        return {"own": strategy.state_dict()}
    state: dict[str, Any] = {}
    for cls, attributes in FLOWER_STATE:
        if isinstance(strategy, cls):
            state.update({name: getattr(strategy, name) for name in attributes})
    wrapped = getattr(strategy, "strategy", None)  # Flower's DP wrappers
    if isinstance(wrapped, Strategy):
        state["wrapped"] = strategy_state(wrapped)
    return state


def load_strategy_state(strategy: Strategy, state: Mapping[str, Any]) -> None:
    """Put back what `strategy_state` returned; raises ValueError if a part is missing."""
    name = type(strategy).__name__
    if callable(getattr(strategy, "load_state_dict", None)):
        strategy.load_state_dict(state.get("own", {}))
        return
    known = False
    for cls, attributes in FLOWER_STATE:
        if isinstance(strategy, cls):
            known = True
            for attribute in attributes:
                if attribute not in state:
                    raise ValueError(f"{name}: the saved state has no {attribute!r}")
                setattr(strategy, attribute, state[attribute])
    wrapped = getattr(strategy, "strategy", None)
    if isinstance(wrapped, Strategy):
        load_strategy_state(wrapped, state.get("wrapped", {}))
    elif not known and not type(strategy).__module__.startswith("flwr."):
        log(WARNING, "%s declares no state between rounds (no state_dict/load_state_dict): if it keeps "
            "any, the continued run starts it afresh", name)


class FlowerLoRA(ScreenedStrategy):
    """A Flower strategy class behind the screening; subclasses set `flower_class`.

    Parameters
    ----------
    expected_shapes : Mapping[str, Sequence[int]] | None (default: None)
        Keys and shapes of the global adapter.
    **flower_kwargs
        Passed to `flower_class` (sampling, record keys and its own parameters).
    """

    flower_class: ClassVar[type[FedAvg]] = FedAvg

    def __init__(self, expected_shapes: Mapping[str, Sequence[int]] | None = None, **flower_kwargs: Any) -> None:
        super().__init__(self.flower_class(**flower_kwargs), expected_shapes)

    @classmethod
    def flower_kwargs(cls, cfg: Mapping[str, Any]) -> dict[str, Any]:
        """The Flower class's own parameters from the run config; none by default."""
        del cfg
        return {}

    @classmethod
    def from_run_config(
        cls,
        cfg: Mapping[str, Any],
        expected_shapes: Mapping[str, Sequence[int]],
        validation_loss: Callable[[dict[str, np.ndarray]], float] | None = None,
        **fedavg_kwargs: Any,
    ) -> FlowerLoRA:
        """Build from the run config (`flower_kwargs`) and the factory's sampling settings."""
        del validation_loss  # none of Flower's strategies scores adapters
        return cls(expected_shapes, **fedavg_kwargs, **cls.flower_kwargs(cfg))


def _server_lr(cfg: Mapping[str, Any], name: str) -> float:
    return float(cfg["strategy.server-learning-rate"]) or DEFAULT_SERVER_LR[name]


@register("fedprox")
class LoraFedProx(FlowerLoRA):
    """Flower's FedProx: FedAvg at the coordinator; `proximal-mu` sent to every site.

    Sites add mu/2 ||w - w_global||^2 over the adapter to their loss (client_app passes the
    train config's `proximal-mu` to modeling/training.py). Key: `strategy.proximal-mu`.
    """

    flower_class = FedProx
    invariants = ("weights-sum-to-one",)

    @classmethod
    def flower_kwargs(cls, cfg: Mapping[str, Any]) -> dict[str, Any]:
        return {"proximal_mu": float(cfg["strategy.proximal-mu"])}


@register("fedavgm")
class LoraFedAvgM(FlowerLoRA):
    """Flower's FedAvgM: server-side SGD with momentum on the averaged update (Hsu et al. 2019).

    Keys: `strategy.server-learning-rate` (0 = Flower's 1.0), `strategy.server-momentum`
    (Flower's default 0.0 makes it FedAvg; Hsu et al. use 0.9).
    """

    flower_class = FedAvgM

    @classmethod
    def flower_kwargs(cls, cfg: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "server_learning_rate": _server_lr(cfg, "fedavgm"),
            "server_momentum": float(cfg["strategy.server-momentum"]),
        }


@register("fedadam")
class LoraFedAdam(FlowerLoRA):
    """Flower's FedAdam: a server-side Adam step on the averaged update (Reddi et al. 2020).

    Key: `strategy.server-learning-rate` (eta; 0 = 1e-2, see DEFAULT_SERVER_LR). beta_1 0.9,
    beta_2 0.99, tau 1e-3 are Flower's.
    """

    flower_class = FedAdam

    @classmethod
    def flower_kwargs(cls, cfg: Mapping[str, Any]) -> dict[str, Any]:
        return {"eta": _server_lr(cfg, "fedadam")}


@register("fedyogi")
class LoraFedYogi(FlowerLoRA):
    """Flower's FedYogi: a server-side Yogi step on the averaged update (Reddi et al. 2020).

    Key: `strategy.server-learning-rate` (eta; 0 = Flower's 1e-2). beta_1, beta_2, tau are Flower's.
    """

    flower_class = FedYogi

    @classmethod
    def flower_kwargs(cls, cfg: Mapping[str, Any]) -> dict[str, Any]:
        return {"eta": _server_lr(cfg, "fedyogi")}


@register("fedtrimmedavg")
class LoraFedTrimmedAvg(FlowerLoRA):
    """Flower's FedTrimmedAvg: per-coordinate mean after cutting `strategy.trim-beta` of each tail."""

    flower_class = FedTrimmedAvg

    @classmethod
    def flower_kwargs(cls, cfg: Mapping[str, Any]) -> dict[str, Any]:
        return {"beta": float(cfg["strategy.trim-beta"])}


@register("fedmedian")
class LoraFedMedian(FlowerLoRA):
    """Flower's FedMedian: the per-coordinate median of the site adapters."""

    flower_class = FedMedian


class _SelectingKrum(Krum):
    """Flower's Krum, remembering which reply it selected (for the report's weights)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.selected: list[int] = []  # indices into the replies of the last round

    def state_dict(self) -> dict[str, Any]:
        """Nothing carries over: `selected` is the last round's choice."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Nothing to restore (see `state_dict`)."""
        del state

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """MultiKrum.aggregate_train with num_nodes_to_select = 1, keeping the choice."""
        valid = valid_train_replies(self, replies)
        self.selected = []
        if not valid:
            return None, None
        contents = [msg.content for msg in valid]
        n, f = len(contents), self.num_malicious_nodes
        if n <= 2 * f + 2:
            log(WARNING, "round %d: Krum with strategy.krum-byzantine = %d needs more than %d sites, "
                "got %d; its Byzantine guarantee does not hold", server_round, f, 2 * f + 2, n)
        chosen = select_multikrum(contents, num_malicious_nodes=f, num_nodes_to_select=self.num_nodes_to_select)
        self.selected = [next(i for i, c in enumerate(contents) if c is pick) for pick in chosen]
        return (
            aggregate_arrayrecords(chosen, self.weighted_by_key),
            self.train_metrics_aggr_fn(chosen, self.weighted_by_key),
        )


@register("krum")
class LoraKrum(FlowerLoRA):
    """Flower's Krum: the one update closest to its n - f - 2 nearest neighbours.

    Key: `strategy.krum-byzantine` (f, the number of malicious sites tolerated; Krum's
    guarantee needs more than 2f + 2 sites). Report weights: 1 for the selected site, 0 otherwise.
    """

    flower_class = _SelectingKrum

    @classmethod
    def flower_kwargs(cls, cfg: Mapping[str, Any]) -> dict[str, Any]:
        return {"num_malicious_nodes": int(cfg["strategy.krum-byzantine"])}

    def site_weights(self, candidates: list[SiteCandidate]) -> tuple[str, list[float]]:
        """1 for the update Krum selected, 0 for the others."""
        assert isinstance(self.core, _SelectingKrum)
        selected = set(self.core.selected)
        return "krum selection", [1.0 if i in selected else 0.0 for i in range(len(candidates))]


# --- differential privacy ---------------------------------------------------------------


@dataclass(frozen=True)
class DPSettings:
    """`strategy.dp*` keys: the mode, the Gaussian noise multiplier, the clipping norm (the
    initial one for adaptive clipping) and the number of sites sampled per round."""

    mode: str
    noise_multiplier: float
    clipping_norm: float
    num_sampled_sites: int

    @classmethod
    def from_run_config(cls, cfg: Mapping[str, Any]) -> DPSettings:
        """0 sampled sites means `strategy.min-sites` (the factory samples at least that many)."""
        return cls(
            mode=cfg["strategy.dp"],
            noise_multiplier=float(cfg["strategy.dp-noise-multiplier"]),
            clipping_norm=float(cfg["strategy.dp-clipping-norm"]),
            num_sampled_sites=int(cfg["strategy.dp-num-sampled-sites"]) or int(cfg["strategy.min-sites"]),
        )


def dp_wrapper(strategy: Strategy, dp: DPSettings) -> Strategy:
    """Flower's DP wrapper for `dp.mode` around `strategy`."""
    if dp.mode == "server-fixed":
        return DifferentialPrivacyServerSideFixedClipping(
            strategy, dp.noise_multiplier, dp.clipping_norm, dp.num_sampled_sites
        )
    if dp.mode == "client-fixed":
        return DifferentialPrivacyClientSideFixedClipping(
            strategy, dp.noise_multiplier, dp.clipping_norm, dp.num_sampled_sites
        )
    if dp.mode == "server-adaptive":
        return DifferentialPrivacyServerSideAdaptiveClipping(
            strategy, dp.noise_multiplier, dp.num_sampled_sites, initial_clipping_norm=dp.clipping_norm
        )
    if dp.mode == "client-adaptive":
        return DifferentialPrivacyClientSideAdaptiveClipping(
            strategy, dp.noise_multiplier, dp.num_sampled_sites, initial_clipping_norm=dp.clipping_norm
        )
    raise ValueError(f"strategy.dp: {dp.mode!r} is not one of {list(DP_MODES)}")


def with_dp(strategy: Strategy, dp: DPSettings, expected_shapes: Mapping[str, Sequence[int]] | None = None) -> Strategy:
    """`strategy` with Flower's DP wrapper for `dp.mode` between the screening and the aggregation.

    A `ScreenedStrategy` gets the wrapper around its inner strategy; any other strategy
    (a `LoraFedAvg`, whose own screening then sees only clean replies) is wrapped and
    screened anew. DP strategies keep none of the weighted-average invariants.
    """
    if dp.mode == "none":
        return strategy
    if isinstance(strategy, ScreenedStrategy):
        strategy.inner = dp_wrapper(strategy.inner, dp)
        screened = strategy
    else:
        shapes = expected_shapes if expected_shapes is not None else getattr(strategy, "expected_shapes", None)
        screened = ScreenedStrategy(dp_wrapper(strategy, dp), shapes, core=strategy)
    screened.dp_mode = dp.mode
    screened.invariants = ()
    if not plain_fedavg(screened.core):
        log(WARNING, "strategy.dp = %s wraps %s, which does not aggregate by plain FedAvg: Flower's DP noise "
            "and accounting assume equal-weight FedAvg, so the privacy guarantee does not hold as stated",
            dp.mode, type(screened.core).__name__)
    return screened


def plain_fedavg(strategy: Strategy) -> bool:
    """Whether `strategy` aggregates by FedAvg's weighted average (what Flower's DP assumes)."""
    if isinstance(strategy, LoraFedAvg):
        cls = type(strategy)
        return (
            cls.aggregation_weights is LoraFedAvg.aggregation_weights
            and cls.weighted_average is LoraFedAvg.weighted_average
        )
    return isinstance(strategy, FedAvg) and type(strategy).aggregate_train is FedAvg.aggregate_train
