"""The checks: both twins of one model on one Keras backend, on the same weights and batches, each check an
independent computation on both sides compared against the torch twin (`ParityRun`), and `run_model`, which
runs the checks that apply to a model and returns one row per check.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from twins import checkpoints, registry
from twins.metrics import abs_err, rel_err
from twins_cli.export import output_list

from .bounds import (ALL_CHECKS, CHECKS, EXPORT_CHECKS, GRADIENT_SCALE_FLOOR, NEW_CLASSES, SGD_LR, SGD_MOMENTUM,
                     STEP_CHECKS, TORCH_FLOAT32_MULTIPLE, TRAIN_CHECKS, bound_for)
from .compare import (LazyMap, first_divergence, graded, key_set_problem, nchw_to_nhwc, nhwc_to_nchw, outputs_err,
                      worst)
from .exports import export_format, export_row
from .memory import release_memory, trim_heap
from .rows import Row, check_row
from .sides import (disable_tf32, keras_device, keras_dtype, keras_labels, keras_values, labels_for,
                    randomize_keras_batchnorm, reference_twin)
from .store import Recordings, TensorStore
from .variants import resolve


# The checks that read `ParityRun.loaded_twin` (one float32 Keras twin per model, built once).
TWIN_CHECKS = ("eval_output", "stage_outputs", "round_trip")


class ParityRun:
    """Both twins of one model on one Keras backend: the shared reference weights and batches, and one
    method per check returning `(error, detail)`. The twin packages are looked up at call time, so a
    test can substitute a deliberately broken piece (see `parity_tests/mutations.py`)."""

    def __init__(self, name: str, *, batch: int, size: int | None, seed: int, train_dtype: str,
                 optimizer: str | None = None, width: int | None = None):
        import keras
        import torch

        from torch_impl.weights import state_dict_numpy

        from twins.runs import recipe_defaults

        self.name = name
        self._twin = None  # `loaded_twin`, once built
        self._truth = None  # `truth`, once computed
        self.model, self.options, default_size = resolve(name)
        self.info = registry.get(self.model)
        # The batches are `size` high and `width` wide, never square where the model takes another width (a twin
        # that swaps height and width somewhere computes the same thing on a square image).
        self.size = size or default_size
        self.width = width or self.info.parity_width(self.size)
        self.seed = seed
        self.train_dtype = train_dtype
        self.recipe = recipe_defaults(self.model)
        self.optimizer = optimizer or self.recipe["optimizer"]
        if self.optimizer not in STEP_CHECKS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; expected one of {', '.join(STEP_CHECKS)}")
        keras.utils.set_random_seed(seed)
        self.reference = reference_twin(self.model, self.options, seed)
        self.state = state_dict_numpy(self.reference)
        if self.info.task == "contrastive":
            # Rows 2k and 2k+1 are a positive pair: batch 2 is one pair, whose NT-Xent is log(1) = 0 with no
            # gradient; 4 rows (two pairs) is the smallest batch with negatives.
            batch = max(4, batch + batch % 2)
        self.batch = batch
        rng = np.random.RandomState(seed)
        self.batches = [rng.randn(batch, 3, self.size, self.width).astype(np.float32) for _ in range(2)]
        self.x = self.batches[0]
        with torch.no_grad():
            self.expected = [t.numpy() for t in output_list(self.reference(torch.from_numpy(self.x)))]
        self.labels = [labels_for(self.expected[0].shape, rng, self.info.task) for _ in self.batches]

    def bound(self, check: str) -> float:
        return bound_for(self.name, check, self.train_dtype)

    def build_torch(self, **overrides):
        import torch_impl

        return torch_impl.build(self.model, **{**self.options, **overrides})

    def build_keras(self, dtype: str = "float32", drawn: bool = True, **overrides):
        """A fresh Keras twin with its own initial values, drawn by numpy from its initializers' distributions
        (`keras_impl.common.NumpyDrawn`: on jax no program compiled per variable shape), or with `drawn=False`
        zeros, for a twin that is loaded next."""
        import keras_impl
        from keras_impl.common import initial_values_drawn_by_numpy, initial_values_not_drawn

        with keras_dtype(dtype), (initial_values_drawn_by_numpy(self.seed) if drawn else initial_values_not_drawn()):
            return keras_impl.build(self.model, **{**self.options, **overrides})

    def keras_twin(self, dtype: str = "float32", **overrides):
        """A Keras twin holding the reference weights, loaded through the bridge (strictly: every variable), so
        its initial values are never drawn."""
        from keras_impl import weights

        model = self.build_keras(dtype, drawn=False, **overrides)
        weights.load_torch_state_dict(model, self.state, strict=True)
        return model

    def loaded_twin(self):
        """The float32 Keras twin holding the reference weights that the eval-mode checks and the round trip's
        first half read (none of them changes it; the round trip's second half then loads another model's values into
        it, and forgets it): built and loaded once for the three instead of once each
        (resnet152 on tensorflow: 3 s a build and load). `drop_twin` lets it go (`run_model`: before the float64
        training checks, and after its last use)."""
        if self._twin is None:
            self._twin = self.keras_twin()
        return self._twin

    def drop_twin(self) -> bool:
        """Forget the cached `loaded_twin`; True if there was one."""
        had, self._twin = self._twin is not None, None
        return had

    def torch_twin(self, **overrides):
        """A fresh torch twin holding the reference weights (the reference itself is built with the
        registry's defaults; the training checks need the parity training options, dropout off)."""
        from torch_impl import weights

        model = self.build_torch(**overrides)
        weights.load_state_dict(model, self.state, strict=True)
        return model

    def keras_eval(self, model, x: np.ndarray) -> list[np.ndarray]:
        import keras

        from keras_impl.training import inference_fn

        outputs = inference_fn(model)(nchw_to_nhwc(x))
        return [nhwc_to_nchw(keras.ops.convert_to_numpy(t)) for t in output_list(outputs)]

    def diagnose(self, training: bool) -> str:
        options = self.info.parity_train_options if training else {}
        hit = first_divergence(self.torch_twin(**options), self.keras_twin(**options), self.x,
                               self.bound("eval_output"), training)
        return f"first diverging layer: {hit[0]} (rel err {hit[1]:.2e})" if hit else "no single layer over the bound"

    # -- eval mode -------------------------------------------------------------------------------

    def truth(self) -> tuple[dict, dict]:
        """The truth the eval checks grade against: the torch twin in float64 on the eval batch, its outputs
        (`output 0`, ...) and its stage taps by name (models with taps). The same whichever Keras backend: computed
        once per run and model when the run's workers share a recordings folder (`store.Recordings`), else here.
        The reference twin is converted to float64 and back in place (exact both ways), not copied (vgg19_slim:
        143 M parameters, 1.1 GB in float64)."""
        import torch

        if self._truth is None:
            recordings = Recordings()
            key = f"{self.name}-{self.size}x{self.width}px-batch{self.batch}-seed{self.seed}-float64-eval"
            found = recordings.find(key)
            if found is None:
                store = recordings.start(key)
                try:
                    model = self.reference.double()
                    with torch.no_grad():
                        x = torch.from_numpy(self.x).double()
                        for i, t in enumerate(output_list(model(x))):
                            store.put("output", f"output {i}", t.numpy())
                        if self.has_stage_taps():
                            for k, v in model.forward_stages(x).items():
                                store.put("stage", k, v.numpy())
                except BaseException:
                    store.close()  # its folder goes: the next check's try starts from nothing, and fails as this did
                    raise
                finally:
                    self.reference.float()
                found = recordings.finish(key, store, {}), {}
            store = found[0]
            try:
                self._truth = tuple({k: store.get(kind, k) for k in store.keys(kind)} for kind in ("output", "stage"))
            finally:
                store.close()
        return self._truth

    def eval_output(self):
        got = self.keras_eval(self.loaded_twin(), self.x)
        if len(got) != len(self.expected):
            return float("inf"), f"Keras gives {len(got)} outputs, torch {len(self.expected)}"
        keys = [f"output {i}" for i in range(len(got))]
        bound = self.bound("eval_output")
        err, allowed, detail = graded(dict(zip(keys, got)), dict(zip(keys, self.expected)), self.truth()[0], keys,
                                      bound, TORCH_FLOAT32_MULTIPLE)
        return err, detail if err <= allowed else f"{self.diagnose(False)}; {detail}", allowed

    def has_stage_taps(self) -> bool:
        return hasattr(self.reference, "forward_stages")

    def stage_outputs(self):
        import keras
        import torch

        from keras_impl.training import inference_fn

        kmodel = self.loaded_twin()
        with torch.no_grad():
            expected = {k: v.numpy() for k, v in self.reference.forward_stages(torch.from_numpy(self.x)).items()}
        names = list(self.reference.stage_info)
        problem = key_set_problem(expected, names, "stage taps")
        if problem:
            return float("inf"), f"torch forward_stages and stage_info disagree: {problem}"
        taps = keras.Model(kmodel.inputs, [kmodel.get_layer(n).output for n in names])
        outs = inference_fn(taps)(nchw_to_nhwc(self.x))
        got = {n: nhwc_to_nchw(keras.ops.convert_to_numpy(v)) for n, v in zip(names, outs)}
        err, allowed, detail = graded(got, expected, self.truth()[1], names, self.bound("stage_outputs"),
                                      TORCH_FLOAT32_MULTIPLE)
        return err, f"worst: {detail} ({len(names)} taps: {', '.join(names)})", allowed

    # -- training mode: loss, gradients, two SGD steps ---------------------------------------------

    def training(self) -> dict:
        """Both sides' two training steps, run once for the four training checks (a failure too)."""
        if not hasattr(self, "_training"):
            try:
                self._training = self._train_both()
            except Exception as exc:
                self._training = exc
        if isinstance(self._training, Exception):
            raise self._training
        return self._training

    def _train_both(self) -> dict:
        """Both twins take the same two optimiser steps on the same batches, one twin after the other: the torch
        twin's steps first, recorded (its losses, its step-1 gradients, and each step's update of every parameter
        and running statistic: the state after the step minus the state before it, both read off the torch twin),
        then the Keras twin's, compared with that recording key by key as each of its steps is taken (its updates
        read off the Keras twin the same way). One twin's model, gradients and optimiser state are alive at a
        time, and the states before a step, the gradients and the updates go to disk as they are made
        (`store.TensorStore`), read back one tensor at a time (the Keras twin's state after a step is read off it
        once, for the step's updates, and kept as the next step's state before it): pspnet (49 M parameters, 0.37 GB a float64 copy)
        peaked at 5.8 GB with both twins stepping side by side and every copy in memory."""
        import keras
        import torch

        from keras_impl import training as ktrain
        from keras_impl import weights as kweights
        from keras_impl.train import set_weight_decay as keras_weight_decay
        from torch_impl import training as ttrain
        from torch_impl.train import set_weight_decay as torch_weight_decay
        from twins import optim

        dtype = self.train_dtype
        options, aux_weight, task = self.info.parity_train_options, self.info.aux_weight, self.info.task
        # The recipe's L2 term is part of the training loss (vgg19_slim's 5e-4 on its conv kernels).
        weight_decay = self.recipe["weight_decay"]
        store = TensorStore()  # the Keras twin's states
        # The torch twin's two steps are the same whichever Keras backend they are compared with: recorded once
        # per run and model when the run's workers share a folder (`store.Recordings`: pspnet's torch side is
        # 6-7 s of each backend's heavy job), else here.
        recordings, recorded_as = Recordings(), self.recording_key()
        found = recordings.find(recorded_as)
        recording = None
        try:
            if found is not None:
                recording, saved = found
                t_keys, stat_keys, t_losses = saved["t_keys"], saved["stat_keys"], saved["t_losses"]
                grad_scale = saved["t_grad_scale"]
            else:
                # -- the torch twin's two steps, recorded
                recording = recordings.start(recorded_as)
                tmodel = self.torch_twin(**options).to(getattr(torch, dtype))
                if self.optimizer == "adam":
                    t_opt = ttrain.adam(tmodel.parameters(), self.recipe["lr"], self.recipe["betas"])
                else:
                    t_opt = ttrain.sgd(tmodel.parameters(), SGD_LR, SGD_MOMENTUM)
                parameters = dict(tmodel.named_parameters())
                decayed = [parameters[k] for k in torch_weight_decay(tmodel, weight_decay)]
                t_task_loss = ttrain.loss_for(task, aux_weight)

                def t_loss(outputs, labels):
                    loss = t_task_loss(outputs, labels)
                    return loss + optim.l2_penalty(decayed, weight_decay) if decayed else loss

                t_keys = [k for k, p in tmodel.named_parameters() if p.requires_grad]
                stat_keys = [k for k in tmodel.state_dict() if k.endswith(("running_mean", "running_var"))]
                t_losses, grad_scale = [], 0.0
                for s, (x, y) in enumerate(zip(self.batches, self.labels), 1):
                    for k, v in tmodel.state_dict().items():
                        recording.put("before", k, v.detach().cpu().numpy())
                    t_y = torch.from_numpy(y)
                    loss, grads = ttrain.value_and_grad(tmodel, t_loss, torch.from_numpy(x).to(getattr(torch, dtype)),
                                                        t_y.to(getattr(torch, dtype)) if t_y.is_floating_point() else t_y)
                    t_losses.append(float(loss.detach()))
                    if s == 1:
                        for k, g in grads.items():
                            if g is not None:
                                recording.put("torch gradient", k, g.detach().cpu().numpy())
                                grad_scale = max(grad_scale, float(g.detach().abs().max()))
                    t_opt.step()
                    del grads
                    now = tmodel.state_dict()
                    for k in t_keys + stat_keys:
                        recording.put(f"torch update {s}", k, now[k].detach().cpu().numpy() - recording.get("before", k))
                    recording.drop("before")
                    del now
                decayed.clear()
                del tmodel, t_opt, parameters, loss  # the loss holds the last step's graph
                trim_heap()
                recording = recordings.finish(recorded_as, recording, {"t_keys": t_keys, "stat_keys": stat_keys,
                                                                       "t_losses": t_losses, "t_grad_scale": grad_scale})
            out = {"t_param_keys": t_keys, "t_losses": list(t_losses), "k_losses": [], "params": [], "stats": []}

            # -- the Keras twin's two steps, each compared with the recording
            with keras_dtype(dtype):
                kmodel = self.keras_twin(dtype, **options)
                keras_weight_decay(kmodel, weight_decay)
                view = ktrain.training_view(kmodel, self.info.aux_heads)
                step = ktrain.value_and_grad_fn(view, ktrain.loss_for(task, aux_weight))
                if self.optimizer == "adam":
                    k_opt = ktrain.adam(self.recipe["lr"], self.recipe["betas"])
                else:
                    k_opt = ktrain.sgd(SGD_LR, SGD_MOMENTUM)
                k_slots = {slot.key: slot for slot in kweights.slots(kmodel)}
                k_apply = ktrain.apply_fn(k_opt, view.trainable_variables)

                # The Keras twin's states are stored in its own layout (a contiguous copy, written as it is) and an
                # update is taken there, then viewed in the torch layout: `to_torch` only transposes and reshapes,
                # so the difference is the same numbers, without a strided copy of the model to write and a strided
                # subtraction (pspnet on jax: a quarter of its job).
                def keras_now(key):
                    return keras.ops.convert_to_numpy(k_slots[key].variable)

                def keras_delta(key):
                    before = store.get("before", key)
                    if key not in k_slots or before is None:
                        return None
                    now = keras_now(key)
                    if s < len(self.batches):  # the next step's state before it: read off the twin once
                        store.put("after", key, now)
                    return k_slots[key].to_torch(now - before)

                for s, (x, y) in enumerate(zip(self.batches, self.labels), 1):
                    if s == 1:
                        for key in k_slots:
                            store.put("before", key, keras_now(key))
                    else:  # what the last step's updates read off the twin, and what they did not need
                        store.rename("after", "before")
                        for key in set(k_slots) - set(store.keys("before")):
                            store.put("before", key, keras_now(key))
                    k_loss, k_grads = step(nchw_to_nhwc(x).astype(dtype), keras_labels(y, dtype))
                    k_loss = keras.ops.convert_to_numpy(k_loss)
                    if k_loss.dtype.itemsize < np.dtype(dtype).itemsize:  # e.g. JAX without x64
                        raise RuntimeError(f"Keras computed the loss in {k_loss.dtype}, asked for {dtype}")
                    out["k_losses"].append(float(k_loss))
                    if s == 1:
                        by_path = {v.path: g for v, g in zip(view.trainable_variables, k_grads)}
                        k_keys = {key for key, slot in k_slots.items() if slot.variable.path in by_path}

                        def keras_grad(key):
                            grad = by_path[k_slots[key].variable.path]
                            return None if grad is None else k_slots[key].to_torch(keras.ops.convert_to_numpy(grad))

                        problem = key_set_problem(k_keys, t_keys, "trainable tensors")
                        if problem:
                            out["gradients"] = (float("inf"), problem)
                        else:
                            # a tensor is graded relative to itself, or to the model's gradients where its own true
                            # gradient is zero (bounds.GRADIENT_SCALE_FLOOR)
                            floor = max(1e-6, GRADIENT_SCALE_FLOOR * grad_scale)
                            err, key = worst(LazyMap(keras_grad, k_keys), recording.view("torch gradient"), t_keys,
                                             lambda a, b: rel_err(a, b, floor))
                            out["gradients"] = (err, f"worst: {key}")
                        del by_path
                        recording.drop("torch gradient")
                    k_apply(k_grads)
                    del k_grads
                    t_delta, k_delta = recording.view(f"torch update {s}"), LazyMap(keras_delta, set(k_slots))
                    out["params"].append(worst(k_delta, t_delta, t_keys))
                    if stat_keys:
                        out["stats"].append(worst(k_delta, t_delta, stat_keys))
                    store.drop("before")
                    recording.drop(f"torch update {s}")
                store.drop("after")
        finally:
            store.close()
            if recording is not None:
                recording.close()
        return out

    def recording_key(self) -> str:
        """What the torch twin's recorded training steps depend on (besides the code): one folder name."""
        return f"{self.name}-{self.size}x{self.width}px-batch{self.batch}-seed{self.seed}-{self.train_dtype}-{self.optimizer}"

    def train_loss(self, run: dict):
        err = abs(run["k_losses"][0] - run["t_losses"][0])
        return err, "" if err <= self.bound("train_loss") else self.diagnose(True)

    def gradients(self, run: dict):
        return run["gradients"]

    def _updates(self, steps: list, check: str):
        """Worst relative error of the per-step updates `state[s] - state[s-1]` over both steps; the
        detail gives each step's own worst tensor (a NaN from step 1 spreads to every tensor in step 2)."""
        if check not in STEP_CHECKS[self.optimizer]:
            raise ValueError(f"{check} compares {check.split('_')[0]} steps; this run took {self.optimizer} steps")
        bound = self.bound(check)
        detail = "; ".join(f"step {s} {'within' if err <= bound else 'over'} the bound: {err:.1e} ({key})"
                           for s, (err, key) in enumerate(steps, 1))
        return max(err for err, _ in steps), detail

    def sgd_step_params(self, run: dict):
        return self._updates(run["params"], "sgd_step_params")

    def sgd_step_bn_stats(self, run: dict):
        return self._updates(run["stats"], "sgd_step_bn_stats")

    def adam_step_params(self, run: dict):
        return self._updates(run["params"], "adam_step_params")

    def adam_step_bn_stats(self, run: dict):
        return self._updates(run["stats"], "adam_step_bn_stats")

    # -- the bridge ------------------------------------------------------------------------------

    def round_trip(self):
        import torch

        from keras_impl import weights as kweights
        from torch_impl import weights as tweights
        from torch_impl.weights import state_dict_numpy

        # torch -> Keras -> torch, by key against the torch twin's own state.
        expected = {k: v for k, v in self.state.items() if not checkpoints.is_counter(k)}
        back = kweights.torch_state_dict(self.loaded_twin())
        problem = key_set_problem(back, expected, "tensors")
        if problem:
            return float("inf"), f"torch -> Keras -> torch: {problem}"
        err_a, key_a = worst(back, expected, expected, abs_err)

        # Keras -> torch (through a file) -> Keras, with the torch twin's output checked in between.
        source = self.build_keras()
        randomize_keras_batchnorm(source, self.seed + 1)
        with tempfile.TemporaryDirectory() as tmp:
            path = checkpoints.write(Path(tmp) / "keras.safetensors", kweights.torch_state_dict(source))
            tmodel = self.build_torch().eval()
            tweights.load_state_dict(tmodel, checkpoints.read(path), strict=True)
        with torch.no_grad():
            t_out = [t.numpy() for t in output_list(tmodel(torch.from_numpy(self.x)))]
        out_err, _ = outputs_err(self.keras_eval(source, self.x), t_out)
        if out_err > self.bound("eval_output"):
            return out_err, (f"the torch twin loaded from the Keras twin's export computes something else: "
                             f"eval output differs by {out_err:.2e} (bound {self.bound('eval_output'):.0e}); "
                             f"the bridge maps a tensor to the wrong place")
        # The target: the loaded twin, done with (the first half above was its last reader; it is forgotten, so a
        # check after this one builds its own). It holds the reference weights, none of them the source's (drawn
        # by Keras' initializers, BatchNorm's randomised with another seed), so a variable the load misses keeps a
        # value the comparison finds, as a fresh build's zeros would (those hide a bias the source drew as zeros);
        # one Keras build less (resnet50 on tensorflow: ~1 s).
        target = self.loaded_twin()
        self.drop_twin()
        kweights.load_torch_state_dict(target, state_dict_numpy(tmodel), strict=True)
        a, b = keras_values(target), keras_values(source)
        problem = key_set_problem(a, b, "variables")
        if problem:
            return float("inf"), f"Keras -> torch -> Keras: {problem}"
        err_b, key_b = worst(a, b, b, abs_err)
        return max(err_a, err_b), (f"torch -> Keras -> torch {err_a:.1e} at {key_a}; Keras -> torch -> Keras "
                                   f"{err_b:.1e} at {key_b}; the torch twin on Keras' export: eval {out_err:.1e}")

    def head_keys(self) -> list[str]:
        heads = self.info.classifier
        return [k for k in self.state if not checkpoints.is_counter(k)
                and any(k == p or k.startswith(p + ".") for p in heads)]

    def exclude_restore(self):
        from keras_impl import weights as kweights
        from torch_impl import weights as tweights
        from torch_impl.weights import state_dict_numpy

        head = self.head_keys()
        body = [k for k in self.state if not checkpoints.is_counter(k) and k not in head]
        layer_prefixes = tuple(p.replace(".", "-") + end for p in self.info.classifier for end in ("/", "-"))
        problems, errors = [], []

        def restore(side, model, load, export, values, exclude, classes):
            before = values(model)
            report = load(model, self.state, exclude=exclude, strict=True)
            now = export(model)
            skipped = head if exclude else []
            loaded = body if exclude else body + head
            if sorted(report.skipped) != sorted(skipped):
                problems.append(f"{side} skipped {sorted(report.skipped)}, expected {sorted(skipped)}")
            if sorted(report.loaded) != sorted(loaded):
                problems.append(f"{side} reported {len(report.loaded)} keys loaded, expected {len(loaded)}")
            missing = [k for k in loaded if k not in now]
            if missing:
                problems.append(f"{side} model has no {missing[0]}")
                return
            errors.append((*worst(now, self.state, loaded, abs_err), side, "full" if not exclude else "fine-tune"))
            if exclude:
                after = values(model)
                if side == "torch":
                    fresh = [k for k in head if not np.array_equal(after[k], before[k])]
                else:
                    fresh = [p for p in before if p.startswith(layer_prefixes) and not np.array_equal(after[p], before[p])]
                if fresh:
                    problems.append(f"{side} overwrote the excluded head: {', '.join(fresh)}")
                wrong = [k for k in head if now[k].shape[0] != classes]
                if wrong:
                    problems.append(f"{side} head {', '.join(wrong)} does not have {classes} classes")

        for exclude, classes in ((self.info.classifier, NEW_CLASSES), ((), self.info.num_classes)):
            restore("Keras", self.build_keras(num_classes=classes), kweights.load_torch_state_dict,
                    kweights.torch_state_dict, keras_values, exclude, classes)
            restore("torch", self.build_torch(num_classes=classes), tweights.load_state_dict,
                    state_dict_numpy, state_dict_numpy, exclude, classes)
        if problems:
            return float("inf"), "; ".join(problems)
        err, key, side, kind = max(errors, key=lambda e: e[0])
        return err, (f"skipped {', '.join(head)} into {NEW_CLASSES} classes; {len(body)} loaded; "
                     f"worst: {key} ({side}, {kind} restore)")

    def has_head(self) -> bool:
        return bool(self.head_keys())

    # -- exports ---------------------------------------------------------------------------------

    def exported(self, fmt: str):
        """The Keras twin (reference weights, built for this size) as a `fmt` artifact against itself eager."""
        import keras

        from twins_cli.train import Side

        model = self.keras_twin(input_shape=(self.size, self.size, 3))
        return export_row(Side("keras", keras.backend.backend()), model, self.model, fmt, self.size, self.seed)

    def has_running_stats(self) -> bool:
        return any(k.endswith(("running_mean", "running_var")) for k in self.state)



def run_model(
    name: str,
    *,
    batch: int = 2,
    size: int | None = None,
    seed: int = 0,
    checks=CHECKS,
    train_dtype: str = "float64",
    optimizer: str | None = None,
    width: int | None = None,
) -> list[Row]:
    """Run the parity checks for one model (or variant) on the current Keras backend. A check that
    does not apply (stage taps on a model without them, the head restore on a headless variant) has
    no row (nor the running-statistics step on a model without BatchNorm); a check that raises has a
    failed row saying what it raised. The images are `size` high (default: the model's parity size) and `width`
    wide (default: `ModelInfo.parity_width(size)`, another width than the height where the model takes one)."""
    import keras
    import torch

    backend = keras.backend.backend()
    disable_tf32(backend)
    unknown = [c for c in checks if c not in ALL_CHECKS]
    if unknown:
        raise ValueError(f"unknown check(s) {', '.join(unknown)}; expected a subset of {', '.join(ALL_CHECKS)}")
    run = ParityRun(name, batch=batch, size=size, seed=seed, train_dtype=train_dtype, optimizer=optimizer, width=width)
    meta = {"batch": run.batch, "size": run.size, "width": run.width, "dtype": "float32", "train_dtype": train_dtype, "optimizer": run.optimizer,
            "device": keras_device(backend), "keras": keras.__version__, "torch": torch.__version__,
            "options": {k: list(v) if isinstance(v, tuple) else v for k, v in run.options.items()}}
    if backend == "tensorflow":  # tensorflow's oneDNN kernels, or its own (TF_ENABLE_ONEDNN_OPTS=0: parity.memory)
        meta["onednn"] = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1") != "0"
    rows: list[Row] = []

    def add(check, compute):
        rows.append(check_row(name, backend, check, run.bound(check), compute, meta))

    wanted = [c for c in ALL_CHECKS if c in checks]
    if not run.has_stage_taps():
        wanted = [c for c in wanted if c != "stage_outputs"]
    if not run.has_head():
        wanted = [c for c in wanted if c != "exclude_restore"]
    if not run.has_running_stats():
        wanted = [c for c in wanted if not c.endswith("_step_bn_stats")]
    other_steps = [c for name, pair in STEP_CHECKS.items() if name != run.optimizer for c in pair]
    wanted = [c for c in wanted if c not in other_steps]
    last_twin_use = max((i for i, c in enumerate(wanted) if c in TWIN_CHECKS), default=-1)
    for i, check in enumerate(wanted):
        if check in TRAIN_CHECKS:
            if run.drop_twin():  # the float64 twins' peak is the job's (vgg11_bn: 1.06 GB a copy)
                release_memory()
            add(check, lambda check=check: getattr(run, check)(run.training()))
        elif check in EXPORT_CHECKS:
            add(check, lambda check=check: run.exported(export_format(check, "keras")))
        else:
            add(check, getattr(run, check))
        if i == last_twin_use:
            run.drop_twin()
        # What a check built goes before the next check builds its own (the big twins: vgg11_bn 0.5 GB a float32
        # copy); the eval-mode checks that only read the cached twin leave it to the next release (a collection
        # is 0.1-0.2 s on jax).
        if check == STEP_CHECKS[run.optimizer][1] or (check not in TRAIN_CHECKS and (check not in TWIN_CHECKS
                                                                                     or i == last_twin_use)):
            release_memory()
    return rows
