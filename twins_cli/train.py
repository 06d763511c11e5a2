"""`twins train`, `twins evaluate`, `twins predict`, `twins plot-history`, `twins shapes`: the fine-tuning
recipe of the seed in either framework, on one run-directory format.

    twins shapes DATA                                               # a learnable two-class ImageFolder
    twins train resnet18 --framework torch --data DATA --out runs/r18-torch --epochs 5 --img-size 64
    twins train resnet18 --framework keras --backend jax --data DATA --out runs/r18-jax --epochs 5 --img-size 64
    twins train resnet18 --framework torch --data DATA --out runs/r18-torch --resume
    twins evaluate resnet18 --framework keras --weights runs/r18-torch/best.safetensors --data DATA
    twins predict resnet18 --framework torch --weights runs/r18-jax/best.safetensors \
        --classes runs/r18-jax/classes.txt IMAGE... --top-k 2
    twins plot-history runs/r18-torch runs/r18-jax --out history.png
    twins shapes SAL --layout salicon                               # image/ + mask/: a blob and its saliency map
    twins train saliency_unet --framework keras --data SAL --out runs/sal --img-size 64 [--weights resnet50.pth]
    twins predict saliency_unet --framework torch --weights runs/sal/best.safetensors IMAGE... --masks MASKS --out DIR
    twins shapes VOC --layout voc                                   # JPEGImages/ + SegmentationClass/ + ImageSets/
    twins train pspnet --framework torch --data VOC --out runs/psp --img-size 65
    twins predict pspnet --framework keras --weights runs/psp/best.safetensors IMAGE... --out DIR [--masks DIR]

A framework is one `Side` (build, load, freeze, train, predict); the recipe, the data and the run
directory are framework-free (`twins.runs`, `twins.data`). Weights move through torch-layout files,
so a run of one framework evaluates, predicts and fine-tunes in the other.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from twins import checkpoints, registry, tasks
from twins.data import (BatchPlan, Cifar10, DataError, Food101, ImageFolder, Salicon, Voc, check_map_size,
                        check_same_classes, cifar_test_transform, cifar_train_transform, food101_train_transform,
                        food101_val_transform, read_image, read_mask, salicon_train_transform, salicon_val_transform,
                        simclr_view_transform, train_transform, two_views, val_transform, voc_train_transform,
                        voc_val_transform)
from twins.distributed import World, split_problem
from twins.optim import SCHEDULES
from twins.runs import PREPROCESS, Position, Recipe, RunDir, recipe_defaults, scores_text, task_of

FRAMEWORKS = ("torch", "keras")
KERAS_BACKENDS = ("tensorflow", "jax", "torch")
DEFAULT_KERAS_BACKEND = "jax"


class Side:
    """What the commands need from one framework; `side(framework, backend)` returns one."""

    def __init__(self, framework: str, backend: str | None = None):
        self.framework = framework
        if framework == "keras":
            self.backend = use_keras_backend(backend)
            import keras_impl
            from keras_impl import distributed, train, weights

            self.package, self.trainer, self.weights, self.distributed = keras_impl, train, weights, distributed
            self.load = weights.load_torch_state_dict
        elif framework == "torch":
            self.backend = None
            import torch_impl
            from torch_impl import distributed, train, weights

            self.package, self.trainer, self.weights, self.distributed = torch_impl, train, weights, distributed
            self.load = weights.load_state_dict
        else:
            raise ValueError(f"unknown framework {framework!r}; expected one of {', '.join(FRAMEWORKS)}")

    @property
    def label(self) -> str:
        return f"keras ({self.backend} backend)" if self.backend else "torch"

    def build(self, name: str, *, seed: int | None = None, **kwargs):
        """The twin; with `seed`, its initial weights are a function of the seed (the framework's RNG is
        seeded first), so two runs with one `--seed` start from the same weights."""
        if seed is not None:
            if self.framework == "torch":
                import torch

                torch.manual_seed(seed)
            else:
                import keras

                keras.utils.set_random_seed(seed)
        return self.package.build(name, **kwargs)


def use_keras_backend(backend: str | None) -> str:
    """Fix the Keras backend before keras is imported; refuse a second, different one."""
    wanted = backend or os.environ.get("KERAS_BACKEND") or DEFAULT_KERAS_BACKEND
    if wanted not in KERAS_BACKENDS:
        raise SystemExit(f"unknown Keras backend {wanted!r}; expected one of {', '.join(KERAS_BACKENDS)}")
    if "keras" in sys.modules:
        import keras

        if keras.backend.backend() != wanted:
            raise SystemExit(f"keras is already running on {keras.backend.backend()}; cannot switch to {wanted} "
                             "in the same process")
    os.environ["KERAS_BACKEND"] = wanted
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # Keras imports tensorflow for its data utilities
    if wanted == "jax" and os.environ.get("TWINS_JAX_CACHE_LOG"):  # `make test-profile` counts the cache's hits
        from twins_cli.compile_cache import JaxCacheCounter

        JaxCacheCounter.install()
    return wanted


def check_size(info: registry.ModelInfo, size: int) -> None:
    if size < info.min_input_size:
        raise SystemExit(f"--img-size {size} is below {info.name}'s smallest input size {info.min_input_size}")
    if info.max_input_size is not None and size > info.max_input_size:
        raise SystemExit(f"--img-size {size} is above {info.name}'s largest input size {info.max_input_size}")
    problem = info.size_problem(size, size)
    if problem:
        raise SystemExit(f"--img-size {size}: {problem}")


def load_weights(side: Side, model, info, path: str, exclude, num_classes: int, log=print):
    """Restore `path` (torch layout: .pth/.pt/.safetensors/.npz; or a TF-slim TensorFlow checkpoint, which
    `checkpoints.read` maps to torch layout) into `model`. A checkpoint of another
    class count loads everything but the classifier (the exclude-final-layer restore), reported."""
    from twins_cli.convert import classes_in

    state = checkpoints.strip_data_parallel(checkpoints.read(path))
    exclude = tuple(exclude or ())
    decoder = info.extra.get("decoder", ())
    trained = classes_in(state, info)
    if decoder and not exclude and not any(checkpoints.excluded(k, decoder) for k in state):
        # The seed's `Unet(models.resnet50(pretrained=True))`: an ImageNet classifier's weights in the encoder.
        exclude = decoder + ("fc",)
        log(f"{path} holds no decoder ({info.extra['backbone']} weights?): the encoder loads, the decoder "
            f"({', '.join(decoder)}) starts fresh and the checkpoint's fc is left out")
    elif trained != num_classes and not exclude:
        exclude = info.classifier
        log(f"{path} has {trained} classes, the data {num_classes}: the classifier "
            f"({', '.join(info.classifier)}) starts fresh")
    report = side.load(model, state, exclude=exclude, strict=True)
    log(f"{path}: {report.summary()}")
    return report


def init_from(side: Side, model, info, path: str, num_classes: int, exclude=(), log=print):
    """`--init-from RUN`: the best weights of a run of either framework (its `best.safetensors`, torch layout).
    A run of the same model loads as `--weights` would; a run of another model hands over the modules
    `info.extra["init_from"]` names (simclr_sl takes a simclr_ssl run's encoder `enc`), everything else of it
    is left out and the classifier starts fresh; any other pair is refused. `exclude` (`--exclude`) leaves more
    keys fresh."""
    run = RunDir(path)
    if not run.exists():
        raise SystemExit(f"--init-from {path}: not a run directory (no config.json); give the --out of a twins train "
                         "run")
    if not run.best_path.is_file():
        raise SystemExit(f"--init-from {path}: the run has no {run.best_path.name} yet (no finished epoch)")
    config = run.config()
    source = config["model"]
    if source == info.name:
        return load_weights(side, model, info, str(run.best_path), exclude, num_classes, log)
    handed = info.extra.get("init_from", {}).get(source)
    if handed is None:
        takes = ", ".join([info.name, *info.extra.get("init_from", {})])
        raise SystemExit(f"--init-from {path} is a {source} run; {info.name} starts from a run of {takes}")
    state = checkpoints.read(run.best_path)
    left_out = sorted({k.split(".")[0] for k in state if not checkpoints.excluded(k, handed)})
    framework = config["framework"] + (f"/{config['backend']}" if config.get("backend") else "")
    log(f"--init-from {path} ({source}, {framework}, best epoch): its {', '.join(handed)} starts this {info.name}; "
        f"its {', '.join(left_out)} left out, the classifier ({', '.join(info.classifier)}) starts fresh")
    report = side.load(model, state, exclude=tuple(left_out) + tuple(info.classifier) + tuple(exclude), strict=True)
    log(f"{run.best_path}: {report.summary()}")
    return report


def is_food101(data) -> bool:
    return (Path(data) / "meta" / "classes.txt").is_file()


def is_cifar10(data) -> bool:
    return (Path(data) / "data_batch_1").is_file() or (Path(data) / "test_batch").is_file()


def is_voc(data) -> bool:
    return (Path(data) / "ImageSets" / "Segmentation").is_dir()


def is_salicon(data) -> bool:
    return (Path(data) / "image").is_dir() and (Path(data) / "mask").is_dir()


def open_split(data, split: str, info: registry.ModelInfo | None = None):
    """A split of DATA in its layout: SALICON (`image/<split>/`, `mask/<split>/`) for a saliency model,
    Food-101 (`meta/classes.txt`, `meta/{train,test}.txt`, `images/`; "val" reads test.txt, as the seed
    validates on it), CIFAR-10's python batches (`data_batch_1..5`, `test_batch`; "val" reads test_batch) or
    ImageFolder (`train/`, `val/`) for a classifier or the contrastive model, PASCAL VOC (`JPEGImages/`,
    `SegmentationClass/`, `ImageSets/Segmentation/<split>.txt`) for a segmentation model."""
    if info is not None and info.task == "segmentation":
        if not is_voc(data):
            raise DataError(f"{info.name} trains on label maps: expected the PASCAL VOC layout, "
                            f"{data}/ImageSets/Segmentation/{split}.txt, {data}/JPEGImages/<id>.jpg and "
                            f"{data}/SegmentationClass/<id>.png (twins shapes DIR --layout voc writes one)")
        return Voc(data, split)
    if info is not None and info.task == "saliency":
        if not is_salicon(data):
            raise DataError(f"{info.name} trains on saliency maps: expected the SALICON layout, {data}/image/{split}/"
                            f"<name>.jpg and {data}/mask/{split}/<name>.png (twins shapes DIR --layout salicon "
                            "writes one)")
        return Salicon(data, split)
    if is_salicon(data) and not is_food101(data) and not (Path(data) / split).is_dir():
        raise DataError(f"{data} is a SALICON-layout folder of saliency maps (image/, mask/); "
                        f"{info.name if info else 'this model'} is a classifier and needs class labels "
                        "(ImageFolder or Food-101 layout)")
    if is_voc(data) and not (Path(data) / split).is_dir():
        raise DataError(f"{data} is a PASCAL VOC segmentation folder (label maps); "
                        f"{info.name if info else 'this model'} needs one class label per image (ImageFolder, "
                        "Food-101 or CIFAR-10 layout)")
    if is_cifar10(data):
        return Cifar10(data, split)
    return Food101(data, split) if is_food101(data) else ImageFolder(data, split)


def check_segmentation_batches(info: registry.ModelInfo, recipe: Recipe, train_images: int) -> None:
    """pspnet in training mode needs two images or more in every batch: the BatchNorm after the PPM's 1x1 bin sees
    one value per channel per image, so a batch of one has no variance to normalise with (torch refuses it,
    Keras would train that branch to a constant). Refused before the first step, not at an epoch's last batch."""
    if info.name != "pspnet":
        return
    why = "the BatchNorm after the pyramid pooling's 1x1 bin needs two values per channel"
    # torch replicas without SyncBatchNorm normalise their own rows; Keras on jax and --sync-bn, the global batch's.
    replicas = recipe.replicas if recipe.framework == "torch" and not recipe.sync_bn else 1
    where = f" per replica ({recipe.replicas} replicas without --sync-bn)" if replicas > 1 else ""
    if recipe.batch_size // replicas < 2:
        raise SystemExit(f"pspnet trains with batches of 2 images or more{where} ({why}), got --batch-size "
                         f"{recipe.batch_size}")
    if not recipe.drop_last and (train_images % recipe.batch_size) // replicas == 1:
        raise SystemExit(f"{train_images} train images in batches of {recipe.batch_size} leave a last batch of one "
                         f"image{where} ({why}): keep --drop-last (the recipe's) or choose another --batch-size")


def transforms(preprocess: str, size: int, info, margin: int = 10):
    """(train transform, val transform) of a recipe's `preprocess`."""
    if preprocess == "imagenet":
        return train_transform(size, info.mean, info.std), val_transform(size, info.mean, info.std)
    if preprocess == "food101":
        return food101_train_transform(size, margin), food101_val_transform(size)
    if preprocess == "salicon":
        return salicon_train_transform(size), salicon_val_transform(size)
    if preprocess == "simclr":
        return two_views(simclr_view_transform(size, info.mean, info.std)), cifar_test_transform(size, info.mean, info.std)
    if preprocess == "cifar":
        return cifar_train_transform(size, mean=info.mean, std=info.std), cifar_test_transform(size, info.mean, info.std)
    if preprocess == "voc":
        return voc_train_transform(size, mean=info.mean, std=info.std), voc_val_transform(size, info.mean, info.std)
    raise ValueError(f"unknown preprocess {preprocess!r}; expected one of {', '.join(PREPROCESS)}")


def check_preprocess(info, preprocess: str) -> None:
    """A saliency model reads image + map pairs (`salicon`); a classifier, images with labels."""
    if (info.task == "saliency") != (preprocess == "salicon"):
        raise SystemExit(f"--preprocess {preprocess} does not fit {info.name}: "
                         + ("its data are image + saliency-map pairs (salicon)" if info.task == "saliency"
                            else "salicon transforms image + saliency-map pairs, a classifier's data are labelled "
                                 "images (imagenet, food101 or cifar)"))
    if (info.task == "segmentation") != (preprocess == "voc"):
        raise SystemExit(f"--preprocess {preprocess} does not fit {info.name}: "
                         + ("its data are images with label maps (voc)" if info.task == "segmentation"
                            else "voc transforms images with their label maps; a classifier's are imagenet, "
                                 "food101 or cifar"))
    if (info.task == "contrastive") != (preprocess == "simclr"):
        raise SystemExit(f"--preprocess {preprocess} does not fit {info.name}: "
                         + ("it learns from two augmented views of each image (simclr)" if info.task == "contrastive"
                            else "simclr makes the two views of the contrastive model; a classifier's are "
                                 "imagenet, food101 or cifar"))


def plans(recipe: Recipe, info) -> tuple[BatchPlan, BatchPlan, list[str]]:
    train, val = open_split(recipe.data, "train", info), open_split(recipe.data, "val", info)
    check_same_classes(train, val)
    train_tf, val_tf = transforms(recipe.preprocess, recipe.input_size, info, recipe.margin)
    train_plan = BatchPlan(train, recipe.batch_size, train_tf, shuffle=True, seed=recipe.seed, drop_last=recipe.drop_last)
    if info.task == "contrastive":  # the val phase is the kNN monitor: train-split features vote for val images
        val_batch = recipe.val_batch_size or recipe.batch_size
        monitor = tasks.KnnPlans(BatchPlan(train, val_batch, val_tf, shuffle=False),
                                 BatchPlan(val, val_batch, val_tf, shuffle=False), len(train.classes), recipe.knn_k,
                                 recipe.knn_t)
        return train_plan, monitor, train.classes
    return (train_plan,
            # Every val image counts: the seed's val pipeline also drops the last partial batch, which
            # skips up to 127 images, or all of them in a val set smaller than a batch.
            BatchPlan(val, recipe.val_batch_size or recipe.batch_size, val_tf, shuffle=False, seed=recipe.seed),
            train.classes)


def describe(recipe: Recipe, steps_per_epoch: int) -> str:
    """The optimiser line of `twins train`'s header."""
    rate = f"lr {recipe.lr}" if recipe.lr_end is None else f"lr {recipe.lr} -> {recipe.lr_end} ({recipe.schedule} decay)"
    if recipe.optimizer == "adam":
        text = f"Adam {rate} betas {recipe.betas[0]}/{recipe.betas[1]}"
    else:
        text = f"SGD {rate} momentum {recipe.momentum}"
    loss = {"classification": "cross-entropy", "saliency": "MSE",
            "contrastive": f"NT-Xent (temperature {recipe.temperature}) of view pairs",
            "segmentation": f"cross-entropy over labelled pixels (255 ignored) + {recipe.aux_weight} x aux"}[
        task_of(recipe).name]
    text = f"{loss}, {text}"
    if recipe.weight_decay:
        text += f", L2 {recipe.weight_decay} on conv kernels"
    text += f"; {steps_per_epoch} steps per epoch, {recipe.epochs * steps_per_epoch} in all"
    if task_of(recipe).name == "contrastive":
        text += f"; val: kNN accuracy (k {recipe.knn_k}, t {recipe.knn_t}) of the encoder's features"
    events = [f"{what} every {n} steps" for what, n in (("loss", recipe.log_every), ("val", recipe.val_every),
                                                           ("checkpoint", recipe.checkpoint_every)) if n]
    return text + (f"; {', '.join(events)}" if events else "")


# ----------------------------------------------------------------------------------------------
# commands


# The `twins train` options that default to the model's recipe (`twins.runs.recipe_defaults`).
RECIPE_OPTIONS = ("epochs", "batch_size", "val_batch_size", "lr", "lr_end", "momentum", "weight_decay",
                  "log_every", "val_every", "checkpoint_every", "margin", "preprocess", "drop_last", "optimizer",
                  "betas", "frozen", "schedule", "temperature", "knn_k", "knn_t")


def parse_freeze(text: str | None, info: registry.ModelInfo):
    """`--freeze conv1,bn1,layer1,layer2` (or `none`) as the builder's `frozen` tuple; None when not given."""
    if text is None:
        return None
    if "frozen" not in info.extra:
        raise SystemExit(f"--freeze names modules of the saliency U-Net; {info.name} freezes with --feature-extract")
    frozen = () if text.strip().lower() == "none" else tuple(m.strip() for m in text.split(",") if m.strip())
    try:
        return registry.check_frozen(frozen)
    except ValueError as exc:
        raise SystemExit(f"--freeze: {exc}") from None


def build_options(info: registry.ModelInfo, recipe: Recipe) -> dict:
    """Builder options a recipe fixes beyond the class count: the saliency U-Net's frozen modules."""
    return {"frozen": recipe.frozen} if "frozen" in info.extra else {}


def replicas_of(framework: str, devices: int | None, world: World) -> int:
    """The replicas this `twins train` trains on, refusing a combination the framework cannot run: the torch
    twin is data-parallel under torchrun (one process per replica), the Keras twin within one process over
    `--devices` (jax only, checked once Keras is up: `keras_impl.distributed.devices_problem`)."""
    if devices is not None and devices < 1:
        raise SystemExit(f"--devices must be at least 1, got {devices}")
    if framework == "keras":
        if world.distributed:
            raise SystemExit(f"torchrun started {world.size} processes: it runs the torch twin (--framework torch) one "
                             "process per replica; the Keras twin trains data-parallel within one process: "
                             "twins train --framework keras --backend jax --devices N")
        return devices or 1
    if devices not in (None, 1):
        raise SystemExit(f"--devices {devices}: the torch twin trains data-parallel under torchrun, one process "
                         f"per device: torchrun --standalone --nproc_per_node={devices} -m twins_cli.main train "
                         "... (without --devices)")
    return world.size


def data_parallel_line(side: "Side", recipe: Recipe) -> str:
    """The data-parallel line of `twins train`'s header."""
    rows = recipe.batch_size // recipe.replicas
    if side.framework == "torch":
        engine = f"{recipe.replicas} torch processes in DistributedDataParallel"
        stats = ("BatchNorm statistics over the global batch (--sync-bn)" if recipe.sync_bn else
                 "BatchNorm statistics per replica (--sync-bn for the global batch's)")
    else:
        engine = f"Keras DataParallel over {recipe.replicas} {side.backend} devices"
        stats = "BatchNorm statistics over the global batch (jax computes on the sharded batch)"
    return f"data-parallel: {engine}, {rows} rows each of every batch of {recipe.batch_size}; {stats}"


def cmd_train(args) -> int:
    run = RunDir(args.out)
    world = World.from_env()
    if not world.main:  # rank 0 speaks for every replica; errors still reach stderr
        sys.stdout = open(os.devnull, "w")
    if args.resume:
        recipe = Recipe.from_json(run.config())
        args.frozen = args.freeze
        changed = [f"--{k.replace('_', '-')}" for k in RECIPE_OPTIONS if k != "epochs" and getattr(args, k) is not None]
        changed = [c.replace("--frozen", "--freeze") for c in changed]
        changed += [f"--{k.replace('_', '-')}" for k in ("weights", "init_from") if getattr(args, k)]
        changed += ["--sync-bn"] if args.sync_bn and not recipe.sync_bn else []
        if changed:
            raise SystemExit(f"--resume continues the recipe in {run.config_path}; {', '.join(changed)} cannot "
                             "change it (only --epochs can extend a constant-rate run)")
        if args.epochs and args.epochs != recipe.epochs:
            if recipe.lr_end is not None:
                raise SystemExit(f"{run.path} decays its rate over {recipe.epochs} epochs; --epochs {args.epochs} "
                                 "would stretch the schedule mid-run (start a new run with --weights instead)")
            recipe.epochs = args.epochs
        info = registry.get(recipe.model)
    else:
        if not args.model or not args.data:
            raise SystemExit("twins train needs MODEL and --data (or --resume --out RUN)")
        info = registry.get(args.model)
        settings = recipe_defaults(args.model)
        if args.init_from and args.weights:
            raise SystemExit("--init-from (a run's best weights) and --weights (a checkpoint file) both set the "
                             "starting weights; give one")
        if args.feature_extract and args.freeze is not None:
            raise SystemExit("--feature-extract (train the new classifier only) and --freeze contradict each "
                             "other; give one")
        args.frozen = parse_freeze(args.freeze, info)
        if args.betas is not None:
            args.betas = tuple(args.betas)
        settings.update({k: getattr(args, k) for k in RECIPE_OPTIONS if getattr(args, k) is not None})
        if args.momentum is not None and settings.get("optimizer") == "adam":
            raise SystemExit("--momentum is SGD's; this run trains with Adam (its betas: --betas B1 B2)")
        if args.betas is not None and settings.get("optimizer") == "sgd":
            raise SystemExit("--betas are Adam's; this run trains with SGD (--optimizer adam, or --momentum)")
        if "frozen" in info.extra and settings.get("frozen") is None:
            settings["frozen"] = info.extra["frozen"]
        if args.constant_lr:
            if args.lr_end is not None:
                raise SystemExit("--constant-lr and --lr-end contradict each other; give one")
            settings["lr_end"] = None
        recipe = Recipe(**{**settings, "model": args.model, "framework": args.framework, "data": args.data,
                           "feature_extract": args.feature_extract, "seed": args.seed, "workers": args.workers,
                           "input_size": args.img_size or info.input_size, "aux_heads": info.aux_heads,
                           "aux_weight": info.aux_weight, "weights": args.weights, "init_from": args.init_from,
                           "exclude": tuple(args.exclude or ()), "sync_bn": args.sync_bn})
    # A resumed Keras run keeps its devices unless --devices says otherwise (torch's are torchrun's processes).
    kept = recipe.replicas if args.resume and recipe.framework == "keras" else None
    recipe.replicas = replicas_of(recipe.framework, args.devices if args.devices is not None else kept, world)
    if recipe.sync_bn and recipe.framework == "keras":
        raise SystemExit("--sync-bn is the torch twin's (SyncBatchNorm); Keras on jax already takes BatchNorm "
                         "statistics over the global batch")
    check_size(info, recipe.input_size)
    check_preprocess(info, recipe.preprocess)
    try:
        recipe.check()
    except ValueError as exc:
        raise SystemExit(f"twins train: {exc}") from None
    side = Side(recipe.framework, args.backend or recipe.backend)
    recipe.backend = side.backend
    train_plan, val_plan, classes = plans(recipe, info)
    problem = split_problem(recipe.batch_size, recipe.replicas, train_plan.num_samples, recipe.drop_last)
    if problem:
        raise SystemExit(f"twins train on {recipe.replicas} replicas: {problem}")
    check_segmentation_batches(info, recipe, train_plan.num_samples)
    if side.framework == "keras":
        try:
            side.distributed.data_parallel(recipe.replicas)
        except ValueError as exc:
            raise SystemExit(f"twins train: {exc}") from None
    else:
        side.distributed.start(world)
    if recipe.classes and recipe.classes != classes:
        raise SystemExit(f"{recipe.data} now has classes {classes}; the run was started with {recipe.classes}")
    recipe.classes = classes
    if info.task == "contrastive":
        names = ", ".join(classes[:10]) + (f", ... ({len(classes) - 10} more)" if len(classes) > 10 else "")
        data = f"images, two views each; labels of {len(classes)} classes ({names}) for the kNN monitor only"
        num_classes = info.num_classes
    elif classes:
        names = ", ".join(classes[:10]) + (f", ... ({len(classes) - 10} more)" if len(classes) > 10 else "")
        data = f"images, {len(classes)} classes ({names})"
        num_classes = len(classes)
    else:
        frozen = ", ".join(recipe.frozen) if recipe.frozen else "nothing"
        data = f"image + saliency-map pairs, {frozen} frozen"
        num_classes = info.num_classes
    print(f"twins train {recipe.model} on {side.label}: {train_plan.num_samples} train / {val_plan.num_samples} val "
          f"{data}, {recipe.input_size}x{recipe.input_size}, batch {recipe.batch_size}, {recipe.epochs} epochs")
    print(describe(recipe, len(train_plan)))
    if recipe.replicas > 1:
        print(data_parallel_line(side, recipe))
    model = side.build(recipe.model, num_classes=num_classes, seed=recipe.seed, **build_options(info, recipe))
    # A run resumed before its first checkpoint starts over, from its --weights like a new one.
    if not (args.resume and run.resume_state() is not None):
        if recipe.weights:
            load_weights(side, model, info, recipe.weights, recipe.exclude, num_classes)
        elif recipe.init_from:
            init_from(side, model, info, recipe.init_from, num_classes, recipe.exclude)
    trainable = side.trainer.set_feature_extract(model, info.classifier, recipe.feature_extract)
    print(f"parameters to update ({len(trainable)}{', feature extraction' if recipe.feature_extract else ''}):")
    for name in trainable:
        print(f"\t{name}")
    if world.main:
        if not args.resume:
            run.start(recipe)
        elif run.config() != recipe.to_json():  # --epochs extended, or another number of replicas
            from twins.runs import write_json

            write_json(run.config_path, recipe.to_json())
        text = "".join(f"{name}\n" for name in trainable)
        checkpoints.write_atomic(run.path / "trainable.txt", lambda tmp: tmp.write_text(text))
    options = {}
    if side.framework == "torch":
        side.distributed.barrier()  # rank 0 has started the run directory the others resume from
        options["world"] = world
    try:
        side.trainer.train_model(model, train_plan, val_plan, recipe, run, resume=args.resume, **options)
        if side.framework == "torch":
            side.distributed.stop()
    except KeyboardInterrupt:
        state = run.resume_state()
        done = Position.start(state).describe(recipe, len(train_plan)) if state else "before the first checkpoint"
        launcher = f"torchrun --nproc_per_node={world.size} -m twins_cli.main" if world.distributed else "twins"
        if world.main:
            print(f"\ninterrupted; {run.path} holds the state {done}. Continue with:\n"
                  f"  {launcher} train --resume --out {run.path}", file=sys.stderr)
        return 130
    return 0


def cmd_evaluate(args) -> int:
    from twins import metrics
    from twins_cli.convert import classes_in

    info = registry.get(args.model)
    folder = open_split(args.data, args.split, info)
    size = args.img_size or info.input_size
    check_size(info, size)
    preprocess = args.preprocess or recipe_defaults(args.model)["preprocess"]
    check_preprocess(info, preprocess)
    state = checkpoints.strip_data_parallel(checkpoints.read(args.weights))
    side = Side(args.framework, args.backend)
    _, val_tf = transforms(preprocess, size, info)
    plan = BatchPlan(folder, args.batch_size, val_tf, shuffle=False)
    if info.task == "contrastive":  # the kNN monitor: the train split's features vote for the split's images
        if args.split in ("train",):
            raise SystemExit("--split train is the kNN monitor's memory; evaluate another split (val, test)")
        memory = open_split(args.data, "train", info)
        check_same_classes(memory, folder)
        plan = tasks.KnnPlans(BatchPlan(memory, args.batch_size, val_tf, shuffle=False), plan, len(memory.classes),
                              args.knn_k, args.knn_t)
    if info.task == "segmentation" and classes_in(state, info) != len(folder.classes):
        raise SystemExit(f"{args.weights} was trained for {classes_in(state, info)} classes, {folder.root} has "
                         f"{len(folder.classes)} ({', '.join(folder.classes[:5])}{', ...' if len(folder.classes) > 5 else ''})")
    if info.task != "classification":
        model = side.build(args.model, num_classes=classes_in(state, info))
        side.load(model, state, strict=True)
        if args.framework == "torch":
            model.eval()
        result = side.trainer.score(model, plan, tasks.get(info.task))
        print(f"{args.model} on {side.label}, {args.weights}: {folder.root} {folder.split} ({result['samples']} images)")
        print(scores_text(result))
        return 0
    model = side.build(args.model, num_classes=len(folder.classes))
    side.load(model, state, strict=True)
    logits, labels = side.trainer.predict_logits(model, plan)
    loss, acc = metrics.cross_entropy(logits, labels), metrics.correct(logits, labels) / len(labels)
    print(f"{args.model} on {side.label}, {args.weights}: {folder.root / folder.split} ({len(labels)} images)")
    print(f"loss {loss:.4f}  accuracy {acc:.4f}")
    predicted = logits.argmax(-1)
    for label, name in enumerate(folder.classes):
        mine = labels == label
        print(f"  {name}: {int((predicted[mine] == label).sum())}/{int(mine.sum())}")
    return 0


def read_classes(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise SystemExit(f"classes file not found: {path} (a run directory's classes.txt, one name per line)")
    names = [line.strip() for line in p.read_text().splitlines() if line.strip()]
    if not names:
        raise SystemExit(f"{path} lists no classes")
    return names


def eval_outputs(side: "Side", model, x: "np.ndarray") -> "np.ndarray":
    """Eval-mode outputs of an NHWC image batch in either framework, as the Keras twin gives them: logits
    (N, C) as they are, maps (saliency, segmentation logits) channels-last. What `twins predict` draws from."""
    import numpy as np

    if side.framework != "torch":
        return np.asarray(model.predict_on_batch(x))
    import torch

    model.eval()
    with torch.no_grad():
        out = model(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()
    return out.transpose(0, 2, 3, 1) if out.ndim == 4 else out


def cmd_predict(args) -> int:
    import numpy as np

    from twins import metrics

    info = registry.get(args.model)
    if info.task == "saliency":
        return predict_saliency(args, info)
    if info.task == "segmentation":
        return predict_segmentation(args, info)
    if info.task == "contrastive":
        raise SystemExit(f"{args.model} learns representations, not classes: twins evaluate {args.model} reports its "
                         "kNN accuracy; predict with a simclr_sl run fine-tuned from it (--init-from)")
    if args.out or args.masks:
        raise SystemExit(f"--out and --masks are for the maps of a saliency or segmentation model; {args.model} prints "
                         "its top-k classes")
    if not args.classes:
        raise SystemExit(f"{args.model} is a classifier: --classes FILE names its classes (a run's classes.txt)")
    classes = read_classes(args.classes)
    size = args.img_size or info.input_size
    check_size(info, size)
    if not 1 <= args.top_k:
        raise SystemExit(f"--top-k must be at least 1, got {args.top_k}")
    _, val_tf = transforms(args.preprocess or recipe_defaults(args.model)["preprocess"], size, info)
    images = [val_tf(read_image(path)) for path in args.images]
    state = checkpoints.strip_data_parallel(checkpoints.read(args.weights))
    from twins_cli.convert import classes_in

    trained = classes_in(state, info)
    if trained != len(classes):
        raise SystemExit(f"{args.weights} was trained for {trained} classes, {args.classes} lists {len(classes)}")
    side = Side(args.framework, args.backend)
    model = side.build(args.model, num_classes=len(classes))
    side.load(model, state, strict=True)
    logits = eval_outputs(side, model, np.stack(images))
    index, probs = metrics.top_k(logits, min(args.top_k, len(classes)))
    for path, idx, p in zip(args.images, index, probs):
        print(f"{path}: " + ", ".join(f"{classes[i]} {q:.3f}" for i, q in zip(idx, p)))
    return 0


def saliency_panel(image: "np.ndarray", predicted: "np.ndarray", target=None) -> "np.ndarray":
    """The seed's figure as one BGR image: [image, image + target heat (when there is a target), image +
    predicted heat], each heat map `applyColorMap(map, COLORMAP_JET)` blended `addWeighted(image, 0.7, heat,
    0.3, 0)`. `image` is RGB uint8, the maps float in [0, 1] of the image's size. (The seed blends its RGB
    image with OpenCV's BGR heat map and shows the result as RGB, which swaps red and blue in the heat; here
    both are BGR, so hot is red.)"""
    import cv2
    import numpy as np

    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)

    def overlay(saliency):
        heat = cv2.applyColorMap(np.clip(saliency * 255.0, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
        return cv2.addWeighted(bgr, 0.7, heat, 0.3, 0)

    panels = [bgr] + ([overlay(target)] if target is not None else []) + [overlay(predicted)]
    return np.concatenate(panels, axis=1)


def write_png(path: Path, image) -> Path:
    import cv2

    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode {path}")
    return checkpoints.write_atomic(path, lambda tmp: tmp.write_bytes(encoded.tobytes()))


def predict_saliency(args, info: registry.ModelInfo) -> int:
    """`twins predict saliency_unet ... --out DIR [--masks DIR]`: per image, `DIR/<name>.png` (the seed's panel
    at the network's input size) and `DIR/<name>.saliency.png` (the predicted map, grayscale, at the image's own
    size); with `--masks`, the target's panel and the image's MSE / CC / KLD / SIM."""
    import cv2
    import numpy as np

    from twins import metrics
    from twins.data import salicon_resize, salicon_scale
    from twins_cli.convert import classes_in

    if args.classes:
        raise SystemExit(f"{args.model} predicts saliency maps, not classes: drop --classes")
    if not args.out:
        raise SystemExit(f"{args.model} writes its maps as PNG files: give --out DIR")
    size = args.img_size or info.input_size
    check_size(info, size)
    images = [(Path(p), read_image(p)) for p in args.images]
    masks = []
    for path, image in images:
        if args.masks is None:
            masks.append(None)
            continue
        mask_path = Path(args.masks) / f"{path.stem}.png"
        if not mask_path.is_file():
            raise SystemExit(f"--masks {args.masks}: no saliency map {mask_path} for {path}")
        mask = read_mask(mask_path)
        check_map_size(image, mask, path, mask_path)
        masks.append(mask)
    state = checkpoints.strip_data_parallel(checkpoints.read(args.weights))
    maps = classes_in(state, info)
    if maps != 1:
        raise SystemExit(f"{args.weights} ends on {maps} maps; twins predict draws one saliency map per image")
    side = Side(args.framework, args.backend)
    model = side.build(args.model, num_classes=maps)
    side.load(model, state, strict=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for (path, image), mask in zip(images, masks):
        resized, resized_mask = salicon_resize(image, mask if mask is not None else image[..., 0], size)
        x, target = salicon_scale(resized, resized_mask)
        predicted = eval_outputs(side, model, x[None])[0, ..., 0]
        panel = write_png(out / f"{path.stem}.png",
                          saliency_panel(resized, predicted, target[..., 0] if mask is not None else None))
        full = cv2.resize(predicted, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
        saliency = write_png(out / f"{path.stem}.saliency.png", np.clip(full * 255.0 + 0.5, 0, 255).astype(np.uint8))
        line = f"{path}: {panel}, {saliency}"
        if mask is not None:
            scores = {k: float(v[0]) for k, v in metrics.saliency_scores(predicted[None], target[None, ..., 0]).items()}
            line += f" ({scores_text(scores)})"
        print(line)
    return 0


def predict_segmentation(args, info: registry.ModelInfo) -> int:
    """`twins predict pspnet ... --out DIR [--masks DIR] [--classes FILE]`: per image, the val transform (the
    longer side resized to the input size, the rest padded), the argmax of the logits with the padding cut
    off, resized back to the image's size (nearest); written as `DIR/<name>.png`, a palette PNG of class
    indices in VOC's colours (what `SegmentationClass/` holds), and `DIR/<name>.overlay.png`, the image with
    the mask blended over it. Printed: the classes found and their share of the pixels; with `--masks` (a
    `SegmentationClass/` folder) the image's mIoU and pixel accuracy, 255 ignored."""
    import cv2
    import numpy as np

    from twins import metrics
    from twins.data import overlay, read_label, voc_val_size, write_label_png
    from twins_cli.convert import classes_in

    if not args.out:
        raise SystemExit(f"{args.model} writes its label maps as PNG files: give --out DIR")
    if args.preprocess not in (None, "voc"):
        check_preprocess(info, args.preprocess)
    size = args.img_size or info.input_size
    check_size(info, size)
    state = checkpoints.strip_data_parallel(checkpoints.read(args.weights))
    classes = classes_in(state, info)
    names = read_classes(args.classes) if args.classes else [str(i) for i in range(classes)]
    if len(names) != classes:
        raise SystemExit(f"{args.weights} was trained for {classes} classes, {args.classes} lists {len(names)}")
    images = [(Path(p), read_image(p)) for p in args.images]
    targets = []
    for path, image in images:
        target = None
        if args.masks is not None:
            label_path = Path(args.masks) / f"{path.stem}.png"
            if not label_path.is_file():
                raise SystemExit(f"--masks {args.masks}: no label map {label_path} for {path}")
            target = read_label(label_path)
            if target.shape != image.shape[:2]:
                raise SystemExit(f"{label_path} is {target.shape[1]}x{target.shape[0]}, its image {path} is "
                                 f"{image.shape[1]}x{image.shape[0]}")
            bad = (target >= classes) & (target != registry.IGNORE_LABEL)
            if bad.any():
                raise SystemExit(f"{label_path}: label {int(target[bad][0])} out of range for {args.weights}'s {classes} "
                                 f"classes (0..{classes - 1}, {registry.IGNORE_LABEL} ignored)")
        targets.append(target)
    side = Side(args.framework, args.backend)
    model = side.build(args.model, num_classes=classes)
    side.load(model, state, strict=True)
    _, val_tf = transforms("voc", size, info)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for (path, image), target in zip(images, targets):
        x, _ = val_tf(image, np.zeros(image.shape[:2], np.uint8), None)
        height, width = voc_val_size(*image.shape[:2], size)  # the padding is cut off
        predicted = eval_outputs(side, model, x[None])[0].argmax(-1)[:height, :width].astype(np.uint8)
        label = cv2.resize(predicted, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST)
        mask = write_label_png(out / f"{path.stem}.png", label)
        blended = write_png(out / f"{path.stem}.overlay.png", cv2.cvtColor(overlay(image, label), cv2.COLOR_RGB2BGR))
        found = np.bincount(label.ravel(), minlength=classes) / label.size
        line = f"{path}: {mask}, {blended}; " + ", ".join(f"{names[c]} {found[c]:.0%}" for c in np.flatnonzero(found))
        if target is not None:
            scores = metrics.segmentation_scores(metrics.confusion_matrix(label, target, classes))
            line += f" (mIoU {scores['miou']:.4f}, pixel acc {scores['acc']:.4f})"
        print(line)
    return 0


# What plot-history calls the val score of a run (`history["score"]`).
SCORE_NAMES = {"acc": "accuracy", "cc": "CC (correlation with the target map)", "miou": "mIoU"}


def cmd_plot_history(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    scores = set()
    for path in args.runs:
        run = RunDir(path)
        history, config = run.history(), run.config()
        if not history["epochs"]:
            raise SystemExit(f"{path} has no finished epoch yet (history.json is empty)")
        epochs = [e["epoch"] + 1 for e in history["epochs"]]
        label = f"{Path(path).name} ({config['model']}, {config['framework']}"
        label += f"/{config['backend']})" if config.get("backend") else ")"
        score = history.get("score") or "acc"
        scores.add(score)
        line, = ax.plot(epochs, [e["val"][score] for e in history["epochs"]], marker="o", label=f"{label} val")
        if score in history["epochs"][0]["train"]:
            ax.plot(epochs, [e["train"][score] for e in history["epochs"]], linestyle="--", color=line.get_color(),
                    alpha=0.6, label=f"{label} train")
        evals = history.get("evals") or []
        if evals:  # --val-every: at the epoch fraction each evaluation was made (step 0: near the start)
            per_epoch = max(len(history["epochs"][0]["train"]["step_losses"]), 1)
            every = config.get("val_every") or "N"
            ax.plot([(e["step"] + 1) / per_epoch for e in evals], [e[score] for e in evals], linestyle=":",
                    marker=".", color=line.get_color(), alpha=0.6, label=f"{label} val every {every} steps")
    name = " / ".join(SCORE_NAMES.get(s, s) for s in sorted(scores))
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(name)
    ax.set_ylim(min(0, ax.get_ylim()[0]), 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"{name} per epoch")
    fig.tight_layout()
    out = checkpoints.write_atomic(args.out, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    print(f"wrote {out}")
    return 0


def cmd_shapes(args) -> int:
    from twins.shapes import make_cifar10, make_food101, make_salicon, make_shapes, make_voc

    if args.layout == "voc":
        root = make_voc(args.out, train=args.train, val=args.val, size=args.size, seed=args.seed)
        print(f"wrote {root}: PASCAL VOC layout (JPEGImages/*.jpg, SegmentationClass/*.png palette label maps, "
              f"ImageSets/Segmentation/{{train,val}}.txt, classes.txt), {args.train} train and {args.val} val images "
              f"of discs, squares and triangles, {args.size * 5 // 4}x{args.size}, 255 around every outline")
        return 0

    if args.layout == "cifar10":
        root = make_cifar10(args.out, train=args.train, test=args.val, seed=args.seed)
        print(f"wrote {root}: CIFAR-10 python batches (data_batch_1..5 with {args.train} images each, test_batch with "
              f"{args.val}, batches.meta), 32x32, ten classes of drawn shapes and colours")
        return 0
    if args.layout == "salicon":
        root = make_salicon(args.out, train=args.train, val=args.val, size=args.size, seed=args.seed)
        print(f"wrote {root}: SALICON layout (image/{{train,val}}/*.jpg, mask/{{train,val}}/*.png), {args.train} train "
              f"and {args.val} val images of a bright blob among dim distractors, {args.size * 4 // 3}x{args.size}, "
              "each with its Gaussian saliency map")
        return 0
    if args.layout == "food101":
        root = make_food101(args.out, train=args.train, test=args.val, size=args.size, seed=args.seed)
        print(f"wrote {root}: Food-101 layout (meta/classes.txt, meta/train.txt, meta/test.txt, images/), "
              f"train {args.train} and test {args.val} images per class (disc, square), short side {args.size}")
        return 0
    root = make_shapes(args.out, train=args.train, val=args.val, size=args.size, seed=args.seed)
    print(f"wrote {root}: train {args.train} and val {args.val} images per class (disc, square), "
          f"{args.size}x{args.size}")
    return 0


def add_parsers(sub) -> None:
    models = ", ".join(registry.names())
    t = sub.add_parser("train", help="the fine-tuning recipe in torch or Keras, written to a run directory")
    t.add_argument("model", nargs="?", help=f"architecture ({models}); taken from the run with --resume")
    t.add_argument("--framework", choices=FRAMEWORKS, default="torch")
    t.add_argument("--backend", choices=KERAS_BACKENDS,
                   help=f"Keras backend (default: $KERAS_BACKEND, else {DEFAULT_KERAS_BACKEND})")
    t.add_argument("--data", help="ImageFolder root (train/<class>/, val/<class>/), Food-101 root "
                                  "(meta/classes.txt, meta/train.txt, meta/test.txt, images/), CIFAR-10 python "
                                  "batches (data_batch_1..5, test_batch; simclr_ssl, simclr_sl), SALICON root "
                                  "(image/{train,val}/, mask/{train,val}/; saliency_unet) or PASCAL VOC root "
                                  "(JPEGImages/, SegmentationClass/, ImageSets/Segmentation/; pspnet)")
    t.add_argument("--out", required=True, help="run directory")
    t.add_argument("--epochs", type=int, default=None,
                   help="default: the model's recipe (15; vgg19_slim 20; saliency_unet 5; simclr_ssl, simclr_sl 100; "
                        "pspnet 50)")
    t.add_argument("--batch-size", type=int, default=None,
                   help="default 8; vgg19_slim 64; saliency_unet 4; simclr_ssl 256 images (512 views), simclr_sl 256; "
                        "pspnet 16")
    t.add_argument("--val-batch-size", type=int, default=None, help="default: --batch-size; vgg19_slim 128; simclr 512")
    t.add_argument("--lr", type=float, default=None,
                   help="(starting) learning rate, default 0.001; simclr_ssl 0.3, simclr_sl 0.1, pspnet 0.01")
    t.add_argument("--lr-end", type=float, default=None,
                   help="decay the rate to this over all steps (vgg19_slim: 1e-7, linear; simclr: 0, cosine; pspnet: 0, "
                        "poly)")
    t.add_argument("--schedule", choices=SCHEDULES, default=None,
                   help="the shape of the decay to --lr-end (default linear; simclr_ssl, simclr_sl cosine; pspnet poly: "
                        "(1 - step / steps) ** 0.9)")
    t.add_argument("--constant-lr", action="store_true", help="no decay, whatever the model's recipe says")
    t.add_argument("--momentum", type=float, default=None, help="default 0.9")
    t.add_argument("--weight-decay", type=float, default=None,
                   help="L2 on conv kernels, weight_decay * sum(w^2) / 2 in the loss (vgg19_slim: 5e-4, pspnet: 1e-4)")
    t.add_argument("--log-every", type=int, default=None, help="print the loss every N steps (vgg19_slim: 10)")
    t.add_argument("--val-every", type=int, default=None, help="evaluate on val every N steps (vgg19_slim: 500)")
    t.add_argument("--checkpoint-every", type=int, default=None,
                   help="write a resume checkpoint every N steps, besides every epoch end (vgg19_slim: 500)")
    t.add_argument("--margin", type=int, default=None, help="food101 random-crop margin in pixels (10)")
    t.add_argument("--preprocess", choices=PREPROCESS, default=None,
                   help="imagenet: RandomResizedCrop / Resize+CenterCrop, ImageNet mean/std (the zoo's); food101: "
                        "random / central square crop, area resize, pixels in [0, 1] (vgg19_slim's); salicon: "
                        "joint image + map resize, crop, flip, rotation, pixels in [0, 1] (saliency_unet's); "
                        "simclr: two views of crop, flip, colour jitter, grayscale, CIFAR mean/std (simclr_ssl's); "
                        "cifar: padded random crop and flip (simclr_sl's)")
    t.add_argument("--temperature", type=float, default=None, help="simclr_ssl: NT-Xent's temperature (0.5)")
    t.add_argument("--knn-k", type=int, default=None,
                   help="simclr_ssl: neighbours of the kNN monitor, the val phase (200)")
    t.add_argument("--knn-t", type=float, default=None,
                   help="simclr_ssl: temperature of the kNN monitor's vote weights exp(cos / t) (0.1)")
    t.add_argument("--optimizer", choices=("sgd", "adam"), default=None,
                   help="sgd: torch's SGD with --momentum (default); adam: torch's Adam with --betas (saliency_unet)")
    t.add_argument("--betas", type=float, nargs=2, default=None, metavar=("B1", "B2"),
                   help="Adam's betas (default 0.9 0.999; saliency_unet 0.9 0.99)")
    t.add_argument("--freeze", default=None,
                   help="saliency_unet: comma-separated top-level modules that do not train, or none (default: the "
                        "seed's conv1,bn1,layer1,layer2)")
    t.add_argument("--drop-last", action=argparse.BooleanOptionalAction, default=None,
                   help="full training batches only, as the seed 002 pipeline (vgg19_slim: on); val keeps every image")
    t.add_argument("--img-size", type=int, default=None,
                   help="square input size (default: the model's, 224/299; saliency_unet 256, a multiple of 32)")
    t.add_argument("--feature-extract", action="store_true", help="train the new classifier only")
    t.add_argument("--weights", help="initial weights (torch layout); another class count keeps all but the head")
    t.add_argument("--exclude", action="append", help="torch key prefix to leave fresh when loading --weights")
    t.add_argument("--init-from", metavar="RUN",
                   help="start from the best weights of a twins train run of either framework: the same model, or "
                        "for simclr_sl a simclr_ssl run's encoder (fine-tune; add --feature-extract for the linear "
                        "probe)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--workers", type=int, default=2, help="data loading workers (processes on torch, threads on Keras)")
    t.add_argument("--devices", type=int, default=None,
                   help="Keras on jax: train data-parallel over N devices of this process (keras.distribution."
                        "DataParallel; --batch-size is the global batch). The torch twin runs under torchrun instead: "
                        "torchrun --nproc_per_node=N -m twins_cli.main train ...")
    t.add_argument("--sync-bn", action="store_true",
                   help="torch under torchrun: BatchNorm statistics over the global batch (SyncBatchNorm) instead of "
                        "each replica's")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint (epoch end or --checkpoint-every)")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="a checkpoint's val loss and metrics (accuracy; MSE, CC, KLD, SIM of saliency "
                                        "maps; kNN accuracy; mIoU and pixel accuracy of label maps) on a split")
    e.add_argument("model")
    e.add_argument("--framework", choices=FRAMEWORKS, default="torch")
    e.add_argument("--backend", choices=KERAS_BACKENDS)
    e.add_argument("--weights", required=True)
    e.add_argument("--data", required=True)
    e.add_argument("--split", default="val")
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--img-size", type=int, default=None)
    e.add_argument("--preprocess", choices=PREPROCESS, help="default: the model's recipe")
    e.add_argument("--knn-k", type=int, default=200, help="simclr_ssl: neighbours of the kNN accuracy (200)")
    e.add_argument("--knn-t", type=float, default=0.1, help="simclr_ssl: temperature of the kNN vote weights (0.1)")
    e.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="top-k classes of images, a saliency model's maps as PNG panels, or pspnet's "
                                       "label maps as palette PNGs with overlays")
    p.add_argument("model")
    p.add_argument("images", nargs="+")
    p.add_argument("--framework", choices=FRAMEWORKS, default="torch")
    p.add_argument("--backend", choices=KERAS_BACKENDS)
    p.add_argument("--weights", required=True,
                   help="torch-layout .safetensors/.pth/.npz, or a TensorFlow checkpoint prefix (vgg19_slim)")
    p.add_argument("--classes", help="a classifier's class names, one per line (a run's classes.txt); pspnet: "
                                     "names for its printed class shares")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--img-size", type=int, default=None)
    p.add_argument("--preprocess", choices=PREPROCESS, help="default: the model's recipe")
    p.add_argument("--out", help="saliency_unet: folder for NAME.png (the seed's panel) and NAME.saliency.png (the map); "
                                 "pspnet: NAME.png (palette label map) and NAME.overlay.png")
    p.add_argument("--masks", help="saliency_unet: folder of target maps NAME.png: adds the target's panel and scores; "
                                   "pspnet: a SegmentationClass/ folder: adds each image's mIoU and pixel accuracy")
    p.set_defaults(func=cmd_predict)

    h = sub.add_parser("plot-history", help="the val (and train) score per epoch of several runs (accuracy, CC, kNN "
                                            "accuracy or mIoU), as a PNG")
    h.add_argument("runs", nargs="+")
    h.add_argument("--out", required=True)
    h.set_defaults(func=cmd_plot_history)

    s = sub.add_parser("shapes", help="write a learnable dataset: discs vs squares (imagefolder, food101), salient "
                                      "blobs (salicon), ten classes of 32x32 drawings (cifar10) or shapes to "
                                      "segment (voc)")
    s.add_argument("out")
    s.add_argument("--layout", choices=("imagefolder", "food101", "salicon", "cifar10", "voc"), default="imagefolder",
                   help="ImageFolder (train/, val/), Food-101 (meta/, images/; non-square images), SALICON "
                        "(image/, mask/: a bright blob and its Gaussian saliency map), CIFAR-10's python batches or "
                        "PASCAL VOC (JPEGImages/, SegmentationClass/, ImageSets/Segmentation/: discs, squares and "
                        "triangles with their label maps)")
    s.add_argument("--train", type=int, default=200,
                   help="training images per class (salicon, voc: in all; cifar10: per data_batch file)")
    s.add_argument("--val", type=int, default=50,
                   help="validation (Food-101: test) images per class (salicon, voc: in all; cifar10: in test_batch)")
    s.add_argument("--size", type=int, default=64)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_shapes)
