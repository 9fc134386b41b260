"""Shared fixtures: tiny random models (no download) with the real tokenizer of the
embedded default, so every code path runs on real tokenization in seconds, a tiny random
BERT with a WordPiece vocabulary built offline (token classification), and the tiny
synthetic corpus of the loopback deployments (tests/support/deployment.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.deployment import tiny_corpus  # noqa: F401 - fixture of test_deploy.py and test_faults.py
from support.tiny_models import make_tiny_bert, make_tiny_model


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    from modeling.base import materialise_embedded_default

    return materialise_embedded_default()


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, default_model_dir) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-llama"), "llama", default_model_dir)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory, default_model_dir) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-qwen2"), "qwen2", default_model_dir)


def pytest_itemcollected(item: pytest.Item) -> None:
    """Every test not marked `e2e` (a real Flower run) or `compose` (the Docker engine) is
    `unit`: `pytest -m unit` is the fast tier. Marked as each test is collected, before `-m`
    selects."""
    if item.get_closest_marker("e2e") is None and item.get_closest_marker("compose") is None:
        item.add_marker(pytest.mark.unit)


@pytest.fixture()
def site_log():
    """What the site's own loggers (client_app.*) write during the test: the site's local
    log (a ClientApp process's output, a site worker's worker.log). `.getvalue()` reads it."""
    import io
    import logging

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("client_app")
    logger.addHandler(handler)
    yield stream
    logger.removeHandler(handler)
