"""Bad inputs stop with an error that names the file and line, or the key, at fault.

The cases are in tests/support/bad_inputs.py (scripts/faults_table.py prints docs/FAULTS.md's
table from them). Kinds tested elsewhere as well: malformed BRAT lines and offsets out
of range (tests/test_brat.py), i2b2, ADE and JSONL lines (tests/test_readers.py),
site.json keys (tests/test_corpora.py), run-config types, choices and unknown keys
(tests/test_config.py; the ServerApp stops before training: tests/test_simulation.py).
New here: bytes that are not UTF-8, folders in place of files, files without read
permission, empty sites and sites with nothing to train on, malformed site.json and
presets, node-config errors, and `fedmedlora check-site`, which reads a site folder as
its ClientApp will, before any run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from support.bad_inputs import ANN, CASES, TEXT, running_as_root, site, trigger


@pytest.fixture(scope="module")
def tokenizer(tiny_llama):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_named(name: str, tmp_path: Path, request) -> None:
    case = CASES[name]
    if case.needs_non_root and running_as_root():
        pytest.skip("running as root: file permissions do not stop root from reading (the folder and "
                    "not-UTF-8 cases cover unreadable files)")
    tokenizer = request.getfixturevalue("tokenizer") if case.needs_tokenizer else None
    error = trigger(case, tmp_path, tokenizer)
    assert isinstance(error, case.errors), f"{type(error).__name__}: {error}"
    message = str(error)
    for part in case.expect:
        assert part.format(root=tmp_path) in message, message


def test_not_utf8_errors_point_at_the_byte_and_quote_nothing(tmp_path: Path) -> None:
    from data_loaders.brat import AnnotationError, read_text

    path = tmp_path / "n.txt"
    path.write_bytes("Première ligne.\nDeuxième: ".encode() + b"caf\xe9 au lait\n")
    with pytest.raises(AnnotationError) as info:
        read_text(path)
    assert info.value.line == 2 and str(info.value) == (
        f"{path}:2: not UTF-8 text: byte 0xe9 at byte 15 of the line; save the file as UTF-8")
    assert "caf" not in str(info.value)
    path.write_bytes("\ufeffCRLF\r\nkept\r\n".encode())  # a BOM and \r\n read as before
    assert read_text(path) == "\ufeffCRLF\r\nkept\r\n"


def test_check_site_reads_folders_before_any_run(tmp_path: Path, capsys) -> None:
    from fedmedlora.cli import main

    good = site(tmp_path, {f"n{i}.txt": TEXT for i in range(12)} | {f"n{i}.ann": ANN for i in range(12)},
                name="good")
    bad = site(tmp_path, {"n1.txt": TEXT, "n1.ann": ANN + "garbage\n"}, name="bad")
    empty = site(tmp_path, {}, name="empty")
    assert main(["check-site", str(good)]) == 0
    out = capsys.readouterr().out
    assert f"{good}: site site-x: " in out and "instances (train/validation/test)" in out
    assert main(["check-site", str(good), str(bad), str(empty)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}: error: {bad}/n1.ann:4: expected an annotation line" in err
    assert f"{empty}: error: site data folder {empty} holds no documents" in err
    # a run-config value of the wrong type is refused by name, as everywhere
    assert main(["check-site", str(good), "--set", "data.tasks=3"]) == 2
    assert "data.tasks: expected str" in capsys.readouterr().err


def test_every_case_cites_an_existing_test() -> None:
    root = Path(__file__).resolve().parents[1]
    for case in CASES.values():
        for ref in case.test.split(", "):
            path, _, name = ref.partition("::")
            assert f"def {name}(" in (root / path).read_text(encoding="utf-8"), ref


def test_unreadable_file_is_named_when_read_by_an_unprivileged_user() -> None:
    """What test_bad_input_is_named[brat-ann-permissions] checks, where the tests run as
    root: the same folder read by uid 65534."""
    import shutil
    import sys

    from support.bad_inputs import unreadable_as_nobody

    if not running_as_root():
        pytest.skip("not root: test_bad_input_is_named covers it directly")
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without util-linux setpriv to read as another user")
    repo = Path(__file__).resolve().parents[1]
    message, _ = unreadable_as_nobody(sys.executable, repo)
    assert message == "PermissionError: [Errno 13] Permission denied: '{root}/site/n1.ann'", message
