"""A catalogue of bad inputs a site or a coordinator may be given, with what each must say.

Each case writes its input under a root folder and returns the call that must fail, the
way the project meets it (a site's ClientApp reads its folder with `load_site` and builds
its instances with `site_runtime`; the ServerApp validates the run config; the ClientApp
finds its folder from the node config). tests/test_bad_inputs.py runs every case;
scripts/faults_table.py runs them again and prints docs/FAULTS.md's table from the errors
they raise, so the document shows the messages the code gives.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TEXT = "Fever and cough since Monday. Started aspirin 81 mg daily for chest pain.\n"
ANN = "T1\tproblem 0 5\tFever\nT2\tproblem 10 15\tcough\nT3\tdrug 38 45\taspirin\n"
SITE_JSON = {"name": "site-x", "entity_types": ["problem", "drug"], "relation_types": []}
I2B2_TEXT = "Admission Date : 2010-01-01\nHe was given aspirin for chest pain .\n"


@dataclass
class BadInput:
    kind: str
    what: str  # the bad input, in words
    make: Callable[..., Callable[[], Any]]  # make(root[, tokenizer]) -> the call that raises
    expect: tuple[str, ...]  # substrings of the message; "{root}" is the root folder
    errors: tuple[type, ...] = (ValueError,)
    test: str = "tests/test_bad_inputs.py::test_bad_input_is_named"
    needs_tokenizer: bool = False
    needs_non_root: bool = False  # root reads files whatever their permissions
    extra: dict[str, Any] = field(default_factory=dict)


def site(root: Path, files: dict[str, str | bytes | None], site_json: dict | str | bytes | None = None,
         name: str = "site") -> Path:
    """A site folder: site.json (given or the default) and `files` (None: a folder)."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    _write(folder / "site.json", json.dumps(SITE_JSON if site_json is None else site_json, indent=1)
           if isinstance(site_json, (dict, type(None))) else site_json)
    for relative, content in files.items():
        _write(folder / relative, content)
    return folder


def _write(path: Path, content: str | bytes | None) -> None:
    if content is None:
        path.mkdir(parents=True, exist_ok=True)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")


def _load(folder: Path) -> Callable[[], Any]:
    from data_loaders.sites import load_site

    return lambda: load_site(folder)


def _brat_site(ann: str | bytes | None = ANN, text: str | bytes | None = TEXT, site_json=None):
    return lambda root: _load(site(root, {"n1.txt": text, "n1.ann": ann}, site_json))


def _jsonl_line(**changes: Any) -> str:
    doc = {"id": "n1", "text": TEXT, "entities": [{"id": "T1", "type": "problem", "spans": [[0, 5]],
                                                   "text": "Fever"}], "relations": []}
    doc.update(changes)
    return json.dumps(doc)


def _jsonl_site(content: str | bytes | None):
    return lambda root: _load(site(root, {"documents.jsonl": content}))


def _i2b2(con: str | bytes):
    def make(root: Path):
        from data_loaders.i2b2 import read_i2b2

        folder = root / "i2b2"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "record-1.txt").write_text(I2B2_TEXT, encoding="utf-8")
        _write(folder / "record-1.con", con)
        return lambda: read_i2b2(folder / "record-1.txt")
    return make


def _ade(line: str):
    def make(root: Path):
        from data_loaders.ade import read_ade

        folder = root / "ade"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "DRUG-AE.rel").write_text("12345|Rash after drug A.|Rash|7|11|drug A|18|24\n" + line + "\n",
                                            encoding="utf-8")
        return lambda: read_ade(folder)
    return make


def _replace_site_json(root: Path, by: str | None) -> Path:
    """A BRAT site whose site.json is gone (None) or is a folder ("folder")."""
    folder = site(root, {"n1.txt": TEXT, "n1.ann": ANN})
    (folder / "site.json").unlink()
    if by == "folder":
        (folder / "site.json").mkdir()
    return folder


def _unreadable(root: Path):
    folder = site(root, {"n1.txt": TEXT, "n1.ann": ANN})
    os.chmod(folder / "n1.ann", 0)
    return _load(folder)


def _preset_site(root: Path):
    folder = site(root, {"n1.txt": TEXT, "n1.ann": ANN, "mine.toml": "[entities]\nproblem = \"problem\"\ndrug = drug\n"},
                  {"name": "site-x", "preset": "mine.toml"})
    return _load(folder)


def _nothing_to_train(root: Path, tokenizer):
    from client_app.runtime import site_runtime
    from settings.config import validate

    folder = site(root, {"n1.txt": TEXT, "n1.ann": ANN, "n2.txt": TEXT, "n2.ann": ANN, "n3.txt": TEXT,
                         "n3.ann": ANN})
    cfg = validate({"train.max-length": 16})  # shorter than any instance: every one is dropped
    return lambda: site_runtime({"data-dir": str(folder)}, cfg, tokenizer)


def _node_config(node_config: dict, run_config: dict):
    def make(root: Path):
        from client_app.runtime import site_dir
        from settings.config import validate

        cfg = validate(run_config)
        return lambda: site_dir(node_config, cfg)
    return make


def _config(overrides: dict):
    def make(root: Path):
        from settings.config import validate

        return lambda: validate(overrides)
    return make


NOT_UTF8 = "not UTF-8 text: byte 0xff"

CASES: dict[str, BadInput] = {
    # -- BRAT
    "brat-malformed-line": BadInput(
        "BRAT .ann", "a line that is no annotation", _brat_site(ANN + "fever since Monday\n"),
        ("{root}/site/n1.ann:4: expected an annotation line",),
        test="tests/test_brat.py::test_malformed_lines_name_file_and_line"),
    "brat-relation-with-text": BadInput(
        "BRAT .ann", "a relation line with note text after its arguments",
        _brat_site(ANN + "R1\tCause Arg1:T1 Arg2:T2 fever and cough since Monday\n"),
        ("{root}/site/n1.ann:4: R1: expected 'TYPE Arg1:ID Arg2:ID', got 8 space-separated field(s)",),
        test="tests/test_privacy.py::test_reader_errors_name_file_and_line_but_never_quote_the_line"),
    "brat-offsets-out-of-range": BadInput(
        "BRAT .ann", "a span past the end of the text", _brat_site("T1\tproblem 0 5\tFever\nT2\tproblem 70 99\tx\n"),
        ("{root}/site/n1.ann:2: T2: span 70-99 is empty or outside the text (expected 0 <= start < end <= 74)",),
        test="tests/test_brat.py::test_malformed_lines_name_file_and_line"),
    "brat-unknown-reference": BadInput(
        "BRAT .ann", "a relation to an id that does not exist", _brat_site(ANN + "R1\tCause Arg1:T1 Arg2:T9\n"),
        ("{root}/site/n1.ann:4: R1: references unknown id 'T9'",),
        test="tests/test_brat.py::test_malformed_lines_name_file_and_line"),
    "brat-undeclared-type": BadInput(
        "BRAT .ann", "an entity type the site.json does not declare", _brat_site(ANN + "T4\tsign 16 21\tsince\n"),
        ("{root}/site/n1.ann: entity T4 has type 'sign', which {root}/site/site.json does not list in "
         "'entity_types'",),
        test="tests/test_corpora.py::test_site_holding_documents_jsonl"),
    "brat-txt-not-utf8": BadInput(
        "unreadable file", "a .txt note with a byte that is not UTF-8 (Latin-1 text)",
        _brat_site(text=b"Fever and cough.\nT\xff 38.5 C.\n"),
        ("{root}/site/n1.txt:2: " + NOT_UTF8 + " at byte 2 of the line; save the file as UTF-8",)),
    "brat-ann-not-utf8": BadInput(
        "unreadable file", "an .ann file with a byte that is not UTF-8",
        _brat_site(ann=ANN.encode() + b"T4\tproblem 0 5\tF\xffver\n"),
        ("{root}/site/n1.ann:4: " + NOT_UTF8,)),
    "brat-txt-is-a-folder": BadInput(
        "unreadable file", "a folder named like a note (n1.txt/)", _brat_site(text=None),
        ("Is a directory: '{root}/site/n1.txt'",), errors=(IsADirectoryError,)),
    "brat-ann-is-a-folder": BadInput(
        "unreadable file", "a folder in place of an .ann file", _brat_site(ann=None),
        ("Is a directory: '{root}/site/n1.ann'",), errors=(IsADirectoryError,)),
    "brat-ann-permissions": BadInput(
        "unreadable file", "an .ann file without read permission (chmod 000)", _unreadable,
        ("Permission denied: '{root}/site/n1.ann'",), errors=(PermissionError,), needs_non_root=True),
    # -- i2b2, ADE, JSONL
    "i2b2-malformed-line": BadInput(
        "i2b2 .con", "a concept line without its type", _i2b2('c="aspirin" 2:3 2:3\n'),
        ("{root}/i2b2/record-1.con:1: expected 'c=\"TEXT\" L:T L:T||t=\"TYPE\"'",),
        test="tests/test_readers.py::test_i2b2_malformed_lines_name_file_and_line"),
    "i2b2-offsets-out-of-range": BadInput(
        "i2b2 .con", "a line:token position past the text", _i2b2('c="aspirin" 2:3 2:3||t="treatment"\n'
                                                                    'c="x" 9:0 9:0||t="problem"\n'),
        ("{root}/i2b2/record-1.con:2: position 9:0 9:0 is not a token of the text (expected 1-based lines up to 3",),
        test="tests/test_readers.py::test_i2b2_malformed_lines_name_file_and_line"),
    "i2b2-not-utf8": BadInput(
        "unreadable file", "an i2b2 .con file with a byte that is not UTF-8",
        _i2b2(b'c="aspirin" 2:3 2:3||t="treatment"\nc="\xff" 2:5 2:5||t="problem"\n'),
        ("{root}/i2b2/record-1.con:2: " + NOT_UTF8 + " at byte 4 of the line",)),
    "ade-malformed-line": BadInput(
        "ADE .rel", "a line with too few '|' columns", _ade("12345|Drug B toxicity.|toxicity|10|18"),
        ("{root}/ade/DRUG-AE.rel:2: expected 8 '|'-separated columns",),
        test="tests/test_readers.py::test_ade_malformed_lines_name_file_and_line"),
    "jsonl-malformed-line": BadInput(
        "JSONL", "a line that is not JSON", _jsonl_site(_jsonl_line() + "\n{\"id\": \"n2\", \"text\": \n"),
        ("{root}/site/documents.jsonl:2: invalid JSON at column",),
        test="tests/test_readers.py::test_jsonl_bad_lines_name_file_line_and_key"),
    "jsonl-offsets-out-of-range": BadInput(
        "JSONL", "an entity span past the end of the text",
        _jsonl_site(_jsonl_line(entities=[{"id": "T1", "type": "problem", "spans": [[70, 99]], "text": "x"}])),
        ("{root}/site/documents.jsonl:1: key 'entities[0].spans': span 70-99 is empty or outside the text",),
        test="tests/test_readers.py::test_jsonl_bad_lines_name_file_line_and_key"),
    "jsonl-unknown-key": BadInput(
        "JSONL", "a document with a key the format does not have",
        _jsonl_site(_jsonl_line(notes="x")),
        ("{root}/site/documents.jsonl:1: unknown key(s) ['notes']",),
        test="tests/test_readers.py::test_jsonl_bad_lines_name_file_line_and_key"),
    "jsonl-not-utf8": BadInput(
        "unreadable file", "a documents.jsonl with a byte that is not UTF-8",
        _jsonl_site(_jsonl_line().encode() + b"\n" + _jsonl_line(id="n2").encode().replace(b"Fever and", b"Fever \xff")),
        ("{root}/site/documents.jsonl:2: " + NOT_UTF8,)),
    "jsonl-is-a-folder": BadInput(
        "unreadable file", "a folder named documents.jsonl", _jsonl_site(None),
        ("{root}/site/documents.jsonl is a folder; expected a JSON Lines file",)),
    # -- the site folder
    "site-empty": BadInput(
        "empty site", "a site folder with a site.json and no notes", lambda root: _load(site(root, {})),
        ("site data folder {root}/site holds no documents (*.txt + .ann, or documents.jsonl)",)),
    "site-empty-jsonl": BadInput(
        "empty site", "an empty documents.jsonl", _jsonl_site(""),
        ("site data folder {root}/site holds no documents",)),
    "site-nothing-to-train": BadInput(
        "empty site", "notes, but no instance fits train.max-length (16 tokens here)", _nothing_to_train,
        ("{root}/site: no training instances (or none fits train.max-length=16)",), needs_tokenizer=True),
    "site-missing-folder": BadInput(
        "empty site", "a data-dir that does not exist", lambda root: _load(root / "nowhere"),
        ("site data folder {root}/nowhere does not exist",), errors=(FileNotFoundError,)),
    "site-json-missing": BadInput(
        "site.json", "a site folder without site.json",
        lambda root: _load(_replace_site_json(root, None)),
        ("{root}/site/site.json not found; expected a JSON object with 'name', 'entity_types' and "
         "'relation_types'",), errors=(FileNotFoundError,)),
    "site-json-invalid": BadInput(
        "site.json", "site.json that is not JSON (a missing comma)",
        _brat_site(site_json='{\n "name": "site-x",\n "entity_types": ["problem"]\n "relation_types": []\n}\n'),
        ("{root}/site/site.json:4: invalid JSON: Expecting ',' delimiter",)),
    "site-json-wrong-type": BadInput(
        "site.json", "entity_types given as a string, not a list",
        _brat_site(site_json={"name": "site-x", "entity_types": "problem", "relation_types": []}),
        ("{root}/site/site.json: key 'entity_types' must be a list of non-empty strings",)),
    "site-json-not-utf8": BadInput(
        "unreadable file", "site.json with a byte that is not UTF-8",
        _brat_site(site_json=b'{"name": "site-\xff", "entity_types": ["problem"], "relation_types": []}'),
        ("{root}/site/site.json:1: " + NOT_UTF8 + " at byte 16 of the line",)),
    "site-json-is-a-folder": BadInput(
        "unreadable file", "a folder named site.json",
        lambda root: _load(_replace_site_json(root, "folder")),
        ("{root}/site/site.json is a folder; expected a JSON file",)),
    "preset-invalid-toml": BadInput(
        "site.json", "a site's own label-mapping preset that is not TOML", _preset_site,
        ("{root}/site/site.json: key 'preset': {root}/site/mine.toml: invalid TOML:", "(at line 3, column 8)"),),
    # -- configuration
    "config-wrong-type": BadInput(
        "run config", "a value of the wrong type (lora.r = \"16\")", _config({"lora.r": "16"}),
        ("lora.r: expected int, got '16' (str)",),
        test="tests/test_config.py::test_bad_values_name_the_key_and_what_is_valid"),
    "config-bad-choice": BadInput(
        "run config", "a value that is not one of the choices (strategy.name = \"fedfoo\")",
        _config({"strategy.name": "fedfoo"}), ("strategy.name", "'fedfoo'", "fedmedlora-plus"),
        test="tests/test_config.py::test_bad_values_name_the_key_and_what_is_valid, "
             "tests/test_simulation.py::test_bad_config_value_stops_the_run_before_training"),
    "config-unknown-key": BadInput(
        "run config", "an unknown key (lora.rank)", _config({"lora.rank": 8}),
        ("unknown config key(s) ['lora.rank'] ('lora.rank': did you mean 'lora.r'?); valid keys are",),
        test="tests/test_config.py::test_bad_values_name_the_key_and_what_is_valid, "
             "tests/test_config.py::test_simulate_rejects_an_unknown_key_before_starting_flower"),
    "node-config-no-data-dir": BadInput(
        "node config", "a SuperNode started without data-dir", _node_config({"site-name": "hospital-a"}, {}),
        ("node config: expected 'data-dir'",)),
    "node-config-partition": BadInput(
        "node config", "more simulated SuperNodes than data.sites names", _node_config({"partition-id": 3}, {}),
        ("data.sites: partition-id 3 has no site; data.sites names 3 site(s)",)),
}


def trigger(case: BadInput, root: Path, tokenizer: Any = None) -> BaseException:
    """Build the case under `root` and return the exception its call raises (AssertionError
    if it raises none)."""
    call = case.make(root, tokenizer) if case.needs_tokenizer else case.make(root)
    try:
        call()
    except BaseException as err:  # noqa: BLE001 - returned to the caller
        return err
    finally:
        for path in root.rglob("*"):  # let the test's tmp_path be removed (chmod 000 case)
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | stat.S_IRUSR | stat.S_IWUSR | (stat.S_IXUSR if path.is_dir() else 0))
    raise AssertionError(f"{case.what}: no error raised")


def running_as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def unreadable_as_nobody(python: str, repo: Path) -> tuple[str, str]:
    """The "brat-ann-permissions" case where the tests run as root, who reads any file: the
    site is built as root, then read by `load_site` in a subprocess as the unprivileged
    uid 65534 (util-linux `setpriv`). Returns the error it raised and what a ClientApp
    reports of it (client_app/handlers.py's `_report_safely`), the folder as {root}."""
    import shutil
    import subprocess
    import tempfile

    if shutil.which("setpriv") is None:
        raise RuntimeError("setpriv is not installed")
    root = Path(tempfile.mkdtemp(prefix="bad-input-"))
    try:
        _unreadable(root)
        for path in [root, *root.rglob("*")]:
            if path.is_dir():
                path.chmod(0o755)  # uid 65534 may enter the folders; n1.ann stays 000
        script = (f"import logging, sys; sys.path.insert(0, {str(repo)!r}); logging.disable(logging.CRITICAL)\n"
                  "from data_loaders.sites import load_site\n"
                  "from client_app.handlers import _report_safely\n"
                  f"def handler(msg, context):\n    load_site({str(root / 'site')!r})\n"
                  "try:\n    handler(None, None)\n"
                  "except Exception as err:\n    print(type(err).__name__ + ': ' + str(err))\n"
                  "try:\n    _report_safely(handler)(None, None)\n"
                  "except Exception as err:\n    print(err)\n")
        out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", python, "-c", script],
                             capture_output=True, text=True, timeout=120)
        lines = out.stdout.replace(str(root), "{root}").strip().splitlines()
        if len(lines) != 2:
            raise RuntimeError(f"as uid 65534: {out.stdout}{out.stderr[-2000:]}")
        return lines[0], lines[1]
    finally:
        for path in root.rglob("*"):
            path.chmod(0o755)
        shutil.rmtree(root, ignore_errors=True)
