"""Write `parity_tests/torchvision_manifest.json`: the state_dict keys and shapes of every torchvision
architecture the project mirrors, as torchvision itself builds them.

torchvision is not a dependency of this project (the twins are written from scratch), so this script
runs once, in a scratch environment that has it, and its output is committed; the key tests compare
both twins against the file. Run it again when a mirrored architecture is added:

    python3 -m venv /tmp/tv && /tmp/tv/bin/pip install torch torchvision
    /tmp/tv/bin/python tools/torchvision_manifest.py   # rewrites parity_tests/torchvision_manifest.json

Only shapes and names are recorded (no weights are downloaded: every model is built with
`weights=None`). Entries keep torchvision's state_dict order, `num_batches_tracked` included.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile

import torch
import torchvision
from torchvision import models

# name -> builder keyword arguments; the defaults a torchvision user gets, except where noted.
ARCHITECTURES = {
    "resnet18": {},
    "resnet34": {},
    "resnet50": {},
    "resnet101": {},
    "resnet152": {},
    "alexnet": {},
    "vgg11_bn": {},
    "squeezenet1_0": {},
    "densenet121": {},
    # aux_logits=True is torchvision's default; init_weights=False skips its slow truncnorm init.
    "inception_v3": {"aux_logits": True, "init_weights": False},
}

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "parity_tests",
                   "torchvision_manifest.json")


def render(manifest: dict) -> str:
    """JSON with one state_dict entry per line, so a diff of the file reads key by key."""
    head = {k: v for k, v in manifest.items() if k != "models"}
    lines = ["{"] + [f"  {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()] + ['  "models": {']
    for i, (name, entry) in enumerate(manifest["models"].items()):
        lines.append(f"    {json.dumps(name)}: {{")
        lines.append(f'      "kwargs": {json.dumps(entry["kwargs"])},')
        lines.append(f'      "parameters": {entry["parameters"]},')
        lines.append('      "state_dict": [')
        rows = [f"        {json.dumps(pair, separators=(',', ':'))}" for pair in entry["state_dict"]]
        lines.append(",\n".join(rows))
        lines.append("      ]")
        lines.append("    }" + ("," if i < len(manifest["models"]) - 1 else ""))
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def main() -> int:
    manifest = {
        "generated_by": "tools/torchvision_manifest.py",
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "models": {},
    }
    for name, kwargs in ARCHITECTURES.items():
        model = getattr(models, name)(weights=None, **kwargs)
        state = model.state_dict()
        manifest["models"][name] = {
            "kwargs": kwargs,
            "parameters": sum(p.numel() for p in model.parameters()),
            "state_dict": [[key, list(value.shape)] for key, value in state.items()],
        }
        print(f"{name}: {len(state)} keys, {manifest['models'][name]['parameters']:,} parameters")
    text = render(manifest)
    assert json.loads(text) == manifest
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(OUT), suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, OUT)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
