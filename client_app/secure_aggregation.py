"""The site's side of secure aggregation (`strategy.secure-aggregation`): Flower's SecAgg+ mod.

Flower's `secaggplus_mod` runs the protocol's four stages (keys, key shares, the masked
adapter, the unmasking shares) on train messages that carry its `secaggplus` record; in the
masked-adapter stage it calls the train handler and expects the older `fitres.*` records.
This module only adapts our train reply to those records and checks that the adapter fits
the quantization the protocol uses; the cryptography is Flower's
(docs/threat-model.md, "Secure aggregation").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import Context, Message, RecordDict

from strategies.flower_compat import fitres_record, is_secaggplus, secaggplus_client_mod
from wire import protocol


def is_secure_aggregation(msg: Message) -> bool:
    """A SecAgg+ stage message (or reply): it carries Flower's `secaggplus` record."""
    return is_secaggplus(msg)


REQUIRE_NODE_KEY = "require-secure-aggregation"  # node config: this site trains only under SecAgg+


def requires_secure_aggregation(context: Context) -> bool:
    """The site's own node config says it sends adapters only masked (the run config is the
    coordinator's, so only the site can insist)."""
    return str(context.node_config.get(REQUIRE_NODE_KEY, "false")).strip().lower() in ("true", "1", "yes")


def secure_aggregation_mod(msg: Message, context: Context, call_next) -> Message:
    """Flower's SecAgg+ mod around the train handler; other train messages pass through,
    unless this site requires secure aggregation: then it refuses them before training."""
    if not is_secure_aggregation(msg):
        if requires_secure_aggregation(context):
            from .failures import SiteFailure

            raise SiteFailure(f"this site requires secure aggregation (node config {REQUIRE_NODE_KEY} = true) "
                              "and refuses a plain training round; set strategy.secure-aggregation = true")
        return call_next(msg, context)
    keys = sent_keys(msg.content)

    def train_as_fitres(inner: Message, ctx: Context) -> Message:
        return Message(as_fitres(call_next(inner, ctx).content, keys, ctx.run_config), reply_to=inner)

    return secaggplus_client_mod(msg, context, train_as_fitres)


def sent_keys(content: RecordDict) -> list[str]:
    """The tensors a train reply holds, in the order the coordinator names the sum's tensors:
    the global adapter's keys, cut to the factors the round's rule sends (FFA-LoRA: B)."""
    if protocol.ARRAYS not in content.array_records:
        return []
    config = content.config_records.get(protocol.CONFIG, {})
    _, send = protocol.factor_rule(config)
    return list(protocol.selected_factors(dict.fromkeys(content[protocol.ARRAYS].keys()), send))


def as_fitres(content: RecordDict, keys: list[str], run_config: Mapping[str, Any]) -> RecordDict:
    """Our train reply as the `fitres.*` records Flower's mod reads: the adapter's tensors in
    the order of the global adapter received (the coordinator names the sum's tensors by
    it), the count as `num_examples`; the metrics and the site's records stay as they are."""
    from settings.config import validate

    from .failures import SiteFailure

    arrays = content.array_records.get(protocol.ARRAYS)
    if arrays is None or sorted(arrays.keys()) != sorted(keys):
        raise SiteFailure("secure aggregation: the trained adapter's tensors differ from the global adapter's")
    cfg = validate(run_config)
    count = int(content[protocol.METRICS]["num-examples"])
    max_weight, clipping = cfg.strategy.secagg_max_weight, cfg.strategy.secagg_clipping_range
    if count > max_weight:
        raise SiteFailure(f"secure aggregation: this site has {count} training instances, more than "
                          f"strategy.secagg-max-weight = {max_weight}; raise it at the coordinator")
    tensors = [arrays[k].numpy() for k in keys]
    # Before quantization: Flower's quantize turns NaN into -2^31, which wraps modulo 2^32 and
    # becomes a finite, wrong sum that no check at the coordinator can tell apart.
    bad = [k for k, t in zip(keys, tensors, strict=True) if not np.isfinite(t).all()]
    if bad:
        raise SiteFailure(f"secure aggregation: the trained adapter has non-finite values in {len(bad)} tensor(s); "
                          "it is not sent")
    largest = max(float(np.abs(t).max()) for t in tensors) * count / max_weight
    if not largest <= clipping:  # Flower's quantization would clip these values silently
        raise SiteFailure(f"secure aggregation: adapter values scaled by this site's weight reach {largest:.3g}, "
                          f"outside strategy.secagg-clipping-range = {clipping:g}; raise it at the coordinator")
    reply = fitres_record(tensors, count)
    for name, record in content.items():
        if name != protocol.ARRAYS:
            reply[name] = record
    return reply
