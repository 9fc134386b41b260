"""The coordinator's audit trail: `audit.jsonl` in the run folder, append-only and
hash-chained (wire/audit.py; docs/threat-model.md, "Audit trail").

Lines: `run-start` (run id, base model, strategy, run config hash, the coordinator's
package versions; again after a resume), `join` (the first time a site's adapter arrives:
its node id, the base model and package versions it reported), `round` (the sites asked
and the sites that replied, the SHA-256, example count and weight of every adapter
received, what was rejected and why, the SHA-256 of the global adapter the round made, as
it will travel), `global` for round 0 (the initial adapter), and `run-end` when the run
ends: the line count and head, with an HMAC under the coordinator's key (run config
`audit-key`, default `output-dir/audit.key`, created 0600 if absent). Every message the
coordinator sends carries the trail's head (`stamp`), which each site records.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord

from settings.config import ConfigError, RunConfig
from wire import protocol
from wire.audit import AuditError, AuditLog, ensure_key, read_chain

FILE_NAME = "audit.jsonl"
KEY_FILE_NAME = "audit.key"  # in output-dir, outside every run folder, unless audit-key names a file
NO_REPLY = "no reply"  # how strategies/roster.py words a site that did not answer


def coordinator_key(cfg: RunConfig, folder: Path) -> bytes:
    """The key that seals the run folder's trail (created if absent); ConfigError naming
    `audit-key` and the file if it cannot be used."""
    path = Path(cfg.audit_key or Path(cfg.output_dir) / KEY_FILE_NAME)
    try:
        return ensure_key(path, Path(folder) / FILE_NAME)
    except AuditError as err:
        raise ConfigError(f"audit-key: {err}") from None


class CoordinatorAudit:
    def __init__(self, folder: Path, run_id: int, base_model: str, base_sha256: str, cfg: RunConfig,
                 key: bytes) -> None:
        path = Path(folder) / FILE_NAME
        self.joined = {e["site"] for e in read_chain(path) if e.get("event") == "join"} if path.exists() else set()
        self.log = AuditLog(path, key)
        config_sha = hashlib.sha256(json.dumps(cfg.as_dict(), sort_keys=True, default=str).encode()).hexdigest()
        versions = protocol.package_versions()
        self.log.append("run-start", **{"run-id": int(run_id), "base-model": base_model, "base-sha256": base_sha256,
                                        "strategy": cfg.strategy.name, "run-config-sha256": config_sha,
                                        "transport-encoding": cfg.transport.encoding, "versions": versions})

    def initial(self, global_sha256: str) -> None:
        self.log.append("global", round=0, **{"global-sha256": global_sha256})

    def round(self, record: dict[str, Any], global_sha256: str) -> None:
        """One round from its metrics record (server_app/report.py) and the new global's hash."""
        sites = record.get("sites", [])
        rejected = record.get("rejected", [])
        for row in sites:
            if row["site"] not in self.joined:
                self.joined.add(row["site"])
                reported = dict(row.get("reported") or {})
                if "versions" in reported:
                    reported["versions"] = json.loads(reported["versions"])
                self.log.append("join", site=row["site"], **{"node-id": row.get("node-id")}, **reported)
        asked = sorted({row["site"] for row in sites} | {r["site"] for r in rejected})
        silent = {r["site"] for r in rejected if str(r["reason"]).startswith(NO_REPLY)}
        self.log.append("round", round=record["round"], asked=asked,
                        replied=[s for s in asked if s not in silent],
                        received=[{"site": row["site"], "node-id": row.get("node-id"), "sha256": row.get("sha256", ""),
                                   "num-examples": row["num-examples"], "weight": row["weight"]} for row in sites],
                        rejected=[{"site": r["site"], "reason": r["reason"]} for r in rejected],
                        **{"global-sha256": global_sha256},
                        # Under SecAgg+ no site's adapter reached the coordinator: no per-site hash.
                        **({"secure-aggregation": True} if "secure-aggregation" in record.get("strategy", {}) else {}))

    def stamp(self, content) -> None:
        """Put the trail's head into an outgoing message (protocol.AUDIT), for the site to record."""
        content[protocol.AUDIT] = ConfigRecord({protocol.AUDIT_LINES: self.log.seq, protocol.AUDIT_HEAD: self.log.prev})

    def end(self) -> None:
        """The keyed `run-end` line: nothing can be cut off or rebuilt before it unseen."""
        self.log.seal("run-end")
