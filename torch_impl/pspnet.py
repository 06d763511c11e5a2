"""PSPNet (seed 004, hszhao/semseg's `PSPNet`) as a native `nn.Module`. Twin of `keras_impl/pspnet.py`.

Encoder: a ResNet-50/101/152 with the deep stem (three 3x3 convs, 3->64->64->128) and dilated layer3
(dilation 2) and layer4 (dilation 4), output stride 8; built by `torch_impl.resnet` and re-packed as the seed
does, `layer0 = Sequential(conv1, bn1, relu, conv2, bn2, relu, conv3, bn3, relu, maxpool)`, so the keys are
the seed's: `layer0.0.weight`, `layer0.1.*`, `layer0.3.weight`, ..., `layer1.0.conv1.weight`, ...
Decoder: the pyramid pooling module `ppm` (per bin: adaptive average pool, 1x1 conv, BN, ReLU, bilinear
upsample back with `align_corners=True`, concatenated after the map itself) and the head `cls`. The
auxiliary head `aux` on layer3's map trains the encoder's middle (loss weight 0.4). A checkpoint of the
seed's authors loads with `strict=True` once a DataParallel `module.` prefix is stripped
(`torch_impl.weights.load_state_dict` does that).

`forward(x, y=None)`, as the seed: eval mode returns the logits, `(N, classes, h, w)` with
`h = (H - 1) / 8 * zoom_factor + 1`; training mode with labels returns `(prediction, main_loss, aux_loss)`
(prediction the argmax); training mode without labels returns `(logits, aux_logits)`, what the project's
trainer and parity engine take (the loss then is `main + aux_weight * aux`, `torch_impl.training`). The
seed's criterion, `CrossEntropyLoss(ignore_index=255)`, is `losses.segmentation_cross_entropy` here: the same
mean over the labelled pixels, and 0 (not torch's NaN) for a batch whose every pixel is ignored.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from twins.registry import IGNORE_LABEL, check_pspnet_options, get

from .common import check_nchw
from .losses import segmentation_cross_entropy
from .resnet import resnet50, resnet101, resnet152

INFO = get("pspnet")
BACKBONES = {50: resnet50, 101: resnet101, 152: resnet152}  # the seed's `layers`


class PPM(nn.Module):
    """The pyramid pooling module: `features[i] = Sequential(AdaptiveAvgPool2d(bin), Conv2d 1x1, BN, ReLU)`."""

    def __init__(self, in_dim: int, reduction_dim: int, bins):
        super().__init__()
        self.features = nn.ModuleList([
            nn.Sequential(
                nn.AdaptiveAvgPool2d(bin),
                nn.Conv2d(in_dim, reduction_dim, kernel_size=1, bias=False),
                nn.BatchNorm2d(reduction_dim),
                nn.ReLU(inplace=True),
            )
            for bin in bins
        ])

    def forward(self, x):
        size = x.shape[2:]
        return torch.cat([x] + [F.interpolate(f(x), size, mode="bilinear", align_corners=True)
                                for f in self.features], 1)


def head(in_dim: int, mid_dim: int, classes: int, dropout: float) -> nn.Sequential:
    """`cls` and `aux`: 3x3 conv (no bias), BN, ReLU, Dropout2d, 1x1 conv to the classes (with bias)."""
    return nn.Sequential(
        nn.Conv2d(in_dim, mid_dim, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(mid_dim),
        nn.ReLU(inplace=True),
        nn.Dropout2d(p=dropout),
        nn.Conv2d(mid_dim, classes, kernel_size=1),
    )


class PSPNet(nn.Module):
    """The seed's `PSPNet(layers, bins, dropout, classes, zoom_factor, use_ppm)`; `classes` is `num_classes`
    here, as in every twin, and the criterion is fixed (`segmentation_cross_entropy`)."""

    def __init__(self, layers=50, bins=(1, 2, 3, 6), dropout=0.1, num_classes=INFO.num_classes, zoom_factor=8,
                 use_ppm=True, name="pspnet"):
        super().__init__()
        check_pspnet_options(layers, bins, num_classes, zoom_factor)
        self.name = name
        self.zoom_factor = zoom_factor
        self.use_ppm = use_ppm
        resnet = BACKBONES[layers](include_top=False, stem="deep", dilation=(1, 1, 2, 4))
        self.layer0 = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.conv2, resnet.bn2, resnet.relu,
                                    resnet.conv3, resnet.bn3, resnet.relu, resnet.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4
        fea_dim = 2048
        if use_ppm:
            self.ppm = PPM(fea_dim, fea_dim // len(bins), bins)
            fea_dim *= 2
        self.cls = head(fea_dim, 512, num_classes, dropout)
        self.aux = head(1024, 256, num_classes, dropout)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return (height - 1) // 8 * self.zoom_factor + 1, (width - 1) // 8 * self.zoom_factor + 1

    def forward(self, x, y=None):
        check_nchw(x, 3, self.name, INFO.min_input_size, multiple=INFO.size_multiple, offset=INFO.size_offset,
                   why=INFO.extra["size_why"])
        size = self.output_size(x.shape[2], x.shape[3])
        x = self.layer0(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x_tmp = self.layer3(x)
        x = self.layer4(x_tmp)
        if self.use_ppm:
            x = self.ppm(x)
        x = self.cls(x)
        if self.zoom_factor != 1:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        if not self.training:
            return x
        aux = self.aux(x_tmp)
        if self.zoom_factor != 1:
            aux = F.interpolate(aux, size=size, mode="bilinear", align_corners=True)
        if y is None:
            return x, aux
        check_labels(y, x)
        return x.max(1)[1], segmentation_cross_entropy(x, y), segmentation_cross_entropy(aux, y)


def check_labels(y: torch.Tensor, logits: torch.Tensor) -> None:
    """Labels must be class indices of the output's size; out-of-range values (other than 255) are refused
    here rather than by an index error inside the loss."""
    if y.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"pspnet labels must have shape (N, h, w) = {(logits.shape[0], *logits.shape[2:])} "
                         f"(the output's size), got {tuple(y.shape)}")
    bad = (y != IGNORE_LABEL) & ((y < 0) | (y >= logits.shape[1]))
    if bad.any():
        raise ValueError(f"pspnet label {int(y[bad][0])} out of range: expected 0..{logits.shape[1] - 1} or "
                         f"{IGNORE_LABEL} (ignore)")


def pspnet(**kwargs) -> PSPNet:
    return PSPNet(**kwargs)
