"""The test session's worker for one Keras backend: the parity engine's worker loop (`twins_cli.parity.worker`)
over the pass's parity jobs and its recipe-parity runs (`parity_tests/recipes.py`), in one process.

    python -m parity_tests.session_worker --backend B --plan PLAN.json --json-out ROWS.json --recipes DIR

PLAN.json lists `{"kind": "parity", ...a Job}`, `{"kind": "recipe", "task": NAME}` and `{"kind": "mutation",
"mutation": NAME}` entries; a recipe's row is `{"task": NAME, "runs": {run name: history}}`, its run folders under
DIR/NAME; a mutation's rows are the parity rows of the broken twin (`parity_tests/mutations.py`).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from twins_cli.parity import Job
from twins_cli.parity.memory import freeze_between_models, release_memory
from twins_cli.parity.worker import run_tasks, set_parity_env


def tasks_of(plan: list[dict], recipes: Path) -> list:
    """The tasks of a session plan: parity `Job`s, `RecipeTask`s and `MutationTask`s."""
    tasks = []
    for entry in plan:
        entry = dict(entry)
        kind = entry.pop("kind")
        if kind == "recipe":
            tasks.append(RecipeTask(entry["task"], recipes / entry["task"]))
        elif kind == "mutation":
            tasks.append(MutationTask(entry["mutation"]))
        else:
            tasks.append(Job.from_json(entry))
    return tasks


class RecipeTask:
    def __init__(self, name: str, out: Path):
        from parity_tests.recipes import TASKS

        self.name, self.out = name, out
        self.fn, self.heavy = TASKS[name]
        self.label = f"recipe parity, {name}"
        # On tensorflow each recipe runs in a process of its own (`run_tasks`' restart): Keras' fit there keeps
        # ~1 GB of each run that no collection returns, and the fourth run peaked at 5.0 GiB instead of 1.96.
        self.fresh_process = os.environ.get("KERAS_BACKEND") == "tensorflow"

    def run(self, backend: str) -> list[dict]:
        self.out.mkdir(parents=True, exist_ok=True)
        runs = self.fn(self.out)
        release_memory(between_models=True)
        return [{"task": self.name, "runs": json.loads(json.dumps(runs, default=float))}]


class MutationTask:
    heavy = False

    def __init__(self, name: str):
        from parity_tests.mutations import by_name

        self.mutation = by_name(name)
        self.label = f"mutation {name}"

    def run(self, backend: str) -> list[dict]:
        from parity_tests.mutations import run_mutated

        return run_mutated(self.mutation)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m parity_tests.session_worker")
    parser.add_argument("--backend", required=True)
    parser.add_argument("--plan", required=True)
    parser.add_argument("--json-out", required=True)
    parser.add_argument("--recipes", required=True, help="folder for the recipe runs")
    parser.add_argument("--claims", help="a folder shared with the pytest process, which may take a light task")
    args = parser.parse_args(argv)
    if os.environ.get("KERAS_BACKEND") != args.backend:
        print(f"KERAS_BACKEND must be {args.backend!r} before keras is imported", file=sys.stderr)
        return 2
    set_parity_env()
    freeze_between_models()  # a process of its own: nothing outlives a model but what the next one reuses
    tasks = tasks_of(json.loads(Path(args.plan).read_text()), Path(args.recipes))
    argv = sys.argv[1:] if argv is None else argv

    def restart():  # this process, replaced by a new one on the same plan: it carries on from --json-out
        os.execv(sys.executable, [sys.executable, "-m", "parity_tests.session_worker", *argv])

    run_tasks(args.backend, tasks, args.json_out, claims=Path(args.claims) if args.claims else None,
              restart=restart)
    return 0


if __name__ == "__main__":
    sys.exit(main())
