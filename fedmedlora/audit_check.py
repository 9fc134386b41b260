"""`fedmedlora audit-verify`: check the coordinator's and the sites' audit trails
(docs/threat-model.md, "Audit trail").

Each trail must be intact (wire/audit.py: every line's hash, every `prev`), every keyed
line must verify under a key given, and the trail must end with one (the coordinator's
`run-end`, a site's `seal`). Then each site's trail is compared with the coordinator's, in
the coordinator's runs, in both directions:

- every training reply a site says it sent (an adapter, a SecAgg+ stage, an error) is one
  the coordinator recorded receiving from it in that round, or recorded as rejected;
- every adapter the coordinator says it received from one of these sites, that site says
  it sent; a site is never both received and rejected in one round;
- every global adapter a site says it received is one the coordinator recorded making, and
  every head of the coordinator's trail a site recorded is still that trail's line.

A site trail with nothing in common with the coordinator's is a problem, not a pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wire import protocol
from wire.audit import key_id, read_chain, read_key, seal_problems, unsealed_end

TRAIN = "train"

Entry = dict[str, Any]
SiteRound = tuple[int, int, str]  # (run id, round, site)


@dataclass
class CoordinatorTrail:
    """The coordinator's trail, indexed by (run id, round, site)."""

    path: Path
    entries: list[Entry]
    runs: set[int] = field(default_factory=set)
    rounds: set[tuple[int, int]] = field(default_factory=set)
    received: dict[SiteRound, tuple[str, int]] = field(default_factory=dict)  # -> (sha256, line)
    rejected: dict[SiteRound, str] = field(default_factory=dict)  # -> reason
    globals: set[tuple[int, str]] = field(default_factory=set)  # (round it is sent in, sha256)


def verify(coordinator: Path, sites: Sequence[Path] = (), keys: Sequence[Path] = ()) -> list[str]:
    """The problems found (empty: all consistent); AuditError for a broken chain or a bad key file."""
    known = {key_id(key): key for key in (read_key(path) for path in keys)}
    trail, problems = index_coordinator(Path(coordinator), known)
    for path in sites:
        path = Path(path)
        entries = read_chain(path)
        problems += trail_problems(path, entries, known)
        problems += compare(path, entries, trail)
    return problems


def trail_problems(path: Path, entries: list[Entry], keys: dict[str, bytes]) -> list[str]:
    """Every keyed line verifies, and the trail ends with one."""
    end = unsealed_end(path, entries)
    return [*seal_problems(path, entries, keys), *([end] if end else [])]


def index_coordinator(path: Path, keys: dict[str, bytes]) -> tuple[CoordinatorTrail, list[str]]:
    """The coordinator's trail, indexed, and what is wrong with it on its own."""
    trail = CoordinatorTrail(path, read_chain(path))
    problems = trail_problems(path, trail.entries, keys)
    run = None
    for entry in trail.entries:
        try:
            run = index_line(trail, entry, run, problems)
        except (KeyError, TypeError, AttributeError) as err:
            problems.append(malformed(path, entry, err))
    if not trail.runs:
        problems.append(f"{path}: no run-start line: not a coordinator's trail")
    return trail, problems


def index_line(trail: CoordinatorTrail, entry: Entry, run: int | None, problems: list[str]) -> int | None:
    """Index one coordinator line; returns the run id it and the lines after it belong to."""
    where = f"{trail.path}:{entry['seq'] + 1}"
    if entry["event"] == "run-start":
        trail.runs.add(entry["run-id"])
        return entry["run-id"]
    if entry["event"] in ("round", "global"):
        # the global adapter of round r is what round r + 1 sends
        trail.globals.add((entry["round"] + 1, entry["global-sha256"]))
    if entry["event"] != "round":
        return run
    if run is None:
        problems.append(f"{where}: a round before any run-start")
        return run
    trail.rounds.add((run, entry["round"]))
    for row in entry["received"]:
        trail.received[(run, entry["round"], row["site"])] = (row["sha256"], entry["seq"] + 1)
    for row in entry["rejected"]:
        key = (run, entry["round"], row["site"])
        trail.rejected[key] = row["reason"]
        if key in trail.received:
            problems.append(f"{where}: round {entry['round']}: {row['site']} is recorded as rejected "
                            f"({row['reason']}) and its adapter {trail.received[key][0][:16]} as received")
    return run


def malformed(path: Path, entry: Entry, err: Exception) -> str:
    return f"{path}:{entry['seq'] + 1}: a {entry.get('event')!r} line without the fields it needs ({err!r})"


def compare(path: Path, entries: list[Entry], trail: CoordinatorTrail) -> list[str]:
    """A site's trail against the coordinator's, both directions (module docstring)."""
    ours = [e for e in entries if isinstance(e.get("run-id"), int) and e["run-id"] in trail.runs]
    if not ours:
        theirs = ", ".join(sorted({str(e["run-id"]) for e in entries if "run-id" in e})) or "none"
        return [f"{path}: no line of the coordinator's run(s) {', '.join(map(str, sorted(trail.runs)))} "
                f"({trail.path}); this trail has run(s) {theirs}: nothing to compare"]
    problems, compared = [], 0
    for entry in ours:
        try:
            checks = site_line_checks(f"{path}:{entry['seq'] + 1}", entry, trail)
        except (KeyError, TypeError, AttributeError) as err:
            checks = [malformed(path, entry, err)]
        compared += len(checks)
        problems += [p for p in checks if p]
    problems += unsent_problems(path, ours, trail)
    if not compared:
        problems.append(f"{path}: no training round or coordinator head in common with {trail.path}: "
                        "nothing to compare")
    return problems


def site_line_checks(where: str, entry: Entry, trail: CoordinatorTrail) -> list[str | None]:
    """The checks one site line takes part in, each a problem or None."""
    checks = []
    if entry["event"] == "received":
        checks = [head_problem(where, entry, trail)] if protocol.AUDIT_HEAD in entry else []
        if entry.get("message-type") == TRAIN and entry.get("sha256"):
            checks.append(global_problem(where, entry, trail))
    elif entry["event"] == "sent" and entry.get("message-type") == TRAIN:
        checks = [sent_problem(where, entry, trail)]
    return checks


def head_problem(where: str, entry: Entry, trail: CoordinatorTrail) -> str | None:
    """The coordinator's trail still has, at the line count a message came with, the head it had."""
    lines, head = entry.get(protocol.AUDIT_LINES), entry[protocol.AUDIT_HEAD]
    if not isinstance(lines, int) or lines < 1:
        return f"{where}: the coordinator's head came with line count {lines!r}"
    if lines > len(trail.entries):
        return (f"{where}: the coordinator's trail had {lines} lines when this message came; {trail.path} has "
                f"{len(trail.entries)} (lines cut off its end)")
    if trail.entries[lines - 1]["hash"] != head:
        return (f"{where}: the coordinator's trail ended at line {lines} with head {str(head)[:16]} when this "
                f"message came; {trail.path}:{lines} now has {trail.entries[lines - 1]['hash'][:16]} (rewritten)")
    return None


def global_problem(where: str, entry: Entry, trail: CoordinatorTrail) -> str | None:
    if (entry["round"], entry["sha256"]) in trail.globals:
        return None
    return (f"{where}: {entry['site']} received global adapter {entry['sha256'][:16]} in round {entry['round']}; "
            "the coordinator's trail never made it")


def sent_problem(where: str, entry: Entry, trail: CoordinatorTrail) -> str | None:
    """A training reply the site sent: received (the same adapter) or rejected by the coordinator."""
    key = (entry["run-id"], entry["round"], entry["site"])
    what = ("an error" if "error" in entry else "a SecAgg+ message" if entry.get("secure-aggregation")
            else f"adapter {str(entry.get('sha256'))[:16]}")
    said = f"{where}: {entry['site']} sent {what} in round {entry['round']} of run {entry['run-id']}"
    if key[:2] not in trail.rounds:
        return f"{said}; the coordinator's trail has no such round"
    if key in trail.rejected:
        return None  # the coordinator said why it did not use it
    if key not in trail.received:
        return f"{said}; the coordinator's trail neither received nor rejected it"
    got, line = trail.received[key]
    if "error" in entry or (entry.get("sha256") or "") != got:
        return f"{said}; {trail.path}:{line} records {f'adapter {got[:16]}' if got else 'no adapter'} from it"
    return None


def unsent_problems(path: Path, ours: list[Entry], trail: CoordinatorTrail) -> list[str]:
    """Every adapter the coordinator recorded from a site of this trail is one the site sent."""
    sent = {(e["run-id"], e.get("round"), e.get("site"), e.get("sha256") or "") for e in ours
            if e["event"] == "sent" and e.get("message-type") == TRAIN and "error" not in e}
    names = {e.get("site") for e in ours}
    problems = []
    for (run, server_round, site), (sha, line) in sorted(trail.received.items()):
        if site in names and (run, server_round, site, sha) not in sent:
            problems.append(f"{trail.path}:{line}: the coordinator recorded {f'adapter {sha[:16]}' if sha else 'a reply'} "
                            f"from {site} in round {server_round} of run {run}; {path} has no such sent line")
    return problems
