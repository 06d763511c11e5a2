"""Recipe parity's runs: for each of the four recipes, the torch loop and Keras' fit from the same weights on the
same batches (float64), and the run that is shown breaking the comparison. The tests that assert on them are in
test_train.py (classification), test_saliency.py, test_simclr_train.py and test_pspnet_train.py.

They run in the session's worker process of the backend (`parity_tests/session_worker.py`), beside the pytest
process: Keras' fit on tensorflow leaves traced graphs and their tensors behind that no collection returns (the
pytest process grew from 1.3 to 4.9 GB over the tensorflow pass with these in it). Each returns the histories
`train_model` returned, by run name; its run folders (with `best.safetensors`) are under `out`.
"""
from __future__ import annotations

import os
from pathlib import Path

# name -> (the function, whether it runs in the heavy section: pspnet's and the U-Net's float64 copies)
TASKS: dict = {}


def task(heavy: bool = False):
    def register(fn):
        TASKS[fn.__name__] = (fn, heavy)
        return fn

    return register


def backend() -> str:
    return os.environ["KERAS_BACKEND"]


# The run shown breaking each comparison (a Keras rate 10% off, a temperature of 0.55, an aux weight of 0.5) is
# made in one pass, on Keras' torch backend: there `fit` runs eagerly, the cheapest of the three (a broken run on
# tensorflow traced its own train step: pspnet's took a third of the segmentation recipe's 202 s). The tests assert
# on it in that pass.
BROKEN_RUNS_ON = "torch"


def broken_runs() -> bool:
    """Whether this pass's recipes add the run shown breaking the comparison (`BROKEN_RUNS_ON`)."""
    return backend() == BROKEN_RUNS_ON


def run_dir(path: Path):
    """The run folder of a recipe-parity run: a `RunDir` that writes no resume points. The tests read
    best.safetensors and the history only (resume is the killed-run tests' subject, test_train.py); the float64
    snapshots were 3.3 GB of pspnet's state over a pass, and on these machines a gigabyte written into memory
    not touched recently costs 3-15 s of system time (the segmentation recipe alone on tensorflow: 25 s of the
    89 s py-spy sampled were its resume points' writes)."""
    from twins.runs import RunDir

    class NoResumePoints(RunDir):
        def save_resume(self, position, writer, extra: dict) -> None:
            pass

    return NoResumePoints(path)


def train_all(variants, out: Path, build, fit) -> dict:
    """`{name: history}`: for each `(name, framework, option)`, `build(framework, option)` -> (model, trainer),
    then `fit(name, framework, option, model, trainer, run)` in its run folder `out/name` (`run_dir`), in
    float64."""
    from twins_cli.parity import keras_dtype

    runs = {}
    with keras_dtype("float64"):
        for name, framework, option in variants:
            model, trainer = build(framework, option)
            runs[name] = fit(name, framework, option, model, trainer, run_dir(out / name))
    return runs


def twins_from(name: str, initial: dict, **options):
    """`build(framework, _) -> (model, the framework's train module)`: the twin of `name` holding `initial` (a torch
    state dict), the torch one in float64 (Keras' dtype is `train_all`'s)."""
    import keras_impl
    import torch_impl
    from keras_impl import train as ktrain
    from keras_impl.common import initial_values_not_drawn
    from keras_impl.weights import load_torch_state_dict
    from torch_impl import train as ttrain

    def build(framework, _):
        if framework == "torch":
            model = torch_impl.build(name, **options)
            model.load_state_dict(initial)
            return model.double(), ttrain
        with initial_values_not_drawn():  # every variable is loaded next, strictly
            model = keras_impl.build(name, **options)
        load_torch_state_dict(model, initial)
        return model, ktrain

    return build


@task()
def classification(out: Path) -> dict:
    """resnet18 on discs and squares (test_train.py): the rate decays linearly to 1e-5 over the 4 steps, the L2
    term on the conv kernels is in the loss; a Keras rate 10% off is the broken run (`BROKEN_RUNS_ON`)."""
    import torch

    import torch_impl
    from twins.data import BatchPlan, ImageFolder, train_transform, val_transform
    from twins.runs import Recipe
    from twins.shapes import make_shapes

    size, batch = 32, 4
    shapes = make_shapes(out / "shapes", train=8, val=4, size=size, seed=3)
    train, val = ImageFolder(shapes, "train"), ImageFolder(shapes, "val")
    plans = (BatchPlan(train, batch, train_transform(size), shuffle=True, seed=0),
             BatchPlan(val, batch, val_transform(size), shuffle=False))
    torch.manual_seed(0)
    initial = torch_impl.build("resnet18", num_classes=2).state_dict()

    build = twins_from("resnet18", initial, num_classes=2)

    def fit(name, framework, lr, model, trainer, run):
        recipe = Recipe(model="resnet18", framework=framework, data=str(shapes), epochs=1, batch_size=batch, lr=lr,
                        input_size=size, workers=0, classes=["disc", "square"], lr_end=1e-5, weight_decay=5e-4,
                        backend=backend() if framework == "keras" else None)
        run.start(recipe)
        return trainer.train_model(model, *plans, recipe, run, log=lambda *_: None)

    variants = [("torch", "torch", 0.001), ("keras", "keras", 0.001)]
    if broken_runs():
        variants.append(("keras-lr-off", "keras", 0.0011))
    return train_all(variants, out, build, fit)


@task(heavy=True)
def saliency(out: Path) -> dict:
    """The saliency U-Net's recipe (test_saliency.py): Adam 1e-3 with betas 0.9/0.99, MSE on the sigmoid map,
    conv1/bn1/layer1/layer2 frozen, on a generated SALICON folder at 64 px."""
    import torch

    import torch_impl
    from twins import registry
    from twins.data import BatchPlan, Salicon, salicon_train_transform, salicon_val_transform
    from twins.runs import Recipe, recipe_defaults
    from twins.shapes import make_salicon

    size = 64  # not 32: there layer4's BatchNorms see two values a channel, and Adam turns their rounding into 0.9
    data = make_salicon(out / "sal", train=4, val=2, size=size, seed=4)
    recipe = {**recipe_defaults("saliency_unet"), "epochs": 1, "batch_size": 2, "workers": 0, "input_size": size,
              "frozen": registry.SALIENCY_FROZEN}
    train, val = Salicon(data, "train"), Salicon(data, "val")
    plans = (BatchPlan(train, 2, salicon_train_transform(size), shuffle=True, seed=0, drop_last=True),
             BatchPlan(val, 2, salicon_val_transform(size), shuffle=False))
    torch.manual_seed(0)
    initial = torch_impl.build("saliency_unet").state_dict()

    build = twins_from("saliency_unet", initial)

    def fit(name, framework, _, model, trainer, run):
        config = Recipe(**{**recipe, "model": "saliency_unet", "framework": framework, "data": str(data),
                           "backend": backend() if framework == "keras" else None})
        run.start(config)
        return trainer.train_model(model, *plans, config, run, log=lambda *_: None)

    return train_all([("torch", "torch", None), ("keras", "keras", None)], out, build, fit)


@task()
def contrastive(out: Path) -> dict:
    """SimCLR's SSL recipe (test_simclr_train.py): SGD momentum 0.9, rate 0.3 with cosine decay, NT-Xent at t 0.5
    on interleaved views, the kNN monitor; Keras' temperature at 0.55 is the broken run (`BROKEN_RUNS_ON`)."""
    import torch

    import torch_impl
    from twins import tasks
    from twins.data import BatchPlan, Cifar10, cifar_test_transform, simclr_view_transform, two_views
    from twins.runs import Recipe, recipe_defaults
    from twins.shapes import make_cifar10

    data = make_cifar10(out / "cifar", train=2, test=0, seed=7)  # 10 images: 2 steps of 4, drop_last
    train = Cifar10(data, "train")
    plan = BatchPlan(train, 4, two_views(simclr_view_transform()), shuffle=True, seed=0, drop_last=True)
    # The monitor on a folder of its own, large enough for the vote to beat chance (5 per class).
    shown = make_cifar10(out / "monitor", train=5, test=20, seed=8)
    monitor = tasks.KnnPlans(BatchPlan(Cifar10(shown, "train"), 25, cifar_test_transform(), shuffle=False),
                             BatchPlan(Cifar10(shown, "val"), 20, cifar_test_transform(), shuffle=False), 10, k=5,
                             t=0.1)
    recipe = {**recipe_defaults("simclr_ssl"), "epochs": 1, "batch_size": 4, "workers": 0, "input_size": 32,
              "knn_k": 5}
    torch.manual_seed(0)
    initial = torch_impl.build("simclr_ssl").state_dict()

    build = twins_from("simclr_ssl", initial)

    def fit(name, framework, temperature, model, trainer, run):
        config = Recipe(**{**recipe, "model": "simclr_ssl", "framework": framework, "data": str(data),
                           "temperature": temperature, "backend": backend() if framework == "keras" else None})
        run.start(config)
        return trainer.train_model(model, plan, monitor, config, run, log=lambda *_: None)

    variants = [("torch", "torch", 0.5), ("keras", "keras", 0.5)]
    if broken_runs():
        variants.append(("keras-t-off", "keras", 0.55))
    return train_all(variants, out, build, fit)


@task(heavy=True)
def segmentation(out: Path) -> dict:
    """PSPNet's recipe (test_pspnet_train.py): SGD momentum 0.9, rate 0.01 with the poly decay, L2 1e-4 on conv
    kernels, main + 0.4 aux cross-entropy with 255 ignored, at 17 px; Keras' aux weight at 0.5 is the broken run
    (`BROKEN_RUNS_ON`)."""
    import torch

    import torch_impl
    from twins.data import BatchPlan, Voc, voc_train_transform, voc_val_transform
    from twins.runs import Recipe, recipe_defaults
    from twins.shapes import make_voc

    size = 17  # the smallest input with a 3x3 map after layer2 (9 px leaves 2x2)
    data = make_voc(out / "voc", train=5, val=3, size=24, seed=5)  # 2 steps of 2, drop_last
    train, val = Voc(data, "train"), Voc(data, "val")
    plan = BatchPlan(train, 2, voc_train_transform(size), shuffle=True, seed=0, drop_last=True)
    val_plan = BatchPlan(val, 3, voc_val_transform(size), shuffle=False)
    recipe = {**recipe_defaults("pspnet"), "epochs": 1, "batch_size": 2, "workers": 0, "input_size": size,
              "classes": train.classes}
    options = {"num_classes": len(train.classes), "dropout": 0.0}
    torch.manual_seed(0)
    initial = torch_impl.build("pspnet", **options).state_dict()

    build = twins_from("pspnet", initial, **options)

    def fit(name, framework, aux_weight, model, trainer, run):
        config = Recipe(**{**recipe, "model": "pspnet", "framework": framework, "data": str(data),
                           "aux_heads": ("aux",), "aux_weight": aux_weight,
                           "backend": backend() if framework == "keras" else None})
        run.start(config)
        return trainer.train_model(model, plan, val_plan, config, run, log=lambda *_: None)

    variants = [("torch", "torch", 0.4), ("keras", "keras", 0.4)]
    if broken_runs():
        variants.append(("keras-aux-off", "keras", 0.5))
    return train_all(variants, out, build, fit)
