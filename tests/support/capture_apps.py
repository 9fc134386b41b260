"""The project's ServerApp and ClientApp with every message they exchange recorded, for
tests/test_privacy.py (see tests/support/capture.py).

A run uses them when its app's pyproject.toml names them as components:

    [tool.flwr.app.components]
    serverapp = "tests.support.capture_apps:serverapp"
    clientapp = "tests.support.capture_apps:clientapp"

(the test runs a copy of the project with those two lines changed), with
FEDMEDLORA_CAPTURE_DIR set in the environment of the SuperLink and the SuperNodes. The
messages still go to the unchanged `client_app.app:app` and `server_app.app:app`: the
ClientApp here hands each message to the project's, inside `capture_mod`; the ServerApp
runs the project's with a `RecordingGrid`.
"""

from __future__ import annotations

import os

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from client_app.app import app as site_app
from server_app.app import app as coordinator_app
from wire import protocol

from .capture import CAPTURE_ENV, RecordingGrid, capture_dir, capture_mod


def _folder():
    folder = capture_dir()
    if folder is None:
        raise RuntimeError(f"tests.support.capture_apps records messages: set {CAPTURE_ENV} to a folder")
    return folder


clientapp = ClientApp(mods=[capture_mod])


@clientapp.train()
def train(msg: Message, context: Context) -> Message:
    _folder()
    return site_app(msg, context)


@clientapp.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    _folder()
    return site_app(msg, context)


@clientapp.evaluate(protocol.SCORE_ACTION)
def score(msg: Message, context: Context) -> Message:
    _folder()
    return site_app(msg, context)


serverapp = ServerApp()


@serverapp.main()
def main(grid: Grid, context: Context) -> None:
    path = _folder() / f"coordinator-{os.getpid()}.jsonl"
    coordinator_app(RecordingGrid(grid, path), context)
