"""Per-round progress for the coordinator's console and `metrics.jsonl`: who trained on
how much, their losses and F1, and the bytes each site sent and received.

Bytes are tensor payload: the global adapter down with every train and evaluate message,
the site's adapter up, plus whatever a strategy exchanged with the sites beyond that
(the round report's `extra["extra-traffic"]`, by site: Fed-MedLoRA+ with
`strategy.validation = "sites"` sends K candidate adapters down and gets K losses up)."""

from __future__ import annotations

import logging
from typing import Any

from strategies.dp_budget import DpBudget, effective_multiplier
from strategies.wrapper import StrategyWrapper

log = logging.getLogger(__name__)


class RoundReporter:
    def __init__(self, strategy: StrategyWrapper, adapter_bytes: int, full_model_bytes: int, num_rounds: int,
                 dp: DpBudget | None = None) -> None:
        self.strategy = strategy
        self.dp = dp  # with strategy.dp: the (epsilon, delta) spent is in every round's record and table
        self.adapter_bytes = adapter_bytes
        self.full_model_bytes = full_model_bytes
        self.num_rounds = num_rounds
        self.bytes_up = 0
        self.bytes_down = 0
        self.extra_bytes_up = 0  # part of bytes_up / bytes_down: the strategy's own messages
        self.extra_bytes_down = 0
        self.site_rounds = 0
        self.dp_multipliers: list[float] = []  # per round: the noise multiplier its weights give

    def round_record(self, server_round: int, server_metrics: dict[str, float]) -> dict[str, Any]:
        record: dict[str, Any] = {"round": server_round, "coordinator": server_metrics}
        if server_round == 0:
            log.info("round 0 (zero-shot, initial adapter): coordinator val-loss %.4f, strict-f1 %.3f, "
                     "lenient-f1 %.3f", server_metrics["val-loss"], server_metrics["strict-f1"],
                     server_metrics["lenient-f1"])
            return record
        train = self.strategy.round_report(server_round)
        evaluated = dict(train.evaluated)
        extra_traffic = dict(train.extra.get("extra-traffic") or {})
        for traffic in extra_traffic.values():  # every site the strategy messaged, accepted or not
            self.extra_bytes_up += traffic["bytes-up"]
            self.extra_bytes_down += traffic["bytes-down"]
            self.bytes_up += traffic["bytes-up"]
            self.bytes_down += traffic["bytes-down"]
        sites = []
        lines = [f"round {server_round}/{self.num_rounds}:",
                 f"  {'site':<14}{'examples':>9}{'weight':>8}{'train-loss':>11}{'val-loss':>9}"
                 f"{'strict-f1':>10}{'lenient-f1':>11}{'re-strict':>10}{'re-lenient':>11}{'up MB':>8}{'down MB':>8}"]
        for update in train.updates:
            ev = evaluated.get(update.site, {})
            down = self.adapter_bytes * (2 if ev else 1)  # train message, plus evaluate message
            up = update.bytes_up
            self.bytes_up += up
            self.bytes_down += down
            self.site_rounds += 1
            row = {"site": update.site, "node-id": update.node_id, "num-examples": update.num_examples,
                   "weight": update.weight, "sha256": update.sha256, "train": update.metrics, "evaluate": ev}
            if update.reported:
                row["reported"] = update.reported
            extra = extra_traffic.get(update.site)
            if extra:  # already in the totals above; shown in the site's row too
                down += extra["bytes-down"]
                up += extra["bytes-up"]
                row["extra-bytes-down"] = extra["bytes-down"]
                row["extra-bytes-up"] = extra["bytes-up"]
            sites.append({**row, "bytes-up": up, "bytes-down": down})
            lines.append(
                f"  {update.site:<14}{update.num_examples:>9}{update.weight:>8.3f}"
                f"{update.metrics.get('train-loss', float('nan')):>11.4f}{ev.get('val-loss', float('nan')):>9.4f}"
                f"{ev.get('strict-f1', float('nan')):>10.3f}{ev.get('lenient-f1', float('nan')):>11.3f}"
                f"{ev.get('re-strict-f1', float('nan')):>10.3f}{ev.get('re-lenient-f1', float('nan')):>11.3f}"
                f"{up / 1e6:>8.2f}{down / 1e6:>8.2f}")
        for site, reason in train.rejected:
            lines.append(f"  {site:<14} rejected: {reason}")
        lines.append(f"  coordinator validation: val-loss {server_metrics['val-loss']:.4f}, strict-f1 "
                     f"{server_metrics['strict-f1']:.3f}, lenient-f1 {server_metrics['lenient-f1']:.3f}, "
                     f"re-strict-f1 {server_metrics.get('re-strict-f1', float('nan')):.3f}, "
                     f"re-lenient-f1 {server_metrics.get('re-lenient-f1', float('nan')):.3f}")
        lines.append(f"  communication per site: {self.adapter_bytes / 1e6:.2f} MB up, "
                     f"{100 * self.adapter_bytes / self.full_model_bytes:.2f}% of a full-model update "
                     f"({self.full_model_bytes / 1e6:.0f} MB in bf16)")
        if extra_traffic:
            down = max(t["bytes-down"] for t in extra_traffic.values())
            up = max(t["bytes-up"] for t in extra_traffic.values())
            lines.append(f"  strategy messages ({len(extra_traffic)} site(s), in the table above): "
                         f"{down / 1e6:.2f} MB down and {up} B up per site")
        error = train.extra.get("aggregation-error")
        if error and error["modules"]:
            lines.append(f"  aggregation error ||sum p_k B_k A_k - B A|| / ||sum p_k B_k A_k||: {error['overall']:.3g} "
                         f"overall, max {error['max']:.3g} over {error['modules']} module(s)")
        secure = train.extra.get("secure-aggregation")
        if secure:
            lines.append(f"  secure aggregation (SecAgg+): the coordinator saw only the weighted sum of "
                         f"{secure['sites']} site(s); {secure['seconds']:.1f} s, {secure['bytes-sent'] / 1e6:.2f} MB "
                         f"sent and {secure['bytes-received'] / 1e6:.2f} MB received")
        if self.dp is not None:
            weights = [u.weight for u in train.updates]
            self.dp_multipliers = [*self.dp_multipliers[:server_round - 1],
                                   effective_multiplier(self.dp.noise_multiplier, self.dp.sampled_sites, weights)]
            record["dp"] = self.dp_spent(server_round)
            lines.append(f"  differential privacy: epsilon {record['dp']['epsilon']:.3f} spent after "
                         f"{server_round} round(s) (delta {self.dp.delta:g}; noise multiplier "
                         f"{self.dp.noise_multiplier:g} configured, {record['dp']['noise-multiplier-effective']:.3g} "
                         f"towards the largest of this round's weights {max(weights, default=0):.3f}; one round "
                         f"alone {record['dp']['epsilon-round']:.3f})")
        log.info("\n".join(lines))
        record["sites"] = sites
        record["rejected"] = [{"site": s, "reason": r} for s, r in train.rejected]
        if train.extra:
            record["strategy"] = train.extra
        return record

    def dp_spent(self, rounds: int) -> dict[str, float]:
        """epsilon after `rounds` rounds (composed by the accountant, not summed), each round at
        the noise multiplier its weights gave (strategies/dp_budget.py `effective_multiplier`;
        the configured one for a round without a record), and that of the last round alone."""
        assert self.dp is not None
        multipliers = [*self.dp_multipliers[:rounds],
                       *[self.dp.noise_multiplier] * max(rounds - len(self.dp_multipliers), 0)]
        last = multipliers[-1] if multipliers else self.dp.noise_multiplier
        return {"epsilon": self.dp.epsilon_of(multipliers), "epsilon-round": self.dp.epsilon_of([last]),
                "delta": self.dp.delta, "noise-multiplier": self.dp.noise_multiplier,
                "noise-multiplier-effective": last, "rounds": rounds}

    # Running totals: what a checkpoint keeps so a continued run's totals cover every round.
    _STATE = ("bytes_up", "bytes_down", "extra_bytes_up", "extra_bytes_down", "site_rounds")

    def state_dict(self) -> dict[str, Any]:
        return {**{name.replace("_", "-"): int(getattr(self, name)) for name in self._STATE},
                "dp-multipliers": list(self.dp_multipliers)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in self._STATE:
            setattr(self, name, int(state[name.replace("_", "-")]))
        self.dp_multipliers = [float(z) for z in state.get("dp-multipliers", [])]

    def totals(self) -> dict[str, Any]:
        per_site_round = self.adapter_bytes
        return {
            "adapter-bytes": self.adapter_bytes,
            "full-model-bytes-bf16": self.full_model_bytes,
            "bytes-up-total": self.bytes_up,
            "bytes-down-total": self.bytes_down,
            "extra-bytes-up-total": self.extra_bytes_up,
            "extra-bytes-down-total": self.extra_bytes_down,
            "site-rounds": self.site_rounds,
            "upload-ratio-to-full-model": per_site_round / self.full_model_bytes,
            "upload-reduction-percent": 100 * (1 - per_site_round / self.full_model_bytes),
        }

    def log_totals(self) -> None:
        t = self.totals()
        log.info("communication: %.2f MB up and %.2f MB down over %d site-rounds; each upload is %.2f%% "
                 "of a full-model update (%.1f%% less)", t["bytes-up-total"] / 1e6, t["bytes-down-total"] / 1e6,
                 t["site-rounds"], 100 * t["upload-ratio-to-full-model"], t["upload-reduction-percent"])
        if t["extra-bytes-down-total"] or t["extra-bytes-up-total"]:
            log.info("  of which the strategy's own messages (site-side scoring): %.2f MB down, %d B up",
                     t["extra-bytes-down-total"] / 1e6, t["extra-bytes-up-total"])
