"""Append-only audit trails: one JSON object per line, each carrying the SHA-256 of the line
before it, so that an edited, removed or reordered line breaks the chain
(docs/threat-model.md, "Audit trail").

The coordinator writes `audit.jsonl` in the run folder (who was asked and who replied, the
hash of every adapter received and of the global adapter sent, weights, rejections, what
each site reported at join); each site writes its own (what it received and sent).
Adapters are identified by `payload_sha256`: the hash of a packed ArrayRecord's bytes and
manifest, the same bytes on both ends of the wire (wire/transport.py).

A hash chain alone does not stop someone who can write the file from recomputing every hash
after an edit, or from cutting lines off its end. Keyed lines (`SEALS`) close that: a
`run-end` (the coordinator, when a run ends) or a `seal` (a site, after each reply) records
the chain's line count and head and carries an HMAC-SHA256 of the line under a key kept
outside the trail's folder; without the key, a rebuilt chain cannot carry a valid seal.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

GENESIS = "0" * 64  # the `prev` of a chain's first line
SEALS = ("run-end", "seal")  # the keyed lines: the coordinator's at a run's end, a site's after each reply
KEY_BYTES = 32


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
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            where = f"{path}:{number}"
            try:
                entry = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError:
                raise AuditError(f"{where}: not UTF-8 text; was the file edited?") from None
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
    checked first, and a broken one refused rather than extended). With `key`, every keyed
    line already there must verify under it, so a rewritten trail is never sealed again."""

    def __init__(self, path: Path, key: bytes | None = None) -> None:
        self.path = Path(path)
        self.key = key
        self.path.parent.mkdir(parents=True, exist_ok=True)
        entries = read_chain(self.path) if self.path.exists() else []
        if key is not None:
            problems = seal_problems(self.path, entries, {key_id(key): key})
            if problems:
                raise AuditError(f"{problems[0]}; this trail is not extended")
        self.seq = len(entries)
        self.prev = entries[-1]["hash"] if entries else GENESIS

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        """Write one line: `seq`, `time` (UTC), `event`, `fields`, `prev`, `hash`; flushed to disk."""
        return self._write(self._entry(event, fields))

    def seal(self, event: str) -> dict[str, Any]:
        """Write a keyed line (`event` one of SEALS): the line count and head hash so far, the
        key's id, and `mac`, the HMAC of the line under the key."""
        if event not in SEALS or self.key is None:
            raise ValueError(f"seal: {event!r} needs a key and one of {SEALS}")
        entry = self._entry(event, {"lines": self.seq, "head": self.prev, "key-id": key_id(self.key)})
        entry["mac"] = seal_mac(self.key, entry)
        return self._write(entry)

    def _entry(self, event: str, fields: dict[str, Any]) -> dict[str, Any]:
        return {"seq": self.seq, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "event": event, **fields, "prev": self.prev}

    def _write(self, entry: dict[str, Any]) -> dict[str, Any]:
        entry["hash"] = entry_hash(entry)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(_canonical(entry).decode() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.seq += 1
        self.prev = entry["hash"]
        return entry


# ----------------------------------------------------------------------------- keys and seals


def key_id(key: bytes) -> str:
    """A public name for a key, so a verifier knows which key a seal needs (a hash: it gives
    nothing of the key away)."""
    return hashlib.sha256(key).hexdigest()[:16]


def seal_mac(key: bytes, entry: dict[str, Any]) -> str:
    """HMAC-SHA256 under `key` of a line's canonical JSON, without its `mac` and `hash`: its
    `seq` and `prev` name the whole chain before it."""
    return hmac.new(key, _canonical({k: v for k, v in entry.items() if k not in ("mac", "hash")}),
                    hashlib.sha256).hexdigest()


def seal_problems(path: Path, entries: list[dict[str, Any]], keys: dict[str, bytes]) -> list[str]:
    """What is wrong with each keyed line of a chain (`keys`: key id -> key), by file and line."""
    problems, unknown = [], set()
    for entry in entries:
        if entry.get("event") not in SEALS:
            continue
        where = f"{path}:{entry['seq'] + 1}"
        if entry.get("lines") != entry["seq"] or entry.get("head") != entry["prev"]:
            problems.append(f"{where}: {entry['event']} records {entry.get('lines')!r} lines and head "
                            f"{str(entry.get('head'))[:16]}; the chain has {entry['seq']} lines before it, "
                            f"head {entry['prev'][:16]}")
            continue
        name = str(entry.get("key-id"))
        key = keys.get(name)
        if key is None:
            if name not in unknown:  # once per file and key
                unknown.add(name)
                problems.append(f"{where}: sealed with key id {name!r}, and no key given has that id: "
                                "its seals cannot be checked")
        elif not hmac.compare_digest(str(entry.get("mac")).encode(), seal_mac(key, entry).encode()):
            problems.append(f"{where}: the {entry['event']} MAC does not match: the lines up to here were "
                            "rewritten without the key")
    return problems


def unsealed_end(path: Path, entries: list[dict[str, Any]]) -> str | None:
    """Why a chain does not end with a keyed line (None when it does): lines cut off its end,
    or a writer that stopped before sealing."""
    if entries and entries[-1].get("event") in SEALS:
        return None
    if not entries:
        return f"{path}: the trail is empty: no keyed end line"
    sealed = [e["seq"] + 1 for e in entries if e.get("event") in SEALS]
    after = f"the last keyed line is line {sealed[-1]}" if sealed else "no line is keyed"
    return (f"{path}:{len(entries)}: the trail ends without a keyed end line ({' or '.join(SEALS)}; {after}): "
            "lines were cut off its end, or its writer stopped before sealing it (a killed run ends when "
            "it is resumed)")


def read_key(path: Path) -> bytes:
    """A key file: one line of 2 x KEY_BYTES hex digits, readable by its owner only.
    AuditError names the file (and line) of what is wrong."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise AuditError(f"{path}: audit key file not found")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise AuditError(f"{path}: permissions {mode:04o}; an audit key must be readable by its owner only "
                         f"(chmod 600 {path})")
    try:
        lines = path.read_bytes().decode("ascii", errors="replace").splitlines()
    except OSError as err:
        raise AuditError(f"{path}: the audit key cannot be read ({err.strerror})") from None
    if not lines or not re.fullmatch(f"[0-9a-f]{{{2 * KEY_BYTES}}}", lines[0]):
        raise AuditError(f"{path}:1: expected {2 * KEY_BYTES} lowercase hex digits (a {KEY_BYTES}-byte key)")
    if len(lines) > 1:
        raise AuditError(f"{path}:2: an audit key file holds one line")
    return bytes.fromhex(lines[0])


def ensure_key(path: Path, trail: Path) -> bytes:
    """The key that seals `trail`, from `path`, created there (random, mode 0600) if absent.
    Refused inside the trail's folder: whoever can write the trail should not read its key."""
    path, folder = Path(path).expanduser().resolve(), Path(trail).expanduser().resolve().parent
    if path.is_relative_to(folder):
        raise AuditError(f"{path}: the audit key must be kept outside the trail's folder {folder}")
    if not path.exists():
        try:
            _create_key(path)
        except OSError as err:
            raise AuditError(f"{path}: the audit key cannot be created ({err.strerror})") from None
    return read_key(path)


def _create_key(path: Path) -> None:
    """Write a fresh key atomically: a concurrent writer's key wins, never a half-written one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="ascii") as handle:
            handle.write(secrets.token_hex(KEY_BYTES) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.link(temp, path)
    except FileExistsError:
        pass
    finally:
        temp.unlink()


def events(entries: list[dict[str, Any]], name: str) -> Iterator[dict[str, Any]]:
    return (e for e in entries if e.get("event") == name)
