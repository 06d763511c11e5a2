"""What the checkpoint readers share: the file suffixes of the torch-layout formats, the error type, and
how a reader's own exception is told to the user. `twins.checkpoints` (torch-layout files) and
`twins.tf_checkpoint` (TensorFlow checkpoints) both build on it."""
from __future__ import annotations

import re

TORCH_SUFFIXES = (".pth", ".pt")
SUFFIXES = TORCH_SUFFIXES + (".safetensors", ".npz")


class CheckpointError(ValueError):
    """A checkpoint file could not be read, or does not fit the model it is loaded into."""


def reason(exc: Exception) -> str:
    """What is wrong with the file, in the reader's words, without the advice torch appends to a
    refused unpickling (re-running `torch.load` with `weights_only=False` runs arbitrary code from an
    untrusted file; that is not ours to suggest)."""
    text = str(exc)
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if refused:
        return (f"{type(exc).__name__}: the pickle refers to {refused.group(1)}, which a weights-only load "
                "does not execute; the file holds Python objects, not just tensors")
    first = text.strip().splitlines()[0] if text.strip() else ""
    if "weights_only" in first or "Weights only load failed" in first:
        return f"{type(exc).__name__}: its pickle holds something other than tensors and plain containers"
    sentence = re.split(r"(?<=\.)\s", first, maxsplit=1)[0]
    return f"{type(exc).__name__}: {sentence}" if sentence else type(exc).__name__
