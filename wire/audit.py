"""Append-only audit trails: one JSON object per line, each carrying the SHA-256 of the line
before it, so that an edited, removed or reordered line breaks the chain
(docs/threat-model.md, "Audit trail").

The coordinator writes `audit.jsonl` in the run folder (who was asked and who replied, the
hash of every adapter received and of the global adapter sent, weights, rejections, what
each site reported at join); each site writes its own (what it received and sent).
Adapters are identified by `payload_sha256`: the hash of a packed ArrayRecord's bytes and
manifest, the same bytes on both ends of the wire (wire/transport.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

GENESIS = "0" * 64  # the `prev` of a chain's first line


class AuditError(ValueError):
    """A broken chain or an unreadable line, named by file and line number."""


def _canonical(entry: dict[str, Any]) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def entry_hash(entry: dict[str, Any]) -> str:
    """SHA-256 of a line's canonical JSON, without its own `hash`."""
    return hashlib.sha256(_canonical({k: v for k, v in entry.items() if k != "hash"})).hexdigest()


def payload_sha256(payload: bytes, manifest: str) -> str:
    """The identity of a packed adapter: its tensor bytes and its manifest."""
    digest = hashlib.sha256(manifest.encode())
    digest.update(payload)
    return digest.hexdigest()


def read_chain(path: Path) -> list[dict[str, Any]]:
    """Every line of `path`, checked: JSON objects, `seq` 0, 1, ..., each `prev` the `hash`
    of the line before, each `hash` that of its own line. AuditError names the first fault."""
    path = Path(path)
    entries: list[dict[str, Any]] = []
    prev = GENESIS
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            where = f"{path}:{number}"
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as err:
                raise AuditError(f"{where}: not a JSON line ({err.msg}); was the file cut or edited?") from None
            if not isinstance(entry, dict):
                raise AuditError(f"{where}: not a JSON object")
            if entry.get("seq") != number - 1:
                raise AuditError(f"{where}: seq {entry.get('seq')!r}, expected {number - 1} (a line removed or moved)")
            if entry.get("prev") != prev:
                raise AuditError(f"{where}: prev does not match the hash of line {number - 1} "
                                 "(a line before it was changed, removed or moved)")
            if entry.get("hash") != entry_hash(entry):
                raise AuditError(f"{where}: hash does not match the line's content (the line was changed)")
            prev = entry["hash"]
            entries.append(entry)
    return entries


class AuditLog:
    """Appends events to a chain at `path` (created with its folder; an existing chain is
    checked first, and a broken one refused rather than extended)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        entries = read_chain(self.path) if self.path.exists() else []
        self.seq = len(entries)
        self.prev = entries[-1]["hash"] if entries else GENESIS

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        """Write one line: `seq`, `time` (UTC), `event`, `fields`, `prev`, `hash`; flushed to disk."""
        entry = {"seq": self.seq, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "event": event, **fields, "prev": self.prev}
        entry["hash"] = entry_hash(entry)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(_canonical(entry).decode() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.seq += 1
        self.prev = entry["hash"]
        return entry


def events(entries: list[dict[str, Any]], name: str) -> Iterator[dict[str, Any]]:
    return (e for e in entries if e.get("event") == name)
