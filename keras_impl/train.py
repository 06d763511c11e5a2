"""The fine-tuning recipe (the seed's `train_model`) as Keras `compile` + `fit` with callbacks. Twin of
`torch_impl/train.py`.

Per epoch a train phase (`fit`'s epoch, Keras' progress bar with loss, accuracy, images/s and ETA) and
a val phase (the logits of the single-output model, scored by `twins.metrics` exactly as the torch
twin scores its own); the weights with the best val accuracy are kept and restored at the end; the
history is returned and written to the run directory (`twins.runs`), with a resume state after every
epoch. Batches come from a `twins.data.BatchPlan` through a `keras.utils.PyDataset` (worker threads).
Inception's training loss is an extra output of the training view with loss weight 0.4, not a
backend-specific `train_step`.
"""
from __future__ import annotations

import sys
import time

import keras
import numpy as np

from twins import checkpoints, metrics
from twins.data import BatchPlan
from twins.runs import Recipe, RunDir, Scalars, epoch_record, natural_order, new_history, record_epoch

from . import training
from .weights import slots, torch_state_dict

RESUME_FILE = "keras_state.npz"


class PlanSequence(keras.utils.PyDataset):
    """Batch `i` of a `BatchPlan` for the epoch in `self.epoch` (NHWC, as the plan makes it); with
    `outputs` > 1 the labels are repeated once per model output (the aux heads learn the same labels)."""

    def __init__(self, plan: BatchPlan, workers: int, outputs: int = 1, labels: bool = True):
        super().__init__(workers=max(workers, 1), use_multiprocessing=False)
        self.plan, self.epoch, self.outputs, self.labels = plan, 0, outputs, labels

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, index: int):
        x, y = self.plan.batch(self.epoch, index)
        if not self.labels:
            return (x,)
        return x, (y if self.outputs == 1 else tuple([y] * self.outputs))


def set_feature_extract(model: keras.Model, heads, feature_extract: bool) -> list[str]:
    """Twin of `torch_impl.train.set_feature_extract`: with `feature_extract`, every layer outside the
    classifier heads is frozen (`trainable = False`; a frozen BatchNorm still normalises with batch
    statistics in training, as torch's does). Returns the torch names of the parameters that train
    (`twins.runs.natural_order`)."""
    prefixes = [h.replace(".", "-") for h in heads]
    for layer in model.layers:
        in_head = any(layer.name == p or layer.name.startswith(p + "-") for p in prefixes)
        layer.trainable = in_head or not feature_extract
    return natural_order(slot.key for slot in slots(model) if slot.variable.trainable)


def predict_logits(model: keras.Model, plan: BatchPlan, workers: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode logits and labels of every sample of `plan` (epoch 0, in order; the plan must not
    shuffle)."""
    logits = model.predict(PlanSequence(plan, workers, labels=False), verbose=0)
    labels = np.asarray([label for _, label in plan.folder.samples], np.int64)
    return np.asarray(logits), labels


def snapshot(model: keras.Model) -> list[np.ndarray]:
    """Copies of the model's weights (trainable and not), in `model.weights` order."""
    return [keras.ops.convert_to_numpy(v).copy() for v in model.weights]


class RecipeCallback(keras.callbacks.Callback):
    """The recipe around `fit`: epoch-dependent batches, per-step losses, the val phase, best weights,
    history, TensorBoard scalars and the resume state."""

    def __init__(self, base: keras.Model, train_seq: PlanSequence, val_plan: BatchPlan, recipe: Recipe,
                 run: RunDir, history: dict, scalars: Scalars, log):
        super().__init__()
        self.base, self.train_seq, self.val_plan = base, train_seq, val_plan
        self.recipe, self.run, self.history, self.scalars, self.log = recipe, run, history, scalars, log
        self.best = snapshot(base)

    def on_epoch_begin(self, epoch, logs=None):
        self.train_seq.epoch = epoch
        self.seen, self.previous_mean, self.step_losses = 0, 0.0, []
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        size = min(self.recipe.batch_size, self.train_seq.plan.num_samples - batch * self.recipe.batch_size)
        mean = float(logs["loss"])  # Keras logs the running mean over the epoch, weighted by batch size
        self.step_losses.append((mean * (self.seen + size) - self.previous_mean * self.seen) / size)
        self.seen += size
        self.previous_mean = mean
        logs["img/s"] = self.seen / max(time.perf_counter() - self.start, 1e-9)  # shown by the progress bar

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self.start
        accuracy = next(v for k, v in logs.items() if k.endswith("accuracy") and not k.startswith("val_"))
        train = {"loss": float(logs["loss"]), "acc": float(accuracy), "samples": self.seen, "seconds": seconds,
                 "step_losses": self.step_losses}
        start = time.perf_counter()
        logits, labels = predict_logits(self.base, self.val_plan, self.recipe.workers)
        val = {"loss": metrics.cross_entropy(logits, labels), "acc": metrics.correct(logits, labels) / len(labels),
               "samples": len(labels), "seconds": time.perf_counter() - start}
        record = epoch_record(epoch, self.recipe.lr, train, val)
        if record_epoch(self.history, record):
            self.best = snapshot(self.base)
            checkpoints.write(self.run.best_path, torch_state_dict(self.base))
        self.log(f"epoch {epoch + 1}/{self.recipe.epochs}: train loss {train['loss']:.4f} acc {train['acc']:.4f} "
                 f"({train['samples_per_sec']:.1f} img/s) | "
                 f"val loss {val['loss']:.4f} acc {val['acc']:.4f}"
                 + (" (best)" if self.history["best_epoch"] == epoch else ""))
        self.run.write_history(self.history)
        self.scalars.epoch(record)
        self.run.save_resume(epoch, self.write_resume, {"framework": "keras", "backend": keras.backend.backend()})

    def write_resume(self, folder):
        arrays = {f"model/{i}": keras.ops.convert_to_numpy(v) for i, v in enumerate(self.model.variables)}
        arrays.update({f"optimizer/{i}": keras.ops.convert_to_numpy(v)
                       for i, v in enumerate(self.model.optimizer.variables)})

        def save(tmp):
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)

        checkpoints.write_atomic(folder / RESUME_FILE, save)

    def restore_best(self):
        for variable, value in zip(self.base.weights, self.best):
            variable.assign(value)


def _load_resume(model: keras.Model, path) -> None:
    with np.load(path) as saved:
        count = sum(1 for k in saved.files if k.startswith("model/"))
        if count != len(model.variables):
            raise ValueError(f"{path} holds {count} model variables, this model has {len(model.variables)}")
        for i, variable in enumerate(model.variables):
            variable.assign(saved[f"model/{i}"])
        model.optimizer.build(model.trainable_variables)
        for i, variable in enumerate(model.optimizer.variables):
            variable.assign(saved[f"optimizer/{i}"])


def train_model(model: keras.Model, train_plan: BatchPlan, val_plan: BatchPlan, recipe: Recipe, run: RunDir,
                *, resume: bool = False, log=print) -> dict:
    """Run the recipe; returns the history (also in `run`). The model ends with the best weights."""
    view = training.training_view(model, recipe.aux_heads)
    outputs = len(view.outputs)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    view.compile(
        optimizer=training.sgd(recipe.lr, recipe.momentum),
        loss=[loss] * outputs if outputs > 1 else loss,
        loss_weights=[1.0] + [recipe.aux_weight] * (outputs - 1) if outputs > 1 else None,
        metrics=[["accuracy"]] + [[] for _ in range(outputs - 1)] if outputs > 1 else ["accuracy"],
        jit_compile="auto",
    )
    keras.utils.set_random_seed(recipe.seed)
    history, start = new_history(recipe), 0
    state = run.resume_state() if resume else None
    if state is not None:
        _load_resume(view, state["dir"] / RESUME_FILE)
        history, start = run.history(), state["epoch"] + 1
        log(f"resuming after epoch {state['epoch'] + 1}/{recipe.epochs} from {state['dir']}")
    scalars = Scalars(run, purge_step=start)
    train_seq = PlanSequence(train_plan, recipe.workers, outputs)
    callback = RecipeCallback(model, train_seq, val_plan, recipe, run, history, scalars, log)
    if state is not None and run.best_path.is_file():
        best = checkpoints.read(run.best_path)
        current = snapshot(model)
        from .weights import load_torch_state_dict

        load_torch_state_dict(model, best, strict=True)
        callback.best = snapshot(model)
        for variable, value in zip(model.weights, current):
            variable.assign(value)
    try:
        if start < recipe.epochs:
            # A progress bar on a terminal, one line per epoch in a log file (tqdm's `disable=None` on the
            # torch side). Our ProgbarLogger goes first so the bar is finished before the epoch line.
            verbose = 1 if sys.stdout.isatty() else 2
            view.fit(train_seq, epochs=recipe.epochs, initial_epoch=start, verbose=verbose, shuffle=False,
                     callbacks=[keras.callbacks.ProgbarLogger(), callback])
    finally:
        scalars.close()
    callback.restore_best()
    log(f"best val acc {history['best_val_acc']:.4f} at epoch {history['best_epoch'] + 1}; "
        f"weights in {run.best_path}")
    return history
