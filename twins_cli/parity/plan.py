"""The quick plan: what `make test` and `make demo` (`twins report --quick`) compute per model."""
from __future__ import annotations

from dataclasses import dataclass

from .bounds import ALL_CHECKS, EXPORT_CHECKS, TRAIN_CHECKS

# The quick parity run, what `make test` and `make demo` (`twins report --quick`) compute per model: every
# check that applies (None), or these checks, at this size (None: the model's parity size). The
# rest runs in `make parity` (docs/parity.md): resnet34 and the two resnet18 variants share every
# layer type with resnet18 (the variants' own wiring is what their eval and stage rows check), and
# resnet101/152 with resnet50; resnet50's training checks run on resnet50-deep-dilated's Bottleneck
# blocks (the same code, with the deep stem and dilation on top); alexnet's round trip and head restore are the bridge's generic code;
# the float64 training checks of alexnet, vgg11_bn and inception_v3 peak at 8.4, 18 and 6.7 GB in one
# worker (tensorflow, jax) and take minutes, vgg19_slim's bridge checks alone 10 GB (143 M parameters
# at 224x224, its only size); densenet121's cost 40 s a backend, and its and inception_v3's round trip
# is the bridge's generic code (inception_v3 keeps its two-head restore) (squeezenet1_0 runs the
# full set for the zoo). All for DESIGN.md's test budget (8 GB, 25 min; measured 24 min before these
# cuts).
QUICK_SUITE: dict[str, tuple | None] = {
    "squeezenet1_0": None, "saliency_unet": None,
    # resnet50-deep-dilated's training checks: saliency_unet's rows train the same Bottleneck blocks (its
    # layer3 and layer4, downsample blocks included, on every backend); the deep stem and the dilation are
    # wiring of the forward pass, which the eval and stage rows compare (PSPNet's rows will train them).
    "resnet50-deep-dilated": (("eval_output", "stage_outputs", "round_trip"), None),
    # resnet18's training checks: test_mutations.py's control run computes every row of resnet18 at 64x64
    # on each backend (and asserts they pass) before showing each check fail on a broken twin.
    "resnet18": (("eval_output", "stage_outputs", "round_trip", "exclude_restore"), None),
    "resnet50": (("eval_output", "stage_outputs", "round_trip", "exclude_restore"), None),
    "resnet18-cifar": (("eval_output", "stage_outputs", "round_trip"), None),
    "resnet18-features": (("eval_output", "stage_outputs", "exclude_restore"), None),
    "resnet34": (("eval_output", "stage_outputs"), None),
    "densenet121": (("eval_output",), None),
    "resnet101": (("eval_output", "stage_outputs"), None),
    "resnet152": (("eval_output", "stage_outputs"), None),
    "alexnet": (("eval_output",), None),
    "vgg11_bn": (("eval_output",), None),
    "vgg19_slim": (("eval_output",), None),
    "inception_v3": (("eval_output", "exclude_restore"), 75),
    # SimCLR: simclr_ssl's every row (two outputs, the NT-Xent training loss); simclr_sl is the same CIFAR encoder
    # with a linear head, whose cross-entropy training rows are resnet18's code (the mutation control run).
    "simclr_ssl": None,
    "simclr_sl": (("eval_output", "round_trip", "exclude_restore"), None),
    # PSPNet: every row at 33x33 (a 5x5 map the 2, 3 and 6 bins do not divide), main + 0.4 aux loss with a fifth
    # of the labels 255; the deep stem and the dilated stages train here (resnet50-deep-dilated's rows do not).
    "pspnet": None,
}


# The export rows of the quick run: every format of resnet18 (each exporter and runtime on the commonest ops).
# `parity_tests/test_export.py` adds the torch twin's of simclr_ssl and pspnet; `make parity` runs every model's.
QUICK_EXPORTS: dict[str, tuple] = {"resnet18": EXPORT_CHECKS}


# The models whose checks hold several copies of a big network: pspnet and the saliency U-Net train in float64
# (pspnet: 49 M parameters, 0.37 GB a float64 copy; its job peaked at 4.5 GB on tensorflow, 5.4 GB on jax, in a
# process of its own), vgg19_slim and vgg11_bn hold 143 M and 133 M parameters (0.57 and 0.53 GB a float32 copy).
# Their jobs are heavy (`Job.heavy`): a worker runs them holding `memory.HeavyLock`, one at a time across the
# processes that share it.
HEAVY_MODELS = ("pspnet", "saliency_unet", "vgg19_slim", "vgg11_bn")
# In the full plan (`make parity`) a heavy model's checks run as one job per part (`Job.part`, in this order):
# the eval-mode checks, the float64 training checks, the exports. What a framework keeps of one part's models
# stays in the process after it (the tensorflow worker held 7.7 GiB after vgg11_bn's training checks, which peaked at 10 GiB), and the next part
# then starts from there: `make parity`'s vgg11_bn job peaked at 17.5 GiB in its ONNX export, on top of what its
# training left. Between parts the worker hands the rest of its plan to a fresh process when it holds more than
# `worker.RESTART_ABOVE_GIB`, so each part starts from what the frameworks need, not from the last part's peak.
PARTS = ("eval", "training", "exports")


def part_of(check: str) -> str:
    return "training" if check in TRAIN_CHECKS else "exports" if check in EXPORT_CHECKS else "eval"


@dataclass(frozen=True)
class Job:
    """One model's checks in a worker: a registered model or variant, the checks to run (those that do not apply
    to it have no row), the image size (None: the model's parity size), the optimiser of the step checks
    (None: its recipe's), and whether the job is heavy: it runs holding `memory.HeavyLock`."""

    model: str
    checks: tuple[str, ...]
    size: int | None = None
    optimizer: str | None = None
    batch: int = 2
    heavy: bool = False
    part: str | None = None  # a heavy model's jobs: which of its `PARTS` this one runs

    def to_json(self) -> dict:
        return {"model": self.model, "checks": list(self.checks), "size": self.size, "optimizer": self.optimizer,
                "batch": self.batch, "heavy": self.heavy, "part": self.part}

    @property
    def label(self) -> str:
        return f"{self.model} ({self.part})" if self.part else self.model

    def run(self, backend: str) -> list[dict]:
        """This job's rows on `backend` (this process's Keras backend, or `torch_impl`: the torch twin's
        exports), then what the model left released (`memory.release_memory`)."""
        from dataclasses import asdict

        from .bounds import TORCH_TWIN
        from .checks import run_model
        from .exports import run_torch_exports
        from .memory import release_memory

        if backend == TORCH_TWIN:
            return [asdict(r) for r in run_torch_exports(self.model, size=self.size, checks=self.checks)]
        rows = [asdict(r) for r in run_model(self.model, batch=self.batch, size=self.size, checks=self.checks,
                                             optimizer=self.optimizer)]
        release_memory(between_models=True)
        return rows

    @classmethod
    def from_json(cls, data: dict) -> "Job":
        return cls(data["model"], tuple(data["checks"]), data.get("size"), data.get("optimizer"), data.get("batch", 2),
                   data.get("heavy", False), data.get("part"))


def jobs(models, checks=ALL_CHECKS, *, quick: bool = False, size: int | None = None, batch: int = 2) -> list[Job]:
    """The jobs of `twins parity` and the report: each model's `checks`, or with `quick` the part of them its
    QUICK_SUITE entry names (and its QUICK_EXPORTS); a model left with no check has no job. A heavy model's
    checks are one heavy job per part that has any (`PARTS`), a single part's job unlabelled; in the quick plan
    one heavy job (its parts are small, pspnet's at 33x33, and each more job would build the model's torch
    reference again on the heavy lock, the critical path of `make demo`)."""
    result = []
    for model in models:
        plan_checks, plan_size = (QUICK_SUITE.get(model) or (None, None)) if quick else (None, None)
        chosen = tuple(c for c in checks if c not in EXPORT_CHECKS and (plan_checks is None or c in plan_checks))
        chosen += tuple(c for c in checks if c in EXPORT_CHECKS and (not quick or c in QUICK_EXPORTS.get(model, ())))
        if not chosen:
            continue
        if model not in HEAVY_MODELS or quick:
            result.append(Job(model, chosen, size or plan_size, batch=batch, heavy=model in HEAVY_MODELS))
            continue
        parts = [(part, tuple(c for c in chosen if part_of(c) == part)) for part in PARTS]
        parts = [(part, mine) for part, mine in parts if mine]
        for part, mine in parts:
            result.append(Job(model, mine, size or plan_size, batch=batch, heavy=True,
                              part=part if len(parts) > 1 else None))
    return result
