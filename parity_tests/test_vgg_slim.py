"""vgg19_slim (seed 002): the torch keys are TF-slim's variable names under the naming rule, both twins
take 224..255 px only (fc8's map must be 1x1 for the squeeze), and the output is [N, num_classes]."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import torch_impl
from parity_tests.conftest import model_params, skip_off_tensorflow

# The seed's `vgg_19`: (block, 3x3 convs, channels) of each `slim.repeat`, then fc6/fc7/fc8 as convs.
SLIM_BLOCKS = [(1, 2, 64), (2, 2, 128), (3, 4, 256), (4, 4, 512), (5, 4, 512)]
SIZE_ERROR = r"vgg19_slim needs images of 224x224 to 255x255 pixels, got {}x{}"
# Ids as test_contract's: `[vgg19_slim-torch_impl]`, `[vgg19_slim-jax]`.
torch_params = pytest.mark.parametrize("model_name", ["vgg19_slim"], ids=["vgg19_slim-torch_impl"])
keras_params = model_params(["vgg19_slim"])


def slim_variables(num_classes=1000) -> list[tuple[str, tuple]]:
    """`[(name, shape)]` of the seed's `vgg_19` variables in creation order, shaped as TF stores them
    (conv kernels HWIO)."""
    variables, in_channels = [], 3
    for block, repeat, channels in SLIM_BLOCKS:
        for i in range(1, repeat + 1):
            scope = f"vgg_19/conv{block}/conv{block}_{i}"
            variables += [(f"{scope}/weights", (3, 3, in_channels, channels)), (f"{scope}/biases", (channels,))]
            in_channels = channels
    for scope, kernel, cin, cout in (("fc6", 7, 512, 4096), ("fc7", 1, 4096, 4096), ("fc8", 1, 4096, num_classes)):
        variables += [(f"vgg_19/{scope}/weights", (kernel, kernel, cin, cout)), (f"vgg_19/{scope}/biases", (cout,))]
    return variables


def torch_key(slim_name: str) -> str:
    """`vgg_19/<scope>/<layer>/weights` -> `<scope>.<layer>.weight` (biases -> bias)."""
    model, *scopes, variable = slim_name.split("/")
    assert model == "vgg_19", slim_name
    return ".".join([*scopes, {"weights": "weight", "biases": "bias"}[variable]])


def slim_state_dict(num_classes=1000) -> list[tuple[str, tuple]]:
    """`[(torch key, torch shape)]` the slim variables map to, kernels HWIO -> OIHW."""
    return [(torch_key(name), (s[3], s[2], s[0], s[1]) if len(s) == 4 else s)
            for name, s in slim_variables(num_classes)]


@torch_params
def test_torch_state_dict_is_the_slim_variables_key_for_key(model_name):
    with torch.device("meta"):  # keys and shapes only: no memory, no initial value drawn
        model = torch_impl.build(model_name)
    ours = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert ours == slim_state_dict()
    assert ours[:2] == [("conv1.conv1_1.weight", (64, 3, 3, 3)), ("conv1.conv1_1.bias", (64,))]
    assert sum(p.numel() for p in model.parameters()) == 143_667_240  # slim's vgg_19, 1000 classes


@torch_params
def test_torch_refuses_sizes_that_leave_fc8_bigger_or_smaller_than_1x1(model_name):
    model = torch_impl.build(model_name).eval()
    for size in (223, 256):
        with pytest.raises(ValueError, match=SIZE_ERROR.format(size, size)):
            model(torch.zeros(1, 3, size, size))


@torch_params
def test_torch_output_is_squeezed_to_n_by_classes_up_to_255_px(model_name):
    model = torch_impl.build(model_name, num_classes=101).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 255, 224)).shape == (1, 101)


@pytest.mark.keras
@keras_params
def test_keras_variables_are_named_and_shaped_as_the_slim_variables(model_name):
    import keras_impl
    from keras_impl.common import initial_values_not_drawn
    from keras_impl.weights import torch_state_dict

    skip_off_tensorflow(model_name)
    with initial_values_not_drawn():  # names and shapes only: no initial value is drawn
        model = keras_impl.build(model_name)
    exported = [(k, tuple(v.shape)) for k, v in torch_state_dict(model).items()]
    assert exported == slim_state_dict()
    assert all("." not in layer.name for layer in model.layers)


@pytest.mark.keras
@keras_params
def test_keras_refuses_a_fixed_input_shape_that_leaves_fc8_bigger_or_smaller_than_1x1(model_name):
    """When the model is built, before any conv is."""
    import keras_impl

    for size in (223, 256):
        with pytest.raises(ValueError, match=SIZE_ERROR.format(size, size)):
            keras_impl.build(model_name, input_shape=(size, size, 3))


@pytest.mark.keras
@keras_params
def test_keras_refuses_sizes_that_leave_fc8_bigger_or_smaller_than_1x1(model_name):
    import keras_impl

    skip_off_tensorflow(model_name)
    model = keras_impl.build(model_name, num_classes=2)
    for size in (223, 256):
        with pytest.raises(ValueError, match=SIZE_ERROR.format(size, size)):
            model(np.zeros((1, size, size, 3), "float32"))


@pytest.mark.keras
@keras_params
def test_keras_output_is_squeezed_to_n_by_classes_up_to_255_px(model_name):
    import keras

    import keras_impl

    skip_off_tensorflow(model_name)
    model = keras_impl.build(model_name, num_classes=101)
    assert tuple(model.output.shape) == (None, 101)
    out = model(np.random.rand(1, 255, 224, 3).astype("float32"), training=False)
    assert keras.ops.convert_to_numpy(out).shape == (1, 101)
