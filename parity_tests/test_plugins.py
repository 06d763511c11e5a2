"""A twin pair registered from outside the repository (`twins.registry.register`, discovered through
`TWINS_PLUGINS` or the `twins.models` entry points): `examples/mobilenet_v2`, torchvision's MobileNetV2 with a Keras
twin written with `keras_impl.layers` alone, which `make test` installs. Registration's own errors; both packages
build it and list it; its torch twin has torchvision's state_dict layout and loads into both twins strictly; a pair
whose layer names do not correspond is refused on its first build; `assert_twins` on a break in its Keras twin
(Keras' own BatchNormalization where the kit's belongs) raises with the layer named; `twins parity` exits non-zero
on a failed row. Its own parity rows (every check, every backend) come from the session's worker (test_parity.py)."""
from __future__ import annotations

import importlib
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


MISNAMED = '''
from twins.registry import ModelInfo, register

register(ModelInfo("mobilenet_v2_misnamed", "mobilenet", 224, ("classifier.1",), min_input_size=32),
         torch="twins_mobilenet_v2.torch_model:mobilenet_v2", keras="misnamed_twin:keras_builder")


def keras_builder(**kwargs):
    """The example's Keras twin with its classifier's Linear named `classifier-2` (torch: classifier.1)."""
    import keras_impl.layers as kit
    from twins_mobilenet_v2 import keras_model

    class Misnamed:
        def __getattr__(self, name):
            return getattr(kit, name)

        @staticmethod
        def Linear(out_features, name=None, **options):
            return kit.Linear(out_features, name="classifier-2" if name == "classifier-1" else name, **options)

    keras_model.layers = Misnamed()
    try:
        return keras_model.mobilenet_v2(**kwargs)
    finally:
        keras_model.layers = kit
'''


@TENSORFLOW_PASS
def test_make_test_installs_the_example_and_its_entry_point_registers_it():
    """The Makefile installs examples/mobilenet_v2 as a user installs a plugin package (`pip install -e`): this
    process found it through the `twins.models` entry point, not TWINS_PLUGINS, and both packages list it."""
    from importlib import metadata

    import keras_impl
    import torch_impl

    points = {point.name: point.value for point in metadata.entry_points(group=registry.ENTRY_POINT_GROUP)}
    assert points.get("mobilenet_v2") == "twins_mobilenet_v2.register", points
    assert "twins_mobilenet_v2" not in os.environ.get(registry.PLUGINS_ENV, "")
    assert "mobilenet_v2" in registry.names() and "mobilenet_v2" in registry.PLUGINS
    assert "mobilenet_v2" in torch_impl.list_models() and "mobilenet_v2" in keras_impl.list_models()
    assert Path(keras_impl.source_file("mobilenet_v2")) == EXAMPLE / "twins_mobilenet_v2" / "keras_model.py"


@TENSORFLOW_PASS
def test_the_example_pair_builds_on_both_sides_with_torchvisions_layout():
    """The torch twin's state_dict is torchvision's MobileNetV2 key for key (the manifest written from torchvision
    itself), and it loads into both twins strictly."""
    import keras_impl
    import torch_impl
    from keras_impl import weights

    model = torch_impl.build("mobilenet_v2")
    state = model.state_dict()
    assert [[k, list(v.shape)] for k, v in state.items()] == json.loads(MANIFEST.read_text())["state_dict"]
    twin = keras_impl.build("mobilenet_v2", input_shape=(64, 64, 3))
    report = weights.load_torch_state_dict(twin, {k: v.numpy() for k, v in state.items()}, strict=True)
    assert not report.missing and not report.unexpected and not report.mismatched
    model.load_state_dict(torch_impl.build("mobilenet_v2").state_dict(), strict=True)


@TENSORFLOW_PASS
def test_a_pair_whose_keras_layer_names_map_to_no_torch_key_is_refused_on_first_build(tmp_path, monkeypatch):
    """`twins_cli.pair_check`, which importing twins_cli installs as the registry's first-build hook (every `twins`
    tool, parity worker and benchmark imports it): the misnamed twin is refused with both sides' keys listed, and
    the example itself passes the check."""
    import keras_impl
    import twins_cli  # noqa: F401  (installs the check)
    from twins_cli.pair_check import check_pair

    assert twins_cli._check_pair in registry.FIRST_BUILD_HOOKS

    (tmp_path / "misnamed_twin.py").write_text(MISNAMED)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("misnamed_twin")  # registers the pair

    try:
        with pytest.raises(registry.PairError) as raised:
            keras_impl.build("mobilenet_v2_misnamed")
    finally:
        registry.unregister("mobilenet_v2_misnamed")
    message = str(raised.value)
    assert message.startswith("the registered pair 'mobilenet_v2_misnamed' does not correspond"), message
    assert ("2 Keras weights map to no torch key: classifier.2.weight (layer classifier-2), classifier.2.bias "
            "(layer classifier-2)") in message, message
    assert "2 torch keys have no Keras layer: classifier.1.weight, classifier.1.bias" in message, message
    check_pair("mobilenet_v2", "Keras", keras_impl.build("mobilenet_v2", num_classes=3), {"num_classes": 3})


@TENSORFLOW_PASS
def test_assert_twins_raises_with_the_table_and_the_layer_a_break_diverges_at(tmp_path, monkeypatch):
    """The one call a user's CI makes (`twins_cli.parity.assert_twins`), on the example with a broken Keras twin, in
    a worker process: AssertionError, whose message is the parity table with the broken layer named as the first
    that diverges (the example's own rows, every check, are the session worker's: test_parity.py)."""
    from twins_cli.parity import assert_twins

    (tmp_path / "broken_twin.py").write_text(BROKEN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv(registry.PLUGINS_ENV, "broken_twin")  # the worker's discovery; this process imports it
    importlib.import_module("broken_twin")

    try:
        with pytest.raises(AssertionError) as raised:
            assert_twins("mobilenet_v2_broken", backends=["tensorflow"], checks=["eval_output", "train_loss"])
    finally:
        registry.unregister("mobilenet_v2_broken")
    message = str(raised.value)
    assert message.startswith("1 of 2 parity rows of mobilenet_v2_broken failed"), message
    assert "### mobilenet_v2_broken  (batch 2, 64x56," in message, message
    assert "| eval_output | " in message and "| train_loss | " in message, message
    assert "FAIL (first diverging layer: features.5.conv.1.1" in message, message
    with pytest.raises(registry.UnknownModelError, match="unknown model name 'no_such_model'"):
        assert_twins("no_such_model")


@TENSORFLOW_PASS
def test_twins_parity_exits_non_zero_when_any_row_fails(monkeypatch, capsys):
    from twins_cli import main as cli

    def rows(passed):
        return [{"model": "resnet18", "backend": "tensorflow", "check": "eval_output", "error": 1e-7, "bound": 1e-5,
                 "passed": True, "detail": "", "meta": {}},
                {"model": "resnet18", "backend": "tensorflow", "check": "round_trip", "error": 0.0 if passed else 1.0,
                 "bound": 0.0, "passed": passed, "detail": "", "meta": {}}]

    for passed, code in ((True, 0), (False, 1)):
        monkeypatch.setattr(cli.parity, "run_parity", lambda *args, passed=passed, **kwargs: rows(passed))
        assert cli.main(["parity", "resnet18", "--backends", "tensorflow", "--checks", "eval_output,round_trip"]) == code
        assert capsys.readouterr().out.strip().endswith(f"{1 + passed} passed, {1 - passed} failed")


@TENSORFLOW_PASS
def test_every_tool_takes_the_registered_pair(tmp_path, capsys):
    """The example through the commands a user runs on a built-in model (in this process: `twins_cli.main.main`
    as the `twins` command calls it): training on an image folder, the run's best weights evaluated by the Keras
    twin and predicted by the torch twin, converted to a Keras file, exported as a torch.export program with its parity check, and
    benchmarked (`python -m benchmarks`, a process per backend)."""
    from twins.shapes import make_shapes
    from twins_cli.main import main

    data = make_shapes(tmp_path / "shapes", train=4, val=2, size=40, seed=2)
    run_dir, size = tmp_path / "run", ["--img-size", "40"]
    assert main(["train", "mobilenet_v2", "--framework", "torch", "--data", str(data), "--out", str(run_dir),
                 "--epochs", "1", "--batch-size", "4", *size]) == 0
    best = run_dir / "best.safetensors"
    assert best.is_file(), sorted(p.name for p in run_dir.iterdir())
    assert main(["evaluate", "mobilenet_v2", "--framework", "keras", "--data", str(data), "--weights", str(best),
                 *size]) == 0
    image = next((data / "val" / "disc").iterdir())
    assert main(["predict", "mobilenet_v2", str(image), "--framework", "torch", "--weights", str(best),
                 "--classes", str(run_dir / "classes.txt"), *size]) == 0
    converted = tmp_path / "mobilenet_v2.weights.h5"
    assert main(["convert", str(best), str(converted), "--model", "mobilenet_v2", "--num-classes", "2"]) == 0
    assert main(["export", "mobilenet_v2", "--framework", "torch", "--format", "pt2", "--out",
                 str(tmp_path / "m.pt2"), "--weights", str(best), "--img-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "mobilenet_v2" in out and "pt2" in out, out[-3000:]
    bench = run(["-m", "benchmarks", "--models", "mobilenet_v2", "--backends", "torch", "--mode", "infer",
                 "--batch-sizes", "2", "--img-size", "64", "--warmup", "1", "--repeats", "2",
                 "--out", str(tmp_path / "bench")], os.environ, timeout=300)
    assert bench.returncode == 0, bench.stdout[-2000:] + bench.stderr[-2000:]
    rows = json.loads(next((tmp_path / "bench").glob("*.json")).read_text())
    assert rows, bench.stdout[-2000:]
