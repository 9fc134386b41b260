"""What a site tells the coordinator when it fails: `SiteFailure` carries a message that
is safe to send, and `failure_reason` keeps the details (paths, lines, document ids) in the
site's own log under an id the message names."""

from __future__ import annotations

import logging
import secrets


class SiteFailure(RuntimeError):
    """An error whose message is safe to send to the coordinator."""


def failure_reason(category: str, detail: str) -> str:
    """What the coordinator is told of a failure: `category` and a fresh site error id.
    `detail` names paths, lines and document ids (file names often hold MRNs or patient
    names), so it goes to this site's log only, under the same id, for the site's staff."""
    from settings.logs import setup_logging

    setup_logging()  # idempotent; a ClientApp that only forwards to the site worker has none yet
    error_id = secrets.token_hex(4)
    logging.getLogger(__name__).error("site error %s: %s", error_id, detail)
    return f"{category} (site error {error_id}; details in the site's log)"
