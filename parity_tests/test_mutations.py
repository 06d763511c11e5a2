"""The parity engine catches broken twins: each mutation in `mutations.py` (a deliberately broken Keras
twin or bridge) must turn its rows red on the current Keras backend, and the failing row must name
the tensor or layer that is wrong. The same engine on the unbroken twins, same model and size, passes
every row: the red comes from the mutation."""
from __future__ import annotations

import functools
import re

import pytest

from parity_tests.conftest import BACKEND
from parity_tests.mutations import MODEL, MUTATIONS, SIZE
from twins_cli.parity import CHECKS

pytestmark = pytest.mark.keras


@functools.lru_cache(maxsize=None)
def control_rows():
    from twins_cli.parity import run_model

    return {row.check: row for row in run_model(MODEL, size=SIZE)}


def test_every_check_has_a_mutation_that_turns_it_red():
    targeted = {check for mutation in MUTATIONS for check in mutation.red}
    assert targeted == set(CHECKS)


def test_the_unbroken_twins_pass_every_row_at_the_mutation_size():
    rows = control_rows()
    assert set(rows) == set(CHECKS)
    failed = {check: (row.error, row.detail) for check, row in rows.items() if not row.passed}
    assert not failed


@pytest.mark.parametrize("mutation", MUTATIONS, ids=[f"{m.name}-{BACKEND}" for m in MUTATIONS])
def test_mutation_turns_its_rows_red(mutation, monkeypatch):
    from twins_cli.parity import run_model

    mutation.apply(monkeypatch)
    rows = {row.check: row for row in run_model(MODEL, size=SIZE, checks=tuple(mutation.red))}
    for check, named in mutation.red.items():
        row = rows[check]
        assert not row.passed, f"{mutation.bug}: {check} stayed green (error {row.error}, bound {row.bound})"
        assert row.error is not None, f"{check} crashed instead of measuring: {row.detail}"
        assert re.search(named, row.detail), f"{check} should match {named!r}: {row.detail}"
