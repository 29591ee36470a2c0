"""docs/errors.md: every row's message is the one the toolkit gives for that bad input."""

from __future__ import annotations

import pytest

from error_cases import CASES, CATALOGUE, parse_catalogue, run_case

DOCUMENTED = parse_catalogue(CATALOGUE.read_text())
BY_ID = {case.id: case for case in CASES}


def test_catalogue_lists_every_case():
    assert list(DOCUMENTED) == [case.id for case in CASES]
    assert len(DOCUMENTED) >= 30


@pytest.mark.parametrize("row", list(DOCUMENTED))
def test_catalogue_message(row, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "case"
    folder.mkdir()
    assert run_case(BY_ID[row], folder) == DOCUMENTED[row]
