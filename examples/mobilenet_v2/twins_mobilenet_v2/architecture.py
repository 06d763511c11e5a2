"""What both twins of MobileNetV2 share, framework-free: the block table and the channel rounding."""
from __future__ import annotations

# t (expansion), c (output channels), n (blocks), s (first block's stride): torchvision's, width 1.0
INVERTED_RESIDUAL_SETTING = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1],
                             [6, 160, 3, 2], [6, 320, 1, 1]]


def make_divisible(v: float, divisor: int = 8) -> int:
    """Channels rounded to a multiple of `divisor`, never below 90 % of `v` (torchvision's `_make_divisible`)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v
