"""A site's optimizer moments between rounds, kept in Flower's per-node `Context.state`.

Flower keeps a node's Context for the whole run, in simulation and in deployment (the
SuperNode hands it to each message's ClientApp process and takes it back; the warm
worker returns it with its reply), so the moments outlive the process that trained a
round. They are kept for the next round only: state saved after round r is used by
round r + 1 and otherwise dropped. A resumed run is a new Flower run with empty node
state, so its sites start the optimizer afresh (reported as `optimizer-restored` 0).
The moments never leave the site: Context.state is not part of any message."""

from __future__ import annotations

import logging

import torch
from flwr.app import ConfigRecord, Context

from modeling.training import OptimizerState
from wire.arrays import from_arrayrecord, to_arrayrecord

log = logging.getLogger(__name__)

MOMENTS = "optimizer-moments"
META = "optimizer-meta"


def load(context: Context, server_round: int) -> OptimizerState | None:
    """The moments saved after the previous round, or None (first round, a resumed run,
    or a round missed by this site)."""
    if MOMENTS not in context.state.array_records or META not in context.state.config_records:
        return None
    meta = context.state.config_records[META]
    if int(meta["round"]) != server_round - 1:
        log.info("optimizer state from round %s does not precede round %d; starting it afresh",
                 meta["round"], server_round)
        return None
    moments = {name: torch.from_numpy(array.copy())
               for name, array in from_arrayrecord(context.state.array_records[MOMENTS]).items()}
    return OptimizerState(moments, int(meta["step"]))


def save(context: Context, state: OptimizerState | None, server_round: int) -> None:
    """Keep `state` for round `server_round + 1`; None forgets what was kept."""
    if state is None:
        for records, key in ((context.state.array_records, MOMENTS), (context.state.config_records, META)):
            if key in records:
                del context.state[key]
        return
    context.state[MOMENTS] = to_arrayrecord({name: t.float().numpy() for name, t in state.moments.items()})
    context.state[META] = ConfigRecord({"round": server_round, "step": state.step})
