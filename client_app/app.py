"""ClientApp: one hospital's local LoRA training and validation.

Only adapter arrays, scalar metrics and the site's name leave the site. Errors sent to
the coordinator say what kind of thing failed and give a site error id, never a path, a
document id or note text; the full detail stays in this site's log under that id
(`failure_reason`, client_app/failures.py).

This module stays light (Flower's imports only): in a deployment Flower imports it in a
fresh process for every message, and with `site-worker` in the node config that process
only forwards the message to the site's warm worker (client_app/worker.py). The handlers
and their model stack (client_app/handlers.py) are imported where the work runs.
"""

from __future__ import annotations

import os
import time

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from wire import protocol

from . import timings
from .failures import SiteFailure, failure_reason

_IMPORT_STARTED = time.time()


def approved_app_mod(msg: Message, context: Context, call_next) -> Message:
    """A site whose node config lists `approved-apps` starts its ClientApps with `fedmedlora
    site-exec`, which checks the app's digest before any of its code runs and says so in
    FEDMEDLORA_APPROVED_APP (fedmedlora/app_pin.py). Without that (Flower's own executor,
    or subprocess isolation) the pin would silently check nothing: refuse instead. This
    catches a misconfigured site running this app; the check itself is site-exec's."""
    if "approved-apps" in context.node_config and not os.environ.get("FEDMEDLORA_APPROVED_APP"):
        raise SiteFailure("this site's node config lists approved-apps, but its ClientApps are not started by "
                          "`fedmedlora site-exec`, so no app digest was checked; run the SuperNode with "
                          "--isolation process and `fedmedlora site-exec` beside it")
    return call_next(msg, context)


def site_worker_mod(msg: Message, context: Context, call_next) -> Message:
    """With `site-worker` in the node config, run the message in the site's warm worker."""
    own = timings.begin_message(_IMPORT_STARTED, _IMPORTED)
    folder = context.node_config.get("site-worker")
    if not folder:
        return call_next(msg, context)
    from pathlib import Path

    from .worker import RemoteHandlerError, WorkerError, forward

    try:
        started = time.perf_counter()
        reply, worker_ready = forward(Path(str(folder)).expanduser(), msg, context)
    except RemoteHandlerError as err:
        if err.type_name == SiteFailure.__name__:  # the handler's own safe message (_report_safely)
            raise SiteFailure(str(err)) from None
        raise SiteFailure(failure_reason(f"{err.type_name} in the site worker", str(err))) from None
    except WorkerError as err:  # the coordinator may not know this site's name yet (round 1): say it
        name = context.node_config.get("site-name")
        reason = failure_reason(err.category, str(err))  # the folder, its owner and mode stay here
        raise SiteFailure(f"site {name}: {reason}" if name else reason) from None
    if worker_ready is not None:  # the wait for a fresh worker to answer
        own.process_start += worker_ready - started
    timings.add_to_reply(reply, own)
    return reply


def transport_mod(msg: Message, context: Context, call_next) -> Message:
    """Adapters travel packed and in `transport.encoding` (wire/transport.py): the handlers and
    client-side DP clipping see float32 tensors, and the reply's arrays leave packed."""
    from wire.audit import AuditError
    from wire.transport import EncodingError, check_encoding, decode_content, encode_content

    from .audit_log import site_audit

    encoding = str(context.run_config.get("transport.encoding", "float32"))
    try:
        check_encoding(encoding)
        if msg.has_content():
            decode_content(msg.content)
    except (EncodingError, ValueError) as err:
        raise SiteFailure(f"the coordinator's message cannot be read: {err}") from None
    try:
        audit = site_audit(context)
    except AuditError as err:
        raise SiteFailure(f"this site's audit trail: {err}") from None
    if audit is not None:
        audit.received(msg)
    try:
        reply = call_next(msg, context)
    except Exception as err:
        if audit is not None:  # the error goes back instead of a reply: the trail says so, sealed
            audit.failed(msg, str(err) if isinstance(err, SiteFailure) else type(err).__name__)
        raise
    if reply.has_content():
        encode_content(reply.content, encoding)
    if audit is not None:
        audit.sent(msg, reply)
    return reply


def _dp_clipping(msg: Message, context: Context, call_next) -> Message:
    from strategies import dp_clipping_mod  # Flower's client-side DP clipping when strategy.dp = client-*

    return dp_clipping_mod(msg, context, call_next)


def _secure_aggregation(msg: Message, context: Context, call_next) -> Message:
    from .secure_aggregation import secure_aggregation_mod  # Flower's SecAgg+ when strategy.secure-aggregation

    return secure_aggregation_mod(msg, context, call_next)


def _handlers():
    started = time.perf_counter()
    from . import handlers

    timings.current().imports += time.perf_counter() - started
    return handlers


# In this order: the pin's check first; the worker decodes and encodes.
app = ClientApp(mods=[approved_app_mod, site_worker_mod, transport_mod])


@app.train(mods=[_secure_aggregation, _dp_clipping])
def train(msg: Message, context: Context) -> Message:
    return _handlers().train(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return _handlers().evaluate(msg, context)


@app.evaluate(protocol.SCORE_ACTION)  # message type "evaluate.score": Fed-MedLoRA+ with strategy.validation = sites
def score(msg: Message, context: Context) -> Message:
    """The validation loss of each of the round's candidate adapters on this site's data."""
    return _handlers().score(msg, context)


_IMPORTED = time.time()
