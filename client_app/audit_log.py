"""A site's own audit trail: what it received from the coordinator and what it sent back,
one hash-chained line per message (wire/audit.py; docs/threat-model.md, "Audit trail").

On when the SuperNode's node config names a file, `audit-log='/path/site-audit.jsonl'`
(`fedmedlora deploy` and the compose files set it). Adapters are named by the SHA-256 of
their packed bytes, which the coordinator's `audit.jsonl` records too, so `fedmedlora
audit-verify` can match the two.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context, Message

from wire import protocol
from wire.audit import AuditLog
from wire.transport import payload_digest

from .secure_aggregation import is_secure_aggregation

NODE_CONFIG_KEY = "audit-log"


class SiteAudit:
    def __init__(self, path: Path, context: Context) -> None:
        self.log = AuditLog(path)
        self.context = context

    def _common(self, msg: Message) -> dict:
        config = msg.content.config_records.get(protocol.CONFIG) if msg.has_content() else None
        server_round = config.get("server-round") if config is not None else None
        return {"run-id": int(self.context.run_id), "site": str(self.context.node_config.get("site-name", "")),
                "message-type": msg.metadata.message_type,
                "round": int(server_round) if server_round is not None else None}

    def received(self, msg: Message) -> None:
        self.log.append("received", **self._common(msg),
                        sha256=payload_digest(msg.content) if msg.has_content() else None)

    def sent(self, msg: Message, reply: Message) -> None:
        fields = self._common(msg)
        if reply.has_error():
            self.log.append("sent", **fields, error=reply.error.reason)
            return
        metrics = reply.content.metric_records.get(protocol.METRICS)
        examples = metrics.get("num-examples") if metrics is not None else None
        if examples is not None:
            fields["num-examples"] = float(examples)
        if is_secure_aggregation(reply):  # keys, key shares, a masked adapter: no adapter left the site
            self.log.append("sent", **fields, sha256=None, **{"secure-aggregation": True})
        else:
            self.log.append("sent", **fields, sha256=payload_digest(reply.content))


def site_audit(context: Context) -> SiteAudit | None:
    """The site's audit trail, or None when the node config does not ask for one."""
    path = str(context.node_config.get(NODE_CONFIG_KEY, "") or "")
    return SiteAudit(Path(path), context) if path else None
