"""Each finished arm's scores kept in the committed results.json, so that a later invocation
skips the arms already scored."""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Any

from benchmarks.provenance import machine

log = logging.getLogger("protocol")


class ArmStore:
    """Each finished arm's scores in the committed results file (`--results`' results.json),
    by profile, written as soon as the arm is scored, so a later run (another `--out`, another
    day) skips the arms already there. The file holds `profiles` (per profile: `settings`,
    `arms` as they finish, the last finished run's whole results, `invocations` and
    `seconds`) and `claims` (every profile's). Without `--results` nothing is kept beyond `--out`.

    `seconds` is the profile's wall time: the sum over the invocations that trained arms, each
    counted from its start to the last arm it finished (an arm stopped midway is not counted;
    the invocation that finishes it counts it whole unless it resumed a checkpointed run).
    `timed=False` (--report-only, and the opt-in `--only` arms) records no invocation."""

    def __init__(self, path: Path | None, profile: str, settings: dict[str, Any], timed: bool = True,
                 restart: bool = False) -> None:
        settings = json.loads(json.dumps(settings))  # as the file holds them (lists, not tuples)
        self.path, self.profile, self.settings = path, profile, settings
        self.data: dict[str, Any] = {"profiles": {}, "claims": []}
        if path is not None and path.is_file():
            data = json.loads(path.read_text())
            if "profiles" not in data:  # the quick profile's results, as written before arms were kept
                data = {"profiles": {"quick": {"results": data}}, "claims": []}
            self.data = data
        if restart and self.data["profiles"].pop(profile, None) is not None:
            log.info("%s: the %s profile's recorded arms dropped (--restart-profile)", path, profile)
            self.data["claims"] = [c for c in self.data.get("claims", []) if c["profile"] != profile]
        entry = self.data["profiles"].setdefault(profile, {})
        if entry.get("settings") not in (None, settings):
            raise SystemExit(f"{path}: the {profile} profile's arms there were made with other settings "
                             f"({entry['settings']}); pass --restart-profile to start the profile afresh")
        entry["settings"] = settings
        entry.setdefault("arms", {})
        self.started = time.perf_counter()
        self.invocation: dict[str, Any] | None = None
        if timed:
            # The machine, and (`record_dtype`) the dtype it computed in: arms of one profile
            # recorded across sessions may come from machines that decide `model.dtype` differently.
            self.invocation = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": 0.0, "machine": machine()}
            entry.setdefault("invocations", []).append(self.invocation)

    def record_dtype(self, dtype: str) -> None:
        if self.invocation is not None:
            self.invocation["dtype"] = dtype

    def scores(self, arm: str) -> Any:
        return self.data["profiles"][self.profile]["arms"].get(arm)

    def save(self, arm: str, value: Any) -> Any:
        entry = self.data["profiles"][self.profile]
        entry["arms"][arm] = value
        if self.invocation is not None:
            self.invocation["seconds"] = round(time.perf_counter() - self.started, 1)
            self.invocation.setdefault("arms", []).append(arm)
            entry["seconds"] = round(sum(i["seconds"] for i in entry["invocations"]), 1)
        self._write()
        return value

    def profile_time(self) -> dict[str, Any] | None:
        """`seconds` and `invocations` of this profile, None when no invocation was timed."""
        entry = self.data["profiles"][self.profile]
        if "seconds" not in entry:
            return None
        return {"seconds": entry["seconds"], "invocations": entry["invocations"]}

    def finish(self, results: dict[str, Any]) -> None:
        self.data["profiles"][self.profile]["results"] = results
        self.data["claims"] = [c for c in self.data.get("claims", []) if c["profile"] != self.profile]
        self.data["claims"] += results.get("claims", [])
        self._write()

    def _write(self) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(compact_json(self.data))
            tmp.replace(self.path)


NUMBER_LIST = re.compile(r"\[[-+0-9.eE,\s]*\]")


def compact_json(data: Any) -> str:
    """Indented JSON with every list of plain numbers on one line (the per-document counts
    would otherwise take a line per number)."""
    return NUMBER_LIST.sub(lambda m: "[" + ", ".join(m.group(0)[1:-1].replace(",", " ").split()) + "]",
                           json.dumps(data, indent=2)) + "\n"
