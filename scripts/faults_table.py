"""Write docs/FAULTS.md: every bad input and bad update tried, and what each produces.

    .venv/bin/python scripts/faults_table.py            # print the document
    .venv/bin/python scripts/faults_table.py --write    # replace docs/FAULTS.md

The bad-input rows come from running the cases of tests/support/bad_inputs.py (the ones
tests/test_bad_inputs.py checks) and the bad-update rows from feeding the conformance
suite's malformed replies (tests/support/strategy_harness.py, as tests/test_conformance.py
does) to the Fed-MedLoRA strategy: each message is the text the code gave on this run, with
the temporary folder left out. The rows on failing and killed processes cite the tests that
produce them.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import tempfile
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

OUT = REPO / "docs" / "FAULTS.md"
MAX_CHARS = 260


def cell(text: str) -> str:
    """A table cell holding `text` as code: pipes escaped, long lists cut."""
    text = " ".join(str(text).split())
    if len(text) > MAX_CHARS:
        text = text[:MAX_CHARS - 1] + "…"
    return "`" + text.replace("`", "'").replace("|", "\\|") + "`"


def reported(error: BaseException) -> str:
    """What the site's ClientApp sends the coordinator for `error` (client_app/handlers.py's
    `_report_safely`; in an error reply, Flower wraps it as
    `<class 'client_app.app.SiteFailure'>:<'...'>`), its site error id as `<id>`."""
    try:
        from client_app.handlers import _report_safely
    except ImportError as err:  # pragma: no cover - the other end changed
        return f"(not shown: {err})"

    def handler(msg, context):
        raise error

    try:
        _report_safely(handler)(None, None)
    except Exception as failure:  # noqa: BLE001
        return without_error_id(str(failure))
    return "(nothing raised)"


def without_error_id(reason: str) -> str:
    """`reason` with its site error id, new on every run, as `<id>`."""
    return re.sub(r"site error [0-9a-f]{8}", "site error <id>", reason)


def bad_input_rows() -> list[str]:
    from support.bad_inputs import CASES, running_as_root, trigger, unreadable_as_nobody

    tokenizer = None
    rows = []
    for name, case in CASES.items():
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            if case.needs_non_root and running_as_root():
                message, at_coordinator = unreadable_as_nobody(sys.executable, REPO)
                at_coordinator = without_error_id(at_coordinator)
                error_type, _, local = message.replace("{root}/", "").partition(": ")
                note = " (read as uid 65534: root reads any file)"
            else:
                if case.needs_tokenizer and tokenizer is None:
                    from transformers import AutoTokenizer

                    from modeling.base import materialise_embedded_default

                    tokenizer = AutoTokenizer.from_pretrained(materialise_embedded_default())
                error = trigger(case, root, tokenizer)
                local = str(error).replace(f"{root}/", "").replace(str(root), ".")
                if case.kind == "run config":
                    at_coordinator = "the ServerApp stops before round 1 with this message"
                else:
                    at_coordinator = reported(error).replace(f"{root}/", "").replace(str(root), ".")
                error_type = type(error).__name__
                note = ""
        tests = [f"test_bad_inputs.py::test_bad_input_is_named[{name}]"]
        tests += [t.replace("tests/", "") for t in case.test.split(", ") if "test_bad_input_is_named" not in t]
        if case.needs_non_root:
            tests.append("test_bad_inputs.py::test_unreadable_file_is_named_when_read_by_an_unprivileged_user")
        test = "<br>".join(f"`{t}`" for t in tests)
        what = (case.what + note).replace("|", "\\|")
        rows.append(f"| {case.kind} | {what} | {error_type}: {cell(local)} | {cell(at_coordinator)} | {test} |")
    return rows


class _Lines(logging.Handler):
    """The WARNING lines Flower's logger gets while it is attached."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _logged(run) -> tuple[list[str], object]:
    flwr_log = logging.getLogger("flwr")
    handler = _Lines()
    flwr_log.addHandler(handler)
    try:
        result = run()
    finally:
        flwr_log.removeHandler(handler)
    return handler.lines, result


def bad_update_rows() -> list[str]:
    """The conformance suite's malformed replies, fed to Fed-MedLoRA as the ServerApp builds
    it; the coordinator's log lines about them, as logged."""
    from strategies.flower_compat import act_as_server_app
    from support import strategy_harness as conformance

    act_as_server_app()
    cases = [(kind, f"one site's update with {desc}", make) for kind, desc, make in [
        ("nan", "a NaN in a LoRA tensor", conformance.MALFORMED["nan"]),
        ("inf", "an Inf in a LoRA tensor", conformance.MALFORMED["inf"]),
        ("wrong shape", "a LoRA tensor of the wrong shape", conformance.MALFORMED["wrong shape"]),
        ("missing key", "a LoRA tensor missing", conformance.MALFORMED["missing key"]),
        ("error reply", "an error instead of an update", conformance.MALFORMED["error reply"]),
    ]]
    rows = []
    test = "`test_conformance.py::test_malformed_update_is_rejected_and_the_round_goes_on`<br>" \
           "`test_strategies.py::test_malformed_reply_is_rejected_and_the_rest_aggregated`"
    for kind, what, make in cases:
        try:
            states = conformance.site_states()
            replies = conformance.good_replies(states)
            strategy = conformance.build("fedmedlora")
            lines, (_, report) = _logged(lambda: conformance.aggregate(  # noqa: B023 - called at once
                strategy, [*replies[:2], make(states), *replies[2:]]))  # noqa: B023
            (text,) = [line for line in lines if "rejected" in line]
            outcome = f"rejected ({len(report.rejected)}); the other {len(report.updates)} sites aggregated"
        except Exception as err:  # noqa: BLE001 - shown, not hidden
            text, outcome = f"(could not run here: {type(err).__name__}: {err})", ""
        rows.append(f"| {kind} | {what} | {cell(text)} | {outcome} | {test} |")
    for action in ("reject", "clip"):
        try:
            states = conformance.site_states()
            states[1] = {k: v + 5.0 for k, v in states[1].items()}
            strategy = conformance.build("fedmedlora", **{"strategy.max-update-norm": 1.0,
                                                          "strategy.update-norm-action": action,
                                                          "strategy.min-sites": 3})
            lines, (_, report) = _logged(  # the lambda runs at once, inside this iteration
                lambda: conformance.aggregate(strategy, conformance.good_replies(states)))  # noqa: B023
            (text,) = [line for line in lines if "update from site" in line]
            if action == "reject":
                outcome = f"rejected; the other {len(report.updates)} sites aggregated"
            else:
                outcome = (f"all {len(report.updates)} sites aggregated, the outlier scaled down "
                           "(`clipped` in metrics.jsonl)")
        except Exception as err:  # noqa: BLE001
            text, outcome = f"(could not run here: {type(err).__name__}: {err})", ""
        name = "test_update_norm_bound_rejects_an_outlier" if action == "reject" else \
            "test_update_norm_bound_clips_an_outlier"
        rows.append(f"| extreme norm | an update far from the global adapter, `strategy.max-update-norm = 1`, "
                    f"`strategy.update-norm-action = {action}` | {cell(text)} | {outcome} "
                    f"| `test_conformance.py::{name}` |")
    return rows


# Failing and killed processes: end-to-end, so cited rather than run here. The messages
# are those the cited tests assert (their variable parts written as <...>).
PROCESS_ROWS = [
    ("site fails", "a site's data is broken (here: an annotation line with note text after a relation's arguments); "
     "the site raises in every round",
     "round 1: update from site node <id> rejected: error reply (code 2): <class 'client_app.app.SiteFailure'>:"
     "<'malformed site data: AnnotationError (site error <id>; details in the site's log)'>",
     "the round goes on with the other sites (if at least `strategy.min-sites` replied usably); the reason names "
     "neither file nor document id and holds no note text; the site's log has file, line and message under the id",
     "`test_privacy.py::test_simulation_messages_hold_no_note_text`<br>"
     "`test_privacy.py::test_deployment_wire_holds_no_note_text`<br>"
     "`test_error_reports.py::test_an_error_reply_names_no_file_path_or_document_id_and_the_site_log_does`"),
    ("site fails", "a site's ClientApp raises an error that is not one of the project's (e.g. out of memory)",
     "round 4: update from site h11 rejected: error reply (code 2): <class 'client_app.app.SiteFailure'>:"
     "<'MemoryError at training.py:88 (site error <id>; details in the site's log)'>",
     "the round goes on without it; the full traceback stays in the site's log",
     "`test_faults.py::test_sites_that_fail_or_do_not_answer_are_named_and_the_round_goes_on`"),
    ("site silent", "a site sends nothing within `strategy.round-timeout`",
     "round 2: update from site h13 rejected: no reply within strategy.round-timeout = <s> s (the site stopped, "
     "lost its connection or is too slow)",
     "the round goes on without it", "`test_faults.py::test_sites_that_fail_or_do_not_answer_are_named_and_the_round_goes_on`"),
    ("site lost", "the SuperLink reports a node that missed its heartbeats",
     "round 3: update from site h12 rejected: error reply (code 5): Error: Node Unavailable — The destination node "
     "failed to report a heartbeat within 2 × its expected interval.",
     "the round goes on without it",
     "`test_faults.py::test_sites_that_fail_or_do_not_answer_are_named_and_the_round_goes_on`"),
    ("too few sites", "fewer than `strategy.min-sites` sites reply usably",
     "round 2: 1 site(s) replied usably (h11) ... h12: error reply (code 2): ... h13: no reply within "
     "strategy.round-timeout = <s> s",
     "the run stops without aggregating that round; the last finished round stays checkpointed (resume it later)",
     "`test_faults.py::test_too_few_usable_sites_stop_the_run_after_the_last_finished_round`<br>"
     "`test_faults.py::test_every_strategy_stops_below_min_sites`"),
    ("site killed", "a hospital's SuperNode and its ClientApp SIGKILLed mid-round (loopback deployment)",
     "round 2: update from site hospital-c rejected: no reply within strategy.round-timeout = 90 s (or the "
     "SuperLink's Node Unavailable error)",
     "the other two sites finish the run; metrics.jsonl records the rejection",
     "`test_faults.py::test_a_site_killed_mid_round_is_named_and_the_others_finish_the_run`"),
    ("coordinator killed", "the SuperLink and its ServerApp SIGKILLed after a checkpoint (loopback deployment)",
     "DeploymentError: superlink exited ...; then, with resume = true, the coordinator log says 'resuming'",
     "a fresh deployment with `resume = true` runs the remaining rounds only; no finished round lost or repeated",
     "`test_faults.py::test_a_coordinator_killed_mid_run_resumes_in_a_fresh_deployment`<br>"
     "`test_simulation.py::test_a_killed_run_resumes_from_its_last_finished_round`<br>"
     "`test_checkpoint.py::test_the_server_app_continues_a_killed_run_as_if_never_stopped`"),
    ("checkpoint", "a truncated checkpoint, or `resume = true` with a changed `model.*`/`lora.*`/`strategy.*`/`data.*` key",
     "refused, naming the file or the key that differs",
     "the run stops before training",
     "`test_checkpoint.py::test_a_truncated_checkpoint_is_refused_by_name`<br>"
     "`test_checkpoint.py::test_resume_compares_the_keys_that_matter`"),
]


def document() -> str:
    inputs = bad_input_rows()
    updates = bad_update_rows()
    lines = [
        "# Faults and bad inputs",
        "",
        "<!-- Written by scripts/faults_table.py: edit that script, then run "
        "`.venv/bin/python scripts/faults_table.py --write`. -->",
        "",
        "What the project was given that it should refuse, and what it said. The messages in the first two",
        "tables were produced by running each case (`scripts/faults_table.py`; temporary folders left out);",
        "the tests in the last column check them. Design rules they follow (docs/architecture.md): errors name the",
        "file and line, or the key, and what was expected, at the site; nothing sent to the coordinator quotes note",
        "text or names a site's file or document id (`tests/test_privacy.py` records every message of a simulation",
        "and of a loopback deployment and checks it); bad input never crashes a federation silently and never",
        "loses finished rounds.",
        "",
        "## Bad inputs at a site, and bad configuration",
        "",
        "A site reads its folder when its first message arrives; `fedmedlora check-site FOLDER` reads it the",
        "same way before any run and prints the same errors. The run config is validated before any training",
        "(`fedmedlora simulate` and `deploy` before starting Flower, the ServerApp before round 1). The",
        "coordinator column is the reason in the site's error reply (Flower wraps it as",
        "`<class 'client_app.app.SiteFailure'>:<'...'>`): a category and a site error id, since file names and",
        "document ids may hold MRNs or patient names; the site's log holds the message of the middle column under",
        "that id (`site error <id>: ...`). Errors about what the coordinator sent (its run config, its message, its",
        "base model) go back in full (client_app/handlers.py, `_category`).",
        "",
        "| kind | bad input | error at the site | what the coordinator gets | tested by |",
        "|---|---|---|---|---|",
        *inputs,
        "",
        "## Bad updates at the coordinator",
        "",
        "Every reply is screened before it is aggregated (strategies/screening.py, `check_reply`); a rejected one",
        "is logged, named in the round's table and in `metrics.jsonl` (`rejected`), and the round goes on",
        "with the others. Below, four good sites and one bad one, fed to Fed-MedLoRA as the ServerApp builds it.",
        "",
        "| fault | update | coordinator's log | outcome | tested by |",
        "|---|---|---|---|---|",
        *updates,
        "",
        "## Failing and killed processes",
        "",
        "End to end or on a fake grid; the messages are those the tests assert (variable parts as `<...>`).",
        "",
        "| fault | what happens | coordinator's log | outcome | tested by |",
        "|---|---|---|---|---|",
        *[f"| {kind} | {what} | {cell(msg)} | {outcome} | {test} |" for kind, what, msg, outcome, test in PROCESS_ROWS],
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help=f"write {OUT.relative_to(REPO)} instead of printing")
    args = parser.parse_args()
    logging.getLogger("client_app").setLevel(logging.CRITICAL)  # the sites' own logs of these errors
    logging.getLogger("data_loaders").setLevel(logging.CRITICAL)
    logging.getLogger("flwr").propagate = False
    warnings.simplefilter("ignore")
    text = document()
    if args.write:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(text + "\n", encoding="utf-8")
        print(f"wrote {OUT}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
