"""A site's own audit trail: what it received from the coordinator and what it sent back,
one hash-chained line per message (wire/audit.py; docs/threat-model.md, "Audit trail").

On when the SuperNode's node config names a file, `audit-log='/path/site-audit.jsonl'`,
with `audit-key='/path/audit.key'`: the HMAC-SHA256 key, outside the trail's folder and
created (mode 0600) if absent, that seals the trail after every reply (`fedmedlora deploy`
sets both). Adapters are named by the SHA-256 of their packed bytes, which the
coordinator's `audit.jsonl` records too, and every `received` line keeps the head of the
coordinator's trail that came with the message, so `fedmedlora audit-verify` can match the
two trails and show a coordinator trail rewritten after the fact.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context, Message

from wire import protocol
from wire.audit import AuditError, AuditLog, ensure_key
from wire.transport import payload_digest

from .secure_aggregation import is_secure_aggregation

NODE_CONFIG_KEY = "audit-log"
KEY_NODE_KEY = "audit-key"  # node config: the key file that seals the site's trail
SEAL = "seal"  # the keyed line after each reply (wire/audit.py, SEALS)


class SiteAudit:
    def __init__(self, path: Path, context: Context, key: bytes) -> None:
        self.log = AuditLog(path, key)
        self.context = context

    def _common(self, msg: Message) -> dict:
        config = msg.content.config_records.get(protocol.CONFIG) if msg.has_content() else None
        server_round = config.get("server-round") if config is not None else None
        return {"run-id": int(self.context.run_id), "site": str(self.context.node_config.get("site-name", "")),
                "message-type": msg.metadata.message_type,
                "round": int(server_round) if server_round is not None else None}

    def received(self, msg: Message) -> None:
        self.log.append("received", **self._common(msg), **_coordinator_head(msg),
                        sha256=payload_digest(msg.content) if msg.has_content() else None)

    def sent(self, msg: Message, reply: Message) -> None:
        fields = self._common(msg)
        if reply.has_error():
            self.failed(msg, reply.error.reason)
            return
        metrics = reply.content.metric_records.get(protocol.METRICS)
        examples = metrics.get("num-examples") if metrics is not None else None
        if examples is not None:
            fields["num-examples"] = float(examples)
        if is_secure_aggregation(reply):  # keys, key shares, a masked adapter: no adapter left the site
            self.log.append("sent", **fields, sha256=None, **{"secure-aggregation": True})
        else:
            self.log.append("sent", **fields, sha256=payload_digest(reply.content))
        self.log.seal(SEAL)

    def failed(self, msg: Message, reason: str) -> None:
        """The error the site answered with instead of a reply."""
        self.log.append("sent", **self._common(msg), error=reason)
        self.log.seal(SEAL)


def _coordinator_head(msg: Message) -> dict:
    """The coordinator's trail head the message came with (protocol.AUDIT), if it has one."""
    record = msg.content.config_records.get(protocol.AUDIT) if msg.has_content() else None
    if record is None:
        return {}
    return {key: record[key] for key in (protocol.AUDIT_LINES, protocol.AUDIT_HEAD) if key in record}


def site_audit(context: Context) -> SiteAudit | None:
    """The site's audit trail, or None when the node config does not ask for one. AuditError
    names the node config key and the file when the trail or its key cannot be used."""
    path = str(context.node_config.get(NODE_CONFIG_KEY, "") or "")
    if not path:
        return None
    key_path = str(context.node_config.get(KEY_NODE_KEY, "") or "")
    if not key_path:
        raise AuditError(f"node config {NODE_CONFIG_KEY} = {path!r} needs {KEY_NODE_KEY}: the file of the key that "
                         "seals the trail, outside its folder (created, mode 0600, if absent)")
    try:
        key = ensure_key(Path(key_path), Path(path))
    except AuditError as err:
        raise AuditError(f"node config {KEY_NODE_KEY}: {err}") from None
    return SiteAudit(Path(path), context, key)
