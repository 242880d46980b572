"""Every integrity error has one root and one exit code, whichever layer raises it."""

from __future__ import annotations

import string
import sys

import click
import pytest

from ingestd.commandline import run_cli
from ingestd.ctl.evidence import ViewIntegrityError
from ingestd.errors import IngestdError
from ingestd.evidence.copies import CopyIntegrityError
from ingestd.evidence.errors import ExportIntegrityError
from store.errors import ExistingObjectCorruptError, IntegrityError, ReadBackMismatchError
from store.vault import VaultIntegrityError
from tests.support.errors import error_classes

INTEGRITY_EXIT = 3  # the README's exit-code table: "integrity problem"
KNOWN = {
    ReadBackMismatchError,  # the store's read-back after fsync
    ExistingObjectCorruptError,  # a stored object under the same BLAKE3
    VaultIntegrityError,  # the vault's bytes, metadata or lock
    ExportIntegrityError,  # export: the store's bytes against the catalog
    CopyIntegrityError,  # copy: the same, file by file
    ViewIntegrityError,  # view: the file the daemon handed over
}


def _integrity_classes() -> list[type[IntegrityError]]:
    return [cls for cls in error_classes() if issubclass(cls, IntegrityError)]


def _instance(cls: type[IntegrityError]) -> IntegrityError:
    fields = {name for _, name, _, _ in string.Formatter().parse(cls.template) if name}
    return cls(**dict.fromkeys(fields, "x"))


def test_every_integrity_error_derives_from_the_one_root() -> None:
    assert set(_integrity_classes()) >= KNOWN | {IntegrityError}
    named = {cls for cls in error_classes() if "Integrity" in cls.__name__}
    assert named <= set(_integrity_classes())


def test_every_integrity_error_has_the_one_exit_code_and_only_they_have_it() -> None:
    assert {cls.exit_code for cls in _integrity_classes()} == {INTEGRITY_EXIT}
    defining = [cls for cls in error_classes() if vars(cls).get("exit_code") == INTEGRITY_EXIT]
    assert defining == [IntegrityError]


@pytest.mark.parametrize("cls", [pytest.param(cls, id=cls.__name__) for cls in KNOWN])
def test_an_integrity_error_leaves_a_command_with_one_line_and_the_integrity_exit_code(
    cls: type[IntegrityError], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    error = _instance(cls)
    monkeypatch.setattr(sys, "argv", ["ingestctl"])  # the command line click parses

    @click.command()
    def failing() -> None:
        raise error

    with pytest.raises(SystemExit) as exited:
        run_cli(failing, "ingestctl")
    assert exited.value.code == INTEGRITY_EXIT
    assert capsys.readouterr().err == f"ingestctl: error: {error}\n"


def test_an_integrity_error_raised_by_ingestd_is_also_an_ingestd_error_with_its_own_message() -> None:
    error = _instance(ViewIntegrityError)
    assert isinstance(error, IngestdError)
    assert str(error) == "view of recording x: the file ingestd handed over x"
    assert error.facts == {"recording": "x", "detail": "x"}
