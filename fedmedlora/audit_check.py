"""`fedmedlora audit-verify`: check the coordinator's and the sites' audit trails
(docs/threat-model.md, "Audit trail").

Each chain must be intact (wire/audit.py: every line's hash, every `prev`). Then, for the
coordinator's run id(s), every adapter a site says it sent for training must be among the
adapters the coordinator recorded from that site in that round (or the coordinator must
have recorded the site as rejected, with its reason), and every global adapter a site says
it received must be one the coordinator recorded making.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from wire.audit import read_chain

TRAIN = "train"


def verify(coordinator: Path, sites: Sequence[Path] = ()) -> list[str]:
    """The problems found (empty: all consistent); AuditError for a broken chain."""
    entries = read_chain(coordinator)
    run_ids = {e["run-id"] for e in entries if e["event"] == "run-start"}
    received = {(e["round"], r["site"], r["sha256"]) for e in entries if e["event"] == "round" for r in e["received"]}
    rejected = {(e["round"], r["site"]): r["reason"] for e in entries if e["event"] == "round" for r in e["rejected"]}
    # the global adapter of round r is what round r + 1 sends
    sent_globals = {(e["round"] + 1, e["global-sha256"]) for e in entries if e["event"] in ("round", "global")}
    problems = []
    for path in sites:
        for entry in read_chain(path):
            if entry.get("run-id") not in run_ids or entry.get("message-type") != TRAIN or entry.get("sha256") is None:
                continue
            where = f"{path}:{entry['seq'] + 1}"
            key = (entry["round"], entry["site"])
            if entry["event"] == "sent" and (*key, entry["sha256"]) not in received:
                if key in rejected:
                    continue  # the coordinator said why it did not use it
                problems.append(f"{where}: {entry['site']} sent adapter {entry['sha256'][:16]} in round "
                                f"{entry['round']}; the coordinator's trail has no such adapter from it")
            if entry["event"] == "received" and (entry["round"], entry["sha256"]) not in sent_globals:
                problems.append(f"{where}: {entry['site']} received global adapter {entry['sha256'][:16]} in round "
                                f"{entry['round']}; the coordinator's trail never made it")
    return problems
