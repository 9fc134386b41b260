"""Logging for the coordinator, the sites and the CLI: our packages' INFO lines to the
console, and optionally everything to a file."""

from __future__ import annotations

import logging
from pathlib import Path

OUR_PACKAGES = ("server_app", "client_app", "strategies", "modeling", "clinical_ie", "data_loaders", "wire", "settings", "fedmedlora")
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(log_file: Path | None = None) -> None:
    """Idempotent: handlers are added once per process (a simulation reuses processes)."""
    handlers: list[logging.Handler] = []
    if log_file is not None:
        file_handler = logging.FileHandler(log_file)
        file_handler.setFormatter(logging.Formatter(_FORMAT))
        logging.getLogger().addHandler(file_handler)  # Flower's own lines too
        logging.getLogger().setLevel(logging.INFO)
        handlers.append(file_handler)
    for name in OUR_PACKAGES:
        ours = logging.getLogger(name)
        ours.setLevel(logging.INFO)
        if not getattr(ours, "_fedmedlora_console", False):
            console = logging.StreamHandler()
            console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
            ours.addHandler(console)
            ours._fedmedlora_console = True  # type: ignore[attr-defined]
        for handler in handlers:
            ours.addHandler(handler)
        ours.propagate = False  # Flower's handler on the root would print it twice
    # Flower's log streamer posts over httpx: logging those posts would stream them in a loop.
    logging.getLogger("httpx").setLevel(logging.WARNING)
