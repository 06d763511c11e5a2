"""The parity engine catches broken twins: each mutation in `mutations.py` (a deliberately broken Keras
twin or bridge) must turn its rows red (in the tensorflow pass; on any backend with TWINS_MUTATIONS_EVERY_BACKEND=1), and the
failing row must name the tensor or layer that is wrong. The same engine on the unbroken twins, same model and size, passes
every row: the red comes from the mutation."""
from __future__ import annotations

import os
import re

import pytest

from parity_tests.conftest import BACKEND
from parity_tests.mutations import MODEL, MUTATIONS, SIZE
from twins_cli.parity import CHECKS

pytestmark = pytest.mark.keras


def control_rows(parity_worker, optimizer: str = "sgd") -> dict:
    """The unbroken twins' rows at the mutation size, from the session's parity worker (its resnet18 job is this
    control run: every check; under Adam only the rows that differ from SGD's, the training checks, whose steps
    are Adam's)."""
    rows = parity_worker.model_rows(MODEL, optimizer=None if optimizer == "sgd" else optimizer)
    assert all(row["meta"].get("size") == SIZE for row in rows if row["check"] != "run"), rows
    return {row["check"]: row for row in rows}


def test_every_check_has_a_mutation_that_turns_it_red():
    targeted = {check for mutation in MUTATIONS for check in mutation.red}
    assert targeted == set(CHECKS)


def skip_adam_off_tensorflow(optimizer: str) -> None:
    """The control run under the Adam steps runs in the tensorflow pass (DESIGN.md's test budget): its
    comparison is the SGD steps' numpy code, and saliency_unet's adam_step rows compare TorchAdam with torch
    on every backend."""
    if optimizer == "adam" and BACKEND != "tensorflow" and not os.environ.get("TWINS_MUTATIONS_EVERY_BACKEND"):
        pytest.skip("the Adam-step control run is in the tensorflow pass (TWINS_MUTATIONS_EVERY_BACKEND=1 runs it here)")


@pytest.mark.parametrize("optimizer", ["sgd", "adam"], ids=[f"sgd-{BACKEND}", f"adam-{BACKEND}"])
def test_the_unbroken_twins_pass_every_row_at_the_mutation_size(optimizer, parity_worker):
    from twins_cli.parity import STEP_CHECKS

    skip_adam_off_tensorflow(optimizer)
    rows = control_rows(parity_worker, optimizer)
    other = {c for name, pair in STEP_CHECKS.items() if name != optimizer for c in pair}
    assert set(rows) == (set(CHECKS) - other if optimizer == "sgd" else set(STEP_CHECKS[optimizer]))
    failed = {check: (row["error"], row["detail"]) for check, row in rows.items() if not row["passed"]}
    assert not failed


@pytest.mark.parametrize("mutation", MUTATIONS, ids=[f"{m.name}-{BACKEND}" for m in MUTATIONS])
def test_mutation_turns_its_rows_red(mutation, parity_worker):
    """In the tensorflow pass (DESIGN.md's test budget: 90 s on jax, 45 s on torch). What turns a row red is
    the engine's comparison, numpy code that is the same on every backend, and every mutation is a Keras
    layer, loader or optimiser written once for all backends; the control runs above show every row green
    on each backend at this size. The broken twins run in the session's worker (`mutations.run_mutated`)."""
    if BACKEND != "tensorflow" and not os.environ.get("TWINS_MUTATIONS_EVERY_BACKEND"):
        pytest.skip("the mutations run in the tensorflow pass (TWINS_MUTATIONS_EVERY_BACKEND=1 runs them here)")
    rows = {row["check"]: row for row in parity_worker.mutation(mutation.name)
            if not row["meta"].get("square_control")}
    assert set(rows) == set(mutation.red), [f"{check}: {row['detail']}" for check, row in rows.items()]
    for check, named in mutation.red.items():
        row = rows[check]
        assert not row["passed"], f"{mutation.bug}: {check} stayed green (error {row['error']}, bound {row['bound']})"
        assert row["error"] is not None, f"{check} crashed instead of measuring: {row['detail']}"
        assert re.search(named, row["detail"]), f"{check} should match {named!r}: {row['detail']}"


def test_a_height_width_swap_shows_only_on_images_that_are_not_square(parity_worker):
    """Why the parity engine's images are not square (`ModelInfo.parity_width`): the twin that swaps the height and
    width of PSPNet's output passes eval_output on 33x33 images, and fails it on the engine's 33x25."""
    if BACKEND != "tensorflow" and not os.environ.get("TWINS_MUTATIONS_EVERY_BACKEND"):
        pytest.skip("the mutations run in the tensorflow pass (TWINS_MUTATIONS_EVERY_BACKEND=1 runs them here)")
    rows = parity_worker.mutation("swapped_upsample_size")
    square = [row for row in rows if row["meta"].get("square_control")]
    other = [row for row in rows if not row["meta"].get("square_control")]
    assert [(row["meta"]["size"], row["meta"]["width"]) for row in square] == [(33, 33)]
    assert [(row["meta"]["size"], row["meta"]["width"]) for row in other] == [(33, 25)]
    assert square[0]["passed"], square[0]["detail"]
    assert not other[0]["passed"] and other[0]["error"] == float("inf"), other[0]["detail"]
