"""A twin pair registered from outside the repository (`twins.registry.register`, discovered through
`TWINS_PLUGINS` or the `twins.models` entry points): `examples/mobilenet_v2`, torchvision's MobileNetV2 with a Keras
twin written with `keras_impl.layers` alone. Registration's own errors; both packages build it and list it; its
torch twin has torchvision's state_dict layout and loads into both twins strictly; `twins parity` runs it; and a
break in its Keras twin (Keras' own BatchNormalization where the kit's belongs) fails with the layer named."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from parity_tests.conftest import BACKEND
from twins import registry

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "mobilenet_v2"
MANIFEST = EXAMPLE / "torchvision_keys.json"
TENSORFLOW_PASS = pytest.mark.skipif(BACKEND != "tensorflow", reason="backend-free, or one run for every backend")

BROKEN = '''
from twins.registry import ModelInfo, register

register(ModelInfo("mobilenet_v2_broken", "mobilenet", 224, ("classifier.1",), min_input_size=32, parity_size=64,
                   parity_train_options={"dropout": 0.0}),
         torch="twins_mobilenet_v2.torch_model:mobilenet_v2", keras="broken_twin:keras_builder")


def keras_builder(**kwargs):
    """The example's Keras twin with Keras' own BatchNormalization for features.5.conv.1.1."""
    import keras

    import keras_impl.layers as kit
    from twins_mobilenet_v2 import keras_model

    class Broken:
        def __getattr__(self, name):
            return getattr(kit, name)

        @staticmethod
        def BatchNorm2d(num_features, name=None, **options):
            if name == "features-5-conv-1-1":
                return keras.layers.BatchNormalization(name=name)
            return kit.BatchNorm2d(num_features, name=name, **options)

    keras_model.layers = Broken()
    try:
        return keras_model.mobilenet_v2(**kwargs)
    finally:
        keras_model.layers = kit
'''


def plugin_env(tmp_path, *modules):
    (tmp_path / "broken_twin.py").write_text(BROKEN)
    path = os.pathsep.join([str(ROOT), str(EXAMPLE), str(tmp_path), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, registry.PLUGINS_ENV: ",".join(modules)}


def run(args, env, timeout=600):
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@TENSORFLOW_PASS
def test_register_refuses_bad_registrations_and_lists_the_pair():
    info = registry.ModelInfo("tiny_plugin", "tiny", 32, ("fc",))
    with pytest.raises(ValueError, match="torch= must name its builder as 'package.module:function'"):
        registry.register(info, torch="pkg.module", keras="pkg.module:build")
    with pytest.raises(ValueError, match="the name 'resnet18' is taken \\(a built-in model\\)"):
        registry.register(registry.ModelInfo("resnet18", "resnet", 224, ("fc",)), torch="a:b", keras="c:d")
    registry.register(info, torch="tiny_torch:build", keras="tiny_keras:build")
    try:
        registry.register(info, torch="tiny_torch:build", keras="tiny_keras:build")  # the same again: a no-op
        assert registry.names()[-1] == "tiny_plugin" and registry.get("tiny_plugin") is info
        with pytest.raises(ValueError, match="is taken \\(registered with"):
            registry.register(info, torch="other:build", keras="tiny_keras:build")
        with pytest.raises(registry.PluginError, match="'tiny_plugin' was registered with torch builder "
                                                       "'tiny_torch:build', which cannot be imported"):
            registry.builder({}, "torch", "tiny_plugin")
    finally:
        registry.unregister("tiny_plugin")
    assert "tiny_plugin" not in registry.names()


@TENSORFLOW_PASS
def test_a_plugin_module_that_fails_to_import_is_named(tmp_path):
    done = run(["-m", "twins_cli.main", "parity", "resnet18", "--checks", "eval_output", "--backends", "torch"],
               plugin_env(tmp_path, "no_such_plugin_module"), timeout=120)
    assert done.returncode != 0
    assert "the twins plugin module 'no_such_plugin_module' (TWINS_PLUGINS) failed to import" in done.stderr, \
        done.stderr[-2000:]


@TENSORFLOW_PASS
def test_the_example_pair_builds_on_both_sides_with_torchvisions_layout(tmp_path):
    """Both packages list and build it; the torch twin's state_dict is torchvision's MobileNetV2 key for key (the
    manifest written from torchvision itself), and it loads into both twins strictly."""
    script = """
import json, sys
import numpy as np, torch
import keras_impl, torch_impl
from keras_impl import weights
assert torch_impl.list_models()[-1] == keras_impl.list_models()[-1] == "mobilenet_v2", torch_impl.list_models()
model = torch_impl.build("mobilenet_v2")
state = model.state_dict()
print(json.dumps([[k, list(v.shape)] for k, v in state.items()]))
twin = keras_impl.build("mobilenet_v2", input_shape=(64, 64, 3))
report = weights.load_torch_state_dict(twin, {k: v.numpy() for k, v in state.items()}, strict=True)
assert not report.missing and not report.unexpected and not report.mismatched
model.load_state_dict(torch_impl.build("mobilenet_v2").state_dict(), strict=True)
print(keras_impl.source_file("mobilenet_v2"))
"""
    done = run(["-c", script], plugin_env(tmp_path, "twins_mobilenet_v2.register"))
    assert done.returncode == 0, done.stderr[-3000:]
    keys, source = done.stdout.strip().splitlines()[-2:]
    assert json.loads(keys) == json.loads(MANIFEST.read_text())["state_dict"]
    assert source.endswith("twins_mobilenet_v2/keras_model.py")


@TENSORFLOW_PASS
def test_twins_parity_runs_the_pair_and_names_the_layer_a_break_diverges_at(tmp_path):
    """`twins parity` on the registered pair and on its broken twin, in one run (one worker): the pair's eval and
    training-loss rows pass, the broken twin's training loss fails and names the broken layer as the first that
    diverges, and the run exits non-zero."""
    env = plugin_env(tmp_path, "twins_mobilenet_v2.register", "broken_twin")
    out = tmp_path / "parity.json"
    done = run(["-m", "twins_cli.main", "parity", "mobilenet_v2,mobilenet_v2_broken", "--backends", "tensorflow",
                "--checks", "eval_output,train_loss", "--json", str(out)], env)
    assert done.returncode != 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {(r["model"], r["check"]): r for r in json.loads(out.read_text())}
    assert rows["mobilenet_v2", "eval_output"]["passed"] and rows["mobilenet_v2", "train_loss"]["passed"], rows
    broken = rows["mobilenet_v2_broken", "train_loss"]
    assert not broken["passed"] and "first diverging layer: features.5.conv.1.1" in json.dumps(broken), broken
