"""The torch twin as a deployment artifact. Twin of `keras_impl/export.py`.

`export(model, path, fmt, size)` writes the eval-mode module for square `size` x `size` NCHW float32 images
with the batch left free (batch 1 and batch 32 run through the same file):
- `pt2`: a `torch.export` program (`torch.export.save`), reloaded with `torch.export.load(path).module()`;
- `onnx`: ONNX through the dynamo exporter (`torch.onnx.export(dynamo=True)`), weights inside the file (a
  model under 2 GB needs no `.onnx.data` beside it), run by onnxruntime.
The caller writes into a temporary folder and renames (`twins_cli.export`); this module only traces.
"""
from __future__ import annotations

import logging

import torch

from twins.exports import FORMATS as _FORMATS

FORMATS = _FORMATS["torch"]
# torch.export specialises a dimension whose example size is 1 (or 0) to a constant, so the example batch is 2.
EXAMPLE_BATCH = 2
MAX_BATCH = 4096


def example_input(size: int) -> torch.Tensor:
    return torch.zeros(EXAMPLE_BATCH, 3, size, size)


def dynamic_batch() -> tuple[dict, ...]:
    """`dynamic_shapes` for a one-image-argument forward: axis 0 free."""
    return ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},)


def export(model: torch.nn.Module, path: str, fmt: str, size: int) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown torch export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    model = model.eval()
    x = example_input(size)
    if fmt == "pt2":
        program = torch.export.export(model, (x,), dynamic_shapes=dynamic_batch())
        torch.export.save(program, path)
    else:
        # The dynamo exporter warns once per torchvision op it cannot register; the twins need none of them.
        logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
        torch.onnx.export(model, (x,), path, dynamo=True, dynamic_shapes=dynamic_batch(), external_data=False,
                          input_names=["image"], verbose=False)
