"""Which apps a hospital runs: the SHA-256 digests of the Flower App Bundles (FABs) it reviewed.

`flwr run` ships the app to every site, where its ClientApp reads the notes: whoever can
submit a run would run code inside every hospital. A site lists the apps it approved in its
SuperNode's node config, `approved-apps='<digest>,<digest>'`, and starts its ClientApps with
`fedmedlora site-exec` (fedmedlora/site_exec.py), which hashes each FAB it receives and
refuses, before any of the app's code is installed or imported, one not listed. The digest
is that of the FAB's bytes: `fedmedlora app-digest` computes it from an app folder (the FAB
`flwr run` builds of it) or a .fab file.

This module imports nothing of the app's own packages: the launcher imports it before it
loads the app, and an app module imported here first would shadow the FAB's copy.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

APPROVED_APPS_KEY = "approved-apps"  # node config: the approved FAB digests, separated by commas
# Set by the launcher, to the digest it checked, before the app loads; client_app/app.py refuses
# to run at a site whose node config lists approved apps when it is missing (a plain executor).
APPROVED_APP_ENV = "FEDMEDLORA_APPROVED_APP"
_DIGEST = re.compile(r"[0-9a-f]{64}")


class AppNotApproved(RuntimeError):
    """The site refuses to run this app; the message is the refusal the coordinator sees."""


def parse_digests(text: str) -> tuple[str, ...]:
    """`approved-apps`' value: SHA-256 digests (64 hex digits) separated by commas."""
    digests = tuple(part.strip().lower() for part in str(text).split(",") if part.strip())
    for digest in digests:
        if not _DIGEST.fullmatch(digest):
            raise ValueError(f"node config {APPROVED_APPS_KEY}: {digest!r} is not a SHA-256 digest (64 hex "
                             "digits); list the digests `fedmedlora app-digest` prints, separated by commas")
    return digests


def fab_digest(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def check_app(content: bytes, node_config: Mapping[str, Any]) -> str:
    """The digest of the FAB `content` when `node_config` approves it; else AppNotApproved,
    whose message names the site, the digest and what to do."""
    site = f"site {node_config['site-name']}" if node_config.get("site-name") else "this site"
    if not isinstance(content, bytes):
        raise AppNotApproved(f"{site}: the app bundle arrived as {type(content).__name__}, not bytes; refused")
    digest = fab_digest(content)
    if APPROVED_APPS_KEY not in node_config:
        raise AppNotApproved(f"{site} runs only approved apps, but its node config has no {APPROVED_APPS_KEY}; "
                             f"refused app sha256 {digest}")
    try:
        approved = parse_digests(node_config[APPROVED_APPS_KEY])
    except ValueError as err:
        raise AppNotApproved(f"{site}: {err}; refused app sha256 {digest}") from None
    if digest not in approved:
        raise AppNotApproved(
            f"{site} refuses app sha256 {digest}: not in its node config's {APPROVED_APPS_KEY} "
            f"({len(approved)} approved); a hospital runs an app once it has reviewed it and added its digest")
    return digest


def app_digest(path: Path) -> str:
    """The digest a site pins for an app: of a .fab file as it is, or of the FAB that `flwr run`
    (and `flwr build`) make of an app folder."""
    path = Path(path).expanduser()
    if path.is_dir():
        from strategies.flower_compat import build_fab

        return fab_digest(build_fab(path.resolve()))
    if path.is_file():
        return fab_digest(path.read_bytes())
    raise FileNotFoundError(f"{path}: neither an app folder nor a .fab file")
