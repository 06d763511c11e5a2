"""The names the parity engine takes: every registered model, and builder-option variants of them.

A variant (`resnet50-deep-dilated`: resnet50 with PSPNet's deep stem and dilated layer3/layer4) goes through
the same checks as a registered model, so the options later models are built on are checked on their own.
"""
from __future__ import annotations

from dataclasses import dataclass

from twins import registry


@dataclass(frozen=True)
class Variant:
    """A registered model built with non-default builder options, checked like a model of its own."""

    model: str
    options: dict
    size: int
    why: str


VARIANTS = {
    "resnet18-cifar": Variant("resnet18", {"stem": "cifar"}, 32, "SimCLR's encoder: 3x3/1 stem, no max-pool"),
    "resnet18-features": Variant(
        "resnet18", {"include_top": False, "pooling": "avg"}, 64, "headless, pooled feature vector"
    ),
    "resnet50-deep-dilated": Variant(
        "resnet50", {"stem": "deep", "dilation": (1, 1, 2, 4), "include_top": False}, 33,
        "PSPNet's backbone: deep stem, dilated layer3/layer4, the output-stride-8 map",
    ),
}


def names() -> list[str]:
    """What `twins parity all` runs: every registered model, then every variant."""
    return registry.names() + list(VARIANTS)


def resolve(name: str) -> tuple[str, dict, int]:
    """`(registered model, builder options, default parity size)` of a model name or variant id."""
    if name in VARIANTS:
        v = VARIANTS[name]
        return v.model, dict(v.options), v.size
    try:
        info = registry.get(name)
    except registry.UnknownModelError:
        raise registry.UnknownModelError(
            f"unknown model name {name!r}; expected one of: {', '.join(names())}"
        ) from None
    return name, {}, info.parity_size

