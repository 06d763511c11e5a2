"""The saliency U-Net on ResNet-50 of seed 000 as a native `nn.Module`. Twin of `keras_impl/saliency.py`.

PyTorch has no "take this layer's output" for a module someone else wrote, so the seed re-wires
`forward`: `Unet(resnet)` copies the backbone's `conv1, bn1, relu, maxpool, layer1..layer4` into itself
and calls them in torchvision's order, keeping the stem's output (after its ReLU, before the max-pool)
and those of layer1..layer3 as skip maps; the Keras twin takes the same tensors by layer name. The
attribute names and their order are the seed's, so its state_dict keys (`conv1.weight`, `bn1.*`,
`layer1.0.conv1.weight`, ..., `conv_5.0.weight`, `conv_5.1.*`, `deconv4.0.weight`, ...) load here with
`strict=True`, and so does an ImageNet ResNet-50 checkpoint into the encoder (the decoder left fresh:
`load_state_dict(model, state, exclude=SALIENCY_DECODER + ("fc",))`).

Decoder, per scale: a transposed conv doubles the map (`deconv_block`: ConvTranspose2d 4/2/1, BN,
LeakyReLU at torch's default slope 0.01), the skip map is concatenated after it (decoder channels first)
and a 1x1 `conv_block` (Conv2d, BN, LeakyReLU 0.2, Dropout) narrows the channels. `conv_0` ends on one
map (`num_classes`), a sigmoid makes it a saliency map of the input's size.

Freezing: `frozen` names top-level modules whose parameters do not train (default: the seed's effective
set, conv1, bn1, layer1, layer2). A frozen BatchNorm keeps torch's meaning: in training mode it still
normalises with the batch's statistics and updates its running statistics; only its affine parameters
stay put. The Keras twin's BatchNorm does the same (`keras_impl.common.BatchNorm`).
"""
from __future__ import annotations

import torch
from torch import nn

from twins.registry import SALIENCY_FROZEN, check_frozen, get

from .common import check_nchw
from .resnet import resnet50

INFO = get("saliency_unet")


def deconv_block(n_input: int, n_output: int, k_size: int = 4, stride: int = 2, padding: int = 1) -> nn.Sequential:
    """The seed's `Deconv`: ConvTranspose2d (no bias), BatchNorm2d, LeakyReLU (torch's default slope 0.01)."""
    return nn.Sequential(
        nn.ConvTranspose2d(n_input, n_output, kernel_size=k_size, stride=stride, padding=padding, bias=False),
        nn.BatchNorm2d(n_output),
        nn.LeakyReLU(inplace=True),
    )


def conv_block(n_input: int, n_output: int, k_size: int = 4, stride: int = 2, padding: int = 0,
               dropout: float = 0.0) -> nn.Sequential:
    """The seed's `Conv`: Conv2d (no bias), BatchNorm2d, LeakyReLU(0.2), Dropout (0 in the seed)."""
    return nn.Sequential(
        nn.Conv2d(n_input, n_output, kernel_size=k_size, stride=stride, padding=padding, bias=False),
        nn.BatchNorm2d(n_output),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Dropout(dropout),
    )


class Unet(nn.Module):
    """The seed's `Unet(resnet)`: `resnet` is a torchvision-layout ResNet-50 (ours, or torchvision's)."""

    def __init__(self, resnet: nn.Module, num_classes: int = 1, dropout: float = 0.0, name: str = "saliency_unet"):
        super().__init__()
        self.name = name
        self.conv1 = resnet.conv1
        self.bn1 = resnet.bn1
        self.relu = resnet.relu
        self.maxpool = resnet.maxpool
        self.tanh = nn.Tanh()  # unused, as in the seed; kept so the module listing is the seed's
        self.sigmoid = nn.Sigmoid()
        self.layer1 = resnet.layer1
        self.layer2 = resnet.layer2
        self.layer3 = resnet.layer3
        self.layer4 = resnet.layer4
        # 1x1 convs that narrow the channels after each concatenation (the seed's weight-saving convs)
        self.conv_5 = conv_block(2048, 512, 1, 1, 0, dropout)
        self.conv_4 = conv_block(1536, 512, 1, 1, 0, dropout)
        self.conv_3 = conv_block(768, 256, 1, 1, 0, dropout)
        self.conv_2 = conv_block(384, 128, 1, 1, 0, dropout)
        self.conv_1 = conv_block(128, 64, 1, 1, 0, dropout)
        self.conv_0 = conv_block(32, num_classes, 3, 1, 1, dropout)
        self.deconv4 = deconv_block(512, 512, 4, 2, 1)
        self.deconv3 = deconv_block(512, 256, 4, 2, 1)
        self.deconv2 = deconv_block(256, 128, 4, 2, 1)
        self.deconv1 = deconv_block(128, 64, 4, 2, 1)
        self.deconv0 = deconv_block(64, 32, 4, 2, 1)
        self.num_classes = num_classes
        self.stage_info = dict(resnet.stage_info)

    def forward_stages(self, x) -> dict[str, torch.Tensor]:
        """The encoder's outputs under the names the Keras twin taps (`stem`, `layer1`..`layer4`)."""
        check_nchw(x, 3, self.name, INFO.min_input_size, multiple=INFO.size_multiple, why=INFO.extra["size_why"])
        stages = {"stem": self.relu(self.bn1(self.conv1(x)))}
        x = self.maxpool(stages["stem"])
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = stages[name] = getattr(self, name)(x)
        return stages

    def forward(self, x):
        stages = self.forward_stages(x)
        skip_1, skip_2, skip_3, skip_4 = (stages[n] for n in ("stem", "layer1", "layer2", "layer3"))
        x5 = self.conv_5(stages["layer4"])
        x4 = self.conv_4(torch.cat([self.deconv4(x5), skip_4], dim=1))
        x3 = self.conv_3(torch.cat([self.deconv3(x4), skip_3], dim=1))
        x2 = self.conv_2(torch.cat([self.deconv2(x3), skip_2], dim=1))
        x1 = self.conv_1(torch.cat([self.deconv1(x2), skip_1], dim=1))
        x0 = self.conv_0(self.deconv0(x1))
        return self.sigmoid(x0)


def freeze(model: nn.Module, frozen) -> list[str]:
    """`requires_grad = False` for the parameters of the top-level modules in `frozen` (the seed's loop
    over `model.children()`); returns the frozen parameter names. Twin of `keras_impl.saliency.freeze`."""
    frozen = check_frozen(frozen)
    names = []
    for name, parameter in model.named_parameters():
        if name.split(".")[0] in frozen:
            parameter.requires_grad_(False)
            names.append(name)
    return names


def saliency_unet(num_classes: int = 1, frozen=SALIENCY_FROZEN, dropout: float = 0.0) -> Unet:
    """The seed's model: `Unet(resnet50)` with `frozen` (default conv1, bn1, layer1, layer2) not training.
    The encoder starts from torchvision's ResNet initialisation, the decoder from torch's layer defaults
    (the seed's `Conv`/`Deconv` set none); load an ImageNet ResNet-50 into the encoder with
    `exclude=SALIENCY_DECODER + ("fc",)`."""
    model = Unet(resnet50(include_top=False), num_classes, dropout)
    freeze(model, frozen)
    return model
