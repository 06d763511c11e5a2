"""Model names and metadata, kept once for both twins.

`torch_impl.build(name)` and `keras_impl.build(name)` accept exactly the names registered here that
have a builder in both packages; the metadata (input size, normalisation, which layer is the
classifier head) is what the CLI, the data pipelines and the benchmark read.
"""
from __future__ import annotations

from dataclasses import dataclass, field

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The SimCLR seed's CIFAR-10 normalisation (its `transforms.Normalize`).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


# The label a segmentation map gives the pixels that are not scored and carry no loss: VOC's outline band,
# semseg's `ignore_label`. Every reader, loss and metric of the project takes it from here.
IGNORE_LABEL = 255


class UnknownModelError(ValueError):
    """Raised for a model name that is not registered."""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    family: str
    input_size: int
    # torch module paths of the layers a new `num_classes` replaces (exclude-final-layer restore).
    classifier: tuple[str, ...]
    num_classes: int = 1000
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # Smallest spatial size the architecture accepts (every stride still leaves >= 1 pixel).
    min_input_size: int = 32
    # Smallest size its training mode accepts where that is larger (inception_v3 with its aux head: 299): the parity
    # engine's width stays at or above it wherever its height is (`parity_width`).
    train_min_input_size: int | None = None
    # Largest spatial size it accepts, where there is one (vgg19_slim squeezes a map that must be 1x1).
    max_input_size: int | None = None
    # Height and width must be multiples of this (saliency_unet: 32, its decoder doubles the map back onto
    # skip maps of the encoder, five times).
    size_multiple: int = 1
    # ... after subtracting this: PSPNet needs (H - 1) % 8 == 0 (473, 713), so that its output-stride-8 map of
    # (H - 1) / 8 + 1 pixels upsamples onto the input's grid corner to corner (align_corners=True).
    size_offset: int = 0
    # Image height the parity suite and `twins parity` use by default (the width is `parity_width(height)`, so
    # no row is square): big enough that every stage has spatial extent > 1, small enough for a 2-core CPU.
    parity_size: int = 64
    # Torch module paths of auxiliary classifier heads (inception's `AuxLogits.fc`): in training mode
    # the torch twin returns `(logits, aux...)`, the Keras twin exposes them as extra outputs of a
    # training view, and the loss is CE(logits) + aux_weight * CE(aux).
    aux_heads: tuple[str, ...] = ()
    aux_weight: float = 0.4
    # Builder options of the twins the parity engine trains: dropout off, so both twins compute the
    # same training-mode function (two frameworks never draw the same dropout masks).
    parity_train_options: dict = field(default_factory=dict)
    notes: str = ""
    extra: dict = field(default_factory=dict)
    # What the model computes, which decides its loss, labels and metrics: "classification" (logits,
    # cross-entropy, accuracy), "saliency" (a sigmoid map, MSE, CC / KLD / SIM), "contrastive" (NT-Xent, kNN)
    # or "segmentation" (per-pixel logits, cross-entropy ignoring 255, mIoU and pixel accuracy).
    task: str = "classification"
    # Where the torch twin's state_dict keys come from: the checkpoints that load into it with `strict=True`
    # (the model cards of the documentation site say it).
    key_source: str = ""

    def parity_width(self, height: int) -> int:
        """The width the parity engine pairs with `height`, so that no parity row is square (a twin that confuses
        height and width computes the same thing on a square image): the valid width nearest 7/8 of the height
        below it and at least 3/4 of it, else the valid width nearest 17/16 of it above it, else (no other width
        fits) the height. Not narrower than 3/4: saliency_unet at 64x32 (its only narrower width) leaves layer4's
        training-mode BatchNorms 4 values per channel, and its float64 Adam steps then differ by 3.8e-3 between
        two correct twins (bound 1e-6; 1.6e-8 at 64x64): it gets 64x96. Nor narrower than the training mode's
        minimum where the height meets it (inception_v3 at 299: 299x318; at 75, eval only, 75x80)."""
        train = self.train_min_input_size if self.train_min_input_size and height >= self.train_min_input_size else 0
        low = max(-(-3 * height // 4), train)
        below = [w for w in range(height - 1, low - 1, -1) if self.size_problem(height, w) is None]
        if below:
            return min(below, key=lambda w: (abs(w - height * 7 / 8), -w))
        top = self.max_input_size or 2 * height
        above = [w for w in range(height + 1, top + 1) if self.size_problem(height, w) is None]
        if above:
            return min(above, key=lambda w: (abs(w - height * 17 / 16), w))
        return height

    def size_problem(self, height: int, width: int) -> str | None:
        """Why a `height` x `width` input does not fit this model, or None (both twins and the CLI ask)."""
        return size_problem(self.name, height, width, min_size=self.min_input_size, max_size=self.max_input_size,
                            multiple=self.size_multiple, offset=self.size_offset, why=self.extra.get("size_why", ""))


_RESNET_NOTE = "torchvision v1.5 layout (stride on the 3x3 conv of a Bottleneck)"

# The saliency U-Net (seed 000): its decoder blocks (everything that is not the ResNet-50 encoder), and the
# encoder modules the seed freezes. The seed freezes `model.children()` up to index 7: conv1, bn1, relu,
# maxpool, tanh, sigmoid, layer1, layer2 (the last two are not in its comment's intent, but in its code);
# of those conv1, bn1, layer1 and layer2 hold parameters.
SALIENCY_DECODER = ("conv_5", "conv_4", "conv_3", "conv_2", "conv_1", "conv_0",
                    "deconv4", "deconv3", "deconv2", "deconv1", "deconv0")
SALIENCY_ENCODER = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")
SALIENCY_FROZEN = ("conv1", "bn1", "layer1", "layer2")


def check_frozen(frozen, modules=SALIENCY_ENCODER + SALIENCY_DECODER, model: str = "saliency_unet") -> tuple:
    """The frozen set as a tuple of top-level module names, each one that holds parameters."""
    frozen = tuple(frozen or ())
    unknown = [name for name in frozen if name not in modules]
    if unknown:
        raise ValueError(f"{model} cannot freeze {', '.join(map(repr, unknown))}: expected top-level modules "
                         f"among {', '.join(modules)}")
    return frozen


def size_problem(model: str, height: int, width: int, *, min_size: int = 1, max_size: int | None = None,
                 multiple: int = 1, offset: int = 0, why: str = "") -> str | None:
    """Why a `height` x `width` input does not fit, or None. The one message both twins' input checks and
    the CLI give: the sizes that work and, for a size multiple, the nearest valid sizes. With an `offset`,
    `size - offset` must be a multiple of `multiple` (PSPNet: offset 1, multiple 8)."""
    rule = (f"multiples of {multiple}" if not offset
            else f"of the form {multiple}k + {offset} ((size - {offset}) % {multiple} == 0)")
    if min(height, width) < min_size or (max_size is not None and max(height, width) > max_size):
        expected = (f"at least {min_size}x{min_size}" if max_size is None
                    else f"{min_size}x{min_size} to {max_size}x{max_size}")
        if multiple > 1:
            expected += f" with height and width {rule}"
        return f"{model} needs images of {expected} pixels, got {height}x{width}"
    if multiple > 1 and ((height - offset) % multiple or (width - offset) % multiple):
        first = min_size + (offset - min_size) % multiple  # the smallest valid size

        def near(n):
            low = max(first, offset + (n - offset) // multiple * multiple)
            return low, low + multiple if n > low else low

        (h1, h2), (w1, w2) = near(height), near(width)
        reason = f" ({why})" if why else ""
        return (f"{model} needs a height and width that are {rule}{reason}, got {height}x{width}; "
                f"the nearest sizes that work are {h1}x{w1} and {h2}x{w2}")
    return None

MODELS: dict[str, ModelInfo] = {
    info.name: info
    for info in [
        ModelInfo("resnet18", "resnet", 224, ("fc",), notes=_RESNET_NOTE,
                  key_source="torchvision's resnet18 state_dict"),
        ModelInfo("resnet34", "resnet", 224, ("fc",), notes=_RESNET_NOTE,
                  key_source="torchvision's resnet34 state_dict"),
        ModelInfo("resnet50", "resnet", 224, ("fc",), notes=_RESNET_NOTE,
                  key_source="torchvision's resnet50 state_dict"),
        ModelInfo("resnet101", "resnet", 224, ("fc",), notes=_RESNET_NOTE,
                  key_source="torchvision's resnet101 state_dict"),
        ModelInfo("resnet152", "resnet", 224, ("fc",), notes=_RESNET_NOTE,
                  key_source="torchvision's resnet152 state_dict"),
        ModelInfo("alexnet", "alexnet", 224, ("classifier.6",), min_input_size=63, parity_size=64,
                  parity_train_options={"dropout": 0.0}, key_source="torchvision's alexnet state_dict"),
        ModelInfo("vgg11_bn", "vgg", 224, ("classifier.6",), min_input_size=32, parity_size=32,
                  parity_train_options={"dropout": 0.0}, key_source="torchvision's vgg11_bn state_dict"),
        ModelInfo("squeezenet1_0", "squeezenet", 224, ("classifier.1",), min_input_size=21, parity_size=64,
                  parity_train_options={"dropout": 0.0}, key_source="torchvision's squeezenet1_0 state_dict"),
        ModelInfo("densenet121", "densenet", 224, ("classifier",), min_input_size=29, parity_size=64,
                  key_source="torchvision's densenet121 state_dict"),
        # training mode with the aux head needs 299 (INCEPTION_MIN_TRAIN_SIZE_WITH_AUX, below)
        ModelInfo("inception_v3", "inception", 299, ("AuxLogits.fc", "fc"), min_input_size=75,
                  train_min_input_size=299,
                  parity_size=299, aux_heads=("AuxLogits.fc",), parity_train_options={"dropout": 0.0},
                  notes="aux logits returned in training mode only; BatchNorm eps 1e-3",
                  key_source="torchvision's inception_v3 state_dict (AuxLogits included)"),
        # fc6, a 7x7 VALID conv on pool5's map (input / 32, floored), must leave fc8 at 1x1: 224..255 px.
        ModelInfo("vgg19_slim", "vgg_slim", 224, ("fc8",), min_input_size=224, max_input_size=255,
                  parity_size=224, parity_train_options={"dropout": 0.0}, mean=(0.0, 0.0, 0.0),
                  std=(1.0, 1.0, 1.0), notes="TF-slim layout; pixels in [0, 1] (the seed's Food-101 pipeline)",
                  key_source="TF-slim's vgg_19 checkpoint variables, `/` as `.` (vgg_19/conv1/conv1_1/weights is "
                             "conv1.conv1_1.weight; `twins convert` reads the TF checkpoint)"),
        # The "classifier" is the output block `conv_0` (conv + BN to `num_classes` maps, 1 by default): what
        # a restore into another output count leaves fresh. 32 px is the smallest input (layer4 at 1x1); the
        # parity checks take 64: at 32, with batch 2, each training-mode BatchNorm of layer4 and conv_5 sees two
        # values per channel and the float64 gradients of the two twins agree to 9e-7 only (2e-12 at 64).
        ModelInfo("saliency_unet", "saliency", 256, ("conv_0",), num_classes=1, mean=(0.0, 0.0, 0.0),
                  std=(1.0, 1.0, 1.0), min_input_size=32, size_multiple=32, parity_size=64, task="saliency",
                  notes="the seed's Unet(resnet50); pixels in [0, 1]; sigmoid map of the input's size",
                  key_source="seed 000's Unet(resnet50) state_dict (its encoder torchvision's resnet50 keys, so an "
                             "ImageNet resnet50 checkpoint loads into it without `fc`)",
                  extra={"backbone": "resnet50", "decoder": SALIENCY_DECODER, "frozen": SALIENCY_FROZEN,
                         "size_why": "the encoder halves the map five times and the decoder doubles it back "
                                     "onto the encoder's skip maps"}),
        # SimCLR (seed 003): resnet18 with the CIFAR stem (no downsampling before layer2), so 8 px leaves layer4
        # at 1x1. simclr_ssl's `num_classes` is the projection's dimension; its outputs are (feature,
        # projection) and its task the contrastive loss on the projections of interleaved view pairs.
        ModelInfo("simclr_ssl", "simclr", 32, ("projector.2",), num_classes=128, mean=CIFAR_MEAN, std=CIFAR_STD,
                  min_input_size=8, parity_size=32, task="contrastive",
                  notes="the seed's SSL: CIFAR resnet18 encoder `enc` + MLP `projector`; (feature, projection)",
                  key_source="seed 003's SSL state_dict (`enc.` + torchvision's resnet18 keys without `fc`, "
                             "`projector.`)",
                  extra={"encoder": ("enc",), "feature_dim": 512}),
        ModelInfo("simclr_sl", "simclr", 32, ("linear",), num_classes=10, mean=CIFAR_MEAN, std=CIFAR_STD,
                  min_input_size=8, parity_size=32,
                  notes="the seed's SL: CIFAR resnet18 encoder `enc` + `linear` classifier",
                  key_source="seed 003's SL state_dict (`enc.` + torchvision's resnet18 keys without `fc`, `linear.`)",
                  # `twins train simclr_sl --init-from RUN`: what a run of another model hands over.
                  extra={"encoder": ("enc",), "feature_dim": 512, "init_from": {"simclr_ssl": ("enc",)}}),
        # PSPNet (seed 004): ResNet-50 with the deep stem, dilated layer3/layer4 (output stride 8), the pyramid
        # pooling module and the `cls` head, plus the `aux` head on layer3 in training mode. 21 classes: PASCAL
        # VOC's, the seed authors' recipe (the seed's own default, 2, is a placeholder). 9 px is the smallest
        # input (a 2x2 map after layer2); the parity checks take 33 (a 5x5 map, which none of the bins 2, 3, 6
        # divides: the adaptive-pooling hazard), and the README's 65 / 473 figures come from `twins parity`.
        ModelInfo("pspnet", "pspnet", 473, ("cls.4", "aux.4"), num_classes=21, min_input_size=9, size_multiple=8,
                  size_offset=1, parity_size=33, aux_heads=("aux",), aux_weight=0.4, task="segmentation",
                  parity_train_options={"dropout": 0.0},
                  key_source="seed 004's PSPNet state_dict (hszhao/semseg: `layer0.*` deep stem, `layer1..4`, `ppm`, "
                             "`cls`, `aux`; a DataParallel `module.` prefix stripped)",
                  notes="the seed's PSPNet(layers=50): deep-stem dilated ResNet, PPM, cls + aux heads; logits of "
                        "(H - 1) / 8 * zoom_factor + 1 pixels; labels 255 ignored",
                  extra={"size_why": "the output-stride-8 map of (size - 1) / 8 + 1 pixels is upsampled corner to "
                                     "corner (align_corners=True) onto the input's grid"}),
    ]
}


RESNET_STEMS = ("imagenet", "cifar", "deep")


def check_resnet_options(stem, pooling, dilation) -> None:
    """The option checks both ResNet twins make before building anything."""
    if stem not in RESNET_STEMS:
        raise ValueError(f"unknown stem {stem!r}; expected one of {RESNET_STEMS}")
    if pooling not in (None, "avg"):
        raise ValueError(f"pooling must be None or 'avg', got {pooling!r}")
    if len(dilation) != 4 or dilation[0] != 1:
        raise ValueError(f"dilation must be 4 per-stage factors with layer1 at 1, got {dilation!r}")


def resnet_stage_info(expansion: int, stem: str = "imagenet", dilation=(1, 1, 1, 1)) -> dict:
    """`{stage: (channels, stride w.r.t. the input)}` of a ResNet's named stage outputs: the stem
    (after its last ReLU, before the max-pool) and layer1..layer4."""
    stride = 1 if stem == "cifar" else 2
    info = {"stem": (128 if stem == "deep" else 64, stride)}
    if stem != "cifar":
        stride *= 2  # the max-pool
    for i, planes in enumerate((64, 128, 256, 512)):
        if i > 0 and dilation[i] == 1:
            stride *= 2
        info[f"layer{i + 1}"] = (planes * expansion, stride)
    return info


def check_pspnet_options(layers, bins, num_classes, zoom_factor) -> None:
    """The seed's asserts in `PSPNet.__init__`, as errors that say what was given (both twins call this)."""
    if layers not in (50, 101, 152):
        raise ValueError(f"pspnet layers must be one of 50, 101, 152, got {layers!r}")
    if not bins or 2048 % len(bins):
        raise ValueError(f"pspnet needs a bin count that divides 2048 (the PPM splits the channels evenly), "
                         f"got {len(bins)} bins {tuple(bins)!r}")
    if num_classes < 2:
        raise ValueError(f"pspnet needs num_classes > 1, got {num_classes}")
    if zoom_factor not in (1, 2, 4, 8):
        raise ValueError(f"pspnet zoom_factor must be one of 1, 2, 4, 8, got {zoom_factor!r}")


# Inception v3's input sizes and torchvision's `transform_input`, the rules both twins apply.
INCEPTION_MIN_EVAL_SIZE = 75  # Mixed_7a's stride-2 3x3 convs still see 3x3
INCEPTION_MIN_TRAIN_SIZE_WITH_AUX = 299  # the aux head's 5x5/3 pool must leave Mixed_6e's 17x17 map at 5x5
# `transform_input`: undo the ImageNet normalisation, redo it as (x - 0.5) / 0.5, the normalisation the
# ported Google weights expect. Per channel: x * scale + shift.
INCEPTION_TRANSFORM_SCALE = (0.229 / 0.5, 0.224 / 0.5, 0.225 / 0.5)
INCEPTION_TRANSFORM_SHIFT = ((0.485 - 0.5) / 0.5, (0.456 - 0.5) / 0.5, (0.406 - 0.5) / 0.5)


def inception_min_input_size(training: bool, aux_logits: bool) -> int:
    return INCEPTION_MIN_TRAIN_SIZE_WITH_AUX if training and aux_logits else INCEPTION_MIN_EVAL_SIZE


def inception_size_note(training: bool, aux_logits: bool) -> str:
    """What both twins' size check says besides the sizes: which mode needs which size, and why."""
    low, high = INCEPTION_MIN_EVAL_SIZE, INCEPTION_MIN_TRAIN_SIZE_WITH_AUX
    if training and aux_logits:
        return (f"training mode with the aux head (aux_logits=True) needs {high}x{high}: its 5x5/3 average "
                f"pool must leave Mixed_6e's map at 5x5 or more for its 5x5 conv; eval mode, or "
                f"aux_logits=False, needs {low}x{low}")
    if aux_logits:
        return f"eval mode needs {low}x{low}; training mode with the aux head needs {high}x{high}"
    return f"inception_v3 needs {low}x{low} in eval and training mode without the aux head"


# Twin pairs registered from outside this repository (`register`): name -> {"torch": "pkg.mod:builder", "keras": ...}.
PLUGINS: dict[str, dict[str, str]] = {}
ENTRY_POINT_GROUP = "twins.models"
PLUGINS_ENV = "TWINS_PLUGINS"
_DISCOVERY = {"done": False, "running": False}


class PluginError(ImportError):
    """A plugin module named by the `twins.models` entry points or `TWINS_PLUGINS` that could not be imported."""


class PairError(ValueError):
    """The two builders of a registered pair build twins whose weights do not correspond: Keras weights whose layer
    names map to no torch key, torch keys with no Keras layer, or a key whose shapes differ (`twins_cli.pair_check`,
    run on the first build of a registered pair's Keras twin in a process that imports `twins_cli`: every `twins`
    tool, the parity workers, the benchmarks)."""


def _check_import_string(value, side: str, name: str) -> str:
    module, _, attribute = (value or "").partition(":")
    if not isinstance(value, str) or not module or not attribute or " " in value:
        raise ValueError(f"register({name!r}): {side}= must name its builder as 'package.module:function', "
                         f"got {value!r}")
    return value


def register(info: ModelInfo, *, torch: str, keras: str, replace: bool = False) -> ModelInfo:
    """Register a twin pair from outside this repository: `info` (its name, input size, classifier head, task,
    ...) and each side's builder as an import string, `"package.module:function"`, so that each side imports only
    its own framework (`torch_impl.build(name)` imports the torch one, `keras_impl.build(name)` the Keras one).
    The builders take the same keyword options as the built-in ones (`num_classes`, and the Keras side's
    `input_shape`). A name already registered is refused unless `replace=True`, or unless it is the same
    registration again (a module imported twice). The installed plugins are discovered first (`discover`), so a name
    is refused, or listed after them, the same whichever is imported first."""
    discover()  # a no-op while discovery itself imports the plugin modules
    if not isinstance(info, ModelInfo):
        raise TypeError(f"register() takes a twins.registry.ModelInfo, got {type(info).__name__}")
    sides = {"torch": _check_import_string(torch, "torch", info.name),
             "keras": _check_import_string(keras, "keras", info.name)}
    if info.name in MODELS and not replace and PLUGINS.get(info.name) != sides:
        where = "a built-in model" if info.name not in PLUGINS else f"registered with {PLUGINS[info.name]}"
        raise ValueError(f"register(): the name {info.name!r} is taken ({where}); choose another name or pass "
                         "replace=True")
    if PLUGINS.get(info.name) != sides:  # new builders: checked again on their first build
        _forget_first_builds(info.name)
    MODELS[info.name] = info
    PLUGINS[info.name] = sides
    return info


def unregister(name: str) -> None:
    """Remove a pair `register` added (built-in models stay)."""
    if name not in PLUGINS:
        raise UnknownModelError(f"{name!r} was not registered by register(); registered: {', '.join(PLUGINS)}")
    del PLUGINS[name]
    del MODELS[name]
    _forget_first_builds(name)


def _forget_first_builds(name: str) -> None:
    """`name`'s next build on either side runs the first-build hooks again (its builders changed or went)."""
    _FIRST_BUILT.difference_update({(side, built) for side, built in set(_FIRST_BUILT) if built == name})


def plugin_modules() -> list[tuple[str, str]]:
    """`(where, module)` of every plugin module: the `twins.models` entry points of the installed distributions,
    then `TWINS_PLUGINS` (comma-separated module names)."""
    import importlib.metadata
    import os

    found = [(f"entry point {ep.name!r} of the twins.models group", ep.value)
             for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)]
    found += [(PLUGINS_ENV, module.strip()) for module in os.environ.get(PLUGINS_ENV, "").split(",") if module.strip()]
    return found


def discover() -> None:
    """Import every plugin module once (`plugin_modules`); each calls `register` when imported. A module that
    fails to import is an error that names it and where it was declared."""
    import importlib

    if _DISCOVERY["done"] or _DISCOVERY["running"]:
        return
    _DISCOVERY["running"] = True
    try:
        for where, module in plugin_modules():
            try:
                importlib.import_module(module.split(":")[0])
            except Exception as error:
                raise PluginError(f"the twins plugin module {module!r} ({where}) failed to import: "
                                  f"{type(error).__name__}: {error}") from error
        _DISCOVERY["done"] = True
    finally:
        _DISCOVERY["running"] = False


def get(name: str) -> ModelInfo:
    discover()
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model name {name!r}; expected one of: {', '.join(MODELS)}"
        ) from None


def names() -> list[str]:
    discover()
    return list(MODELS)


def plugin_builder(name: str, framework: str):
    """The builder function a registered pair names for `framework` ("torch" or "keras"), imported."""
    import importlib

    target = PLUGINS[name][framework]
    module, _, attribute = target.partition(":")
    try:
        found = importlib.import_module(module)
        for part in attribute.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as error:
        raise PluginError(f"{name!r} was registered with {framework} builder {target!r}, which cannot be imported: "
                          f"{type(error).__name__}: {error}") from error
    return found


def available(builders: dict) -> list[str]:
    """Registered names that have a builder, in registry order (`list_models()` of a twin package): the package's
    own and the registered pairs'."""
    discover()
    return [name for name in MODELS if name in builders or name in PLUGINS]


def builder(builders: dict, framework: str, name: str):
    """The builder of `name` in a twin package (`builders`, its own) or among the registered pairs."""
    get(name)
    if name in builders:
        return builders[name]
    if name in PLUGINS:
        return plugin_builder(name, framework.lower())
    raise UnknownModelError(
        f"model {name!r} has no {framework} builder yet; available: {', '.join(available(builders))}"
    )


# Called as `hook(name, framework, model, options)` after the first build of a registered pair's twin on one side
# in a process (`framework`: "torch" or "Keras"): `twins_cli` installs the pair check (`twins_cli.pair_check`),
# which needs both frameworks and so cannot live in this core or in either twin package.
FIRST_BUILD_HOOKS: list = []
_FIRST_BUILT: set = set()


def on_first_build(hook) -> None:
    """Call `hook(name, framework, model, options)` after the first build of each registered pair's twin on each side
    in this process (once per hook)."""
    if hook not in FIRST_BUILD_HOOKS:
        FIRST_BUILD_HOOKS.append(hook)


def build_with(builders: dict, framework: str, name: str, **kwargs):
    """Look `name` up in the registry, then in a twin package's `builders` or the registered pairs, and build it; a
    registered pair's first build on a side runs the `FIRST_BUILD_HOOKS`."""
    model = builder(builders, framework, name)(**kwargs)
    if name in PLUGINS and (framework, name) not in _FIRST_BUILT:
        for hook in FIRST_BUILD_HOOKS:
            hook(name, framework, model, kwargs)
        _FIRST_BUILT.add((framework, name))
    return model
