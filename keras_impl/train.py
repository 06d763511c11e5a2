"""The training recipes (seed 001's `train_model`, seed 002's iteration loop, seed 000's saliency loop) as
Keras `compile` + `fit` with callbacks. Twin of `torch_impl/train.py`.

Per epoch a train phase (`fit`'s epoch, Keras' progress bar with loss, accuracy, images/s and ETA) and
a val phase (the logits of the single-output model, scored by `twins.metrics` exactly as the torch
twin scores its own); the weights with the best val accuracy are kept and restored at the end; the
history is returned and written to the run directory (`twins.runs`), with a resume state after every
epoch. Batches come from a `twins.data.BatchPlan` through a `keras.utils.PyDataset` (worker threads).
Inception's training loss is an extra output of the training view with loss weight 0.4, not a
backend-specific `train_step`. Per step, what `Recipe` asks for: the rate of `twins.optim.learning_rates`
through a `RateTable` schedule and torch's momentum form (`training.MomentumSGD`), the L2 term as
variable regularizers that `fit` adds to the loss, a loss line every `log_every` steps, a val evaluation
every `val_every` and a resume checkpoint every `checkpoint_every` (a resumed half-done epoch is a `fit`
of its own over the remaining batches). The model's task (`twins.tasks`) decides the loss (cross-entropy;
`MeanSquaredError` for the saliency map) and what a val phase scores; the recipe the optimiser, in torch's
form (`MomentumSGD`, or `TorchAdam` for the saliency seed).
"""
from __future__ import annotations

import sys
import time

import keras
import numpy as np

from twins import checkpoints, optim, tasks
from twins.data import BatchPlan
from twins.runs import (EpochMeter, Position, Recipe, RunDir, Scalars, best_line, due, epoch_line, epoch_record,
                        natural_order, new_history, record_epoch, record_eval, scores_text, step_line, task_of)

from . import training
from .losses import NTXent, SegmentationCrossEntropy
from .weights import load_torch_state_dict, slots, torch_state_dict

RESUME_FILE = "keras_state.npz"


class PlanSequence(keras.utils.PyDataset):
    """Batches `start, start + 1, ...` of a `BatchPlan`'s epoch `self.epoch` (NHWC, as the plan makes
    them; `start` > 0 when a resumed run continues half-way through an epoch); with `outputs` > 1 the
    labels are repeated once per model output (the aux heads learn the same labels)."""

    def __init__(self, plan: BatchPlan, workers: int, outputs: int = 1, labels: bool = True, start: int = 0):
        super().__init__(workers=max(workers, 1), use_multiprocessing=False)
        self.plan, self.epoch, self.outputs, self.labels, self.start = plan, 0, outputs, labels, start

    def __len__(self) -> int:
        return len(self.plan) - self.start

    def __getitem__(self, index: int):
        x, y = self.plan.batch(self.epoch, self.start + index)
        if not self.labels:
            return (x,)
        if len(y) != len(x):  # two views per image (simclr): a label per row, which NT-Xent does not read
            y = np.repeat(y, len(x) // len(y))
        return x, (y if self.outputs == 1 else tuple([y] * self.outputs))


def set_feature_extract(model: keras.Model, heads, feature_extract: bool) -> list[str]:
    """Twin of `torch_impl.train.set_feature_extract`: with `feature_extract`, every layer outside the
    classifier heads is frozen (`trainable = False`; a frozen BatchNorm still normalises with batch
    statistics in training, as torch's does); without it, what trains is what the builder left trainable.
    Returns the torch names of the parameters that train (`twins.runs.natural_order`)."""
    prefixes = [h.replace(".", "-") for h in heads]
    if feature_extract:
        for layer in model.layers:
            layer.trainable = any(layer.name == p or layer.name.startswith(p + "-") for p in prefixes)
    return natural_order(slot.key for slot in slots(model) if slot.variable.trainable)


def set_weight_decay(model: keras.Model, weight_decay: float) -> list[str]:
    """Twin of `torch_impl.train.set_weight_decay`: the variables of `twins.optim.l2_keys` (every conv
    kernel that trains) get `training.SlimL2(weight_decay)`, `weight_decay * sum(w**2) / 2`, and `fit`
    adds it to the loss; every other variable gets none. Returns the torch names."""
    trainable = {slot.key: slot for slot in slots(model) if slot.variable.trainable}
    keys = set(optim.l2_keys({key: tuple(slot.variable.shape) for key, slot in trainable.items()})) \
        if weight_decay else set()
    for slot in slots(model):
        slot.variable.regularizer = training.SlimL2(weight_decay) if slot.key in keys else None
    return natural_order(keys)


def predict_logits(model: keras.Model, plan: BatchPlan, workers: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode logits and labels of every sample of `plan` (epoch 0, in order; the plan must not
    shuffle)."""
    logits = model.predict(PlanSequence(plan, workers, labels=False), verbose=0)
    return np.asarray(logits), plan.targets()[:len(logits)]


def evaluate(model: keras.Model, plan: BatchPlan, workers: int, task: tasks.Task) -> dict:
    """The val phase: eval-mode outputs scored by the task (`twins.tasks`: loss and acc, or loss, cc, kld
    and sim), exactly as the torch twin scores its own; plus samples and seconds. Batch by batch, so a
    val set of maps is never held whole. The contrastive task's `plan` is the kNN monitor's
    (`twins.tasks.KnnPlans`)."""
    if task.name == "contrastive":
        return knn_evaluate(model, plan, workers)
    start = time.perf_counter()
    tally = task.tally()
    for x, y in plan.iterate(0, workers):
        tally.add(np.asarray(model.predict_on_batch(x)), y)
    return {**tally.result(), "seconds": time.perf_counter() - start}


def knn_evaluate(model: keras.Model, plans: tasks.KnnPlans, workers: int = 0) -> dict:
    """`twins.tasks.knn_monitor` on the eval-mode encoder features (the model's first output). Twin of
    `torch_impl.train.knn_evaluate`."""
    return tasks.knn_monitor(lambda x: np.asarray(model.predict_on_batch(x)[0]), plans, workers)


def score(model: keras.Model, plan: BatchPlan, task: tasks.Task, workers: int = 0) -> dict:
    """A checkpoint's val scores on `plan` (`twins evaluate`). Twin of `torch_impl.train.score`."""
    return evaluate(model, plan, workers, task)


def make_optimizer(rates: np.ndarray, recipe: Recipe) -> keras.optimizers.Optimizer:
    """The recipe's optimiser in torch's form, its rate read from the shared table: SGD with momentum
    (`MomentumSGD`) or Adam (`TorchAdam`). Twin of `torch_impl.train.make_optimizer`."""
    if recipe.optimizer == "adam":
        return training.adam(training.RateTable(rates), recipe.betas)
    return training.sgd(training.RateTable(rates), recipe.momentum)


def snapshot(model: keras.Model) -> list[np.ndarray]:
    """Copies of the model's weights (trainable and not), in `model.weights` order."""
    return [keras.ops.convert_to_numpy(v).copy() for v in model.weights]


class RecipeCallback(keras.callbacks.Callback):
    """The recipe around `fit`: epoch-dependent batches, the per-step tally, the step events (loss line,
    val evaluation, checkpoint), the val phase, best weights, history, TensorBoard scalars and the resume
    state. `self.model` (the training view) is read before the weights are: on jax that attaches the
    state `fit` keeps aside during an epoch."""

    def __init__(self, base: keras.Model, train_seq: PlanSequence, val_plan: BatchPlan, recipe: Recipe,
                 run: RunDir, history: dict, scalars: Scalars, rates: np.ndarray, position: Position, log,
                 resume_rng: dict | None = None):
        super().__init__()
        self.base, self.train_seq, self.val_plan, self.task = base, train_seq, val_plan, task_of(recipe)
        self.recipe, self.run, self.history, self.scalars, self.log = recipe, run, history, scalars, log
        self.rates, self.position = rates, position
        self.steps_per_epoch = len(train_seq.plan)
        self.best = snapshot(base)
        self.stop_after = None  # the epoch after which fit stops (a resumed half-done epoch)
        # The global generators' state to go on from (`_global_rng_state`), and where: the resume point's
        # (`resume_rng`), at the first batch of a resumed half epoch, or at the start of the epoch; the end of a
        # fit's, at the start of the next fit's epoch, since starting a fit draws from torch's generator. An
        # epoch's iterator draws once when it starts (torch's DataLoader its base seed), after `on_epoch_begin`.
        self.rng: tuple[dict, str] = (resume_rng or {}, "batch" if position.batch else "epoch")

    def on_epoch_begin(self, epoch, logs=None):
        if self.rng[1] == "epoch":
            _set_global_rng_state(self.rng[0])
            self.rng = ({}, "")
        self.train_seq.epoch = epoch
        resumed = epoch == self.position.epoch
        self.meter = EpochMeter(self.position.meter if resumed else None, self.task.train_metrics)
        self.previous = (0, 0.0, 0.0)  # samples, running loss mean, running accuracy mean of this fit epoch

    def on_train_batch_begin(self, batch, logs=None):
        if self.rng[1] == "batch":
            _set_global_rng_state(self.rng[0])
            self.rng = ({}, "")

    def on_train_end(self, logs=None):
        self.rng = (_global_rng_state(), "epoch")

    def on_train_batch_end(self, batch, logs=None):
        index = self.train_seq.start + batch
        step = self.train_seq.epoch * self.steps_per_epoch + index
        plan = self.train_seq.plan
        size = min(plan.batch_size, plan.num_samples - index * plan.batch_size)
        # Keras logs running means over the fit epoch, weighted by batch size: recover this step's values.
        seen, loss_mean, acc_mean = self.previous
        loss = float(logs["loss"])
        acc = float(_accuracy(logs)) if "acc" in self.task.train_metrics else 0.0
        value = (loss * (seen + size) - loss_mean * seen) / size
        correct = int(round(acc * (seen + size) - acc_mean * seen)) if "acc" in self.task.train_metrics else None
        self.previous = (seen + size, loss, acc)
        lr = float(self.rates[step])
        self.meter.add(value, correct, size, lr)
        logs["img/s"] = self.meter.running()["img_s"]  # shown by the progress bar
        recipe, total = self.recipe, len(self.rates)
        if due(recipe.log_every, step):
            self.log(step_line(step, total, value, lr))
            self.scalars.step(step, loss=value, lr=lr)
        if due(recipe.val_every, step):
            self.model  # noqa: B018 -- syncs the weights into the variables (jax)
            with self.meter.paused():
                val = evaluate(self.base, self.val_plan, recipe.workers, self.task)
            record_eval(self.history, step, self.train_seq.epoch, val)
            self.run.write_history(self.history)
            self.scalars.step(step, score=(self.task.step_tag, val[self.task.score]))
            self.log(f"[{step} / {total}] val {scores_text(val)}")
        if recipe.checkpoint_every and (step + 1) % recipe.checkpoint_every == 0 and index + 1 < self.steps_per_epoch:
            with self.meter.paused():
                self.checkpoint(Position(self.train_seq.epoch, index + 1, step + 1, self.meter.state()))

    def on_epoch_end(self, epoch, logs=None):
        train = self.meter.result()
        val = evaluate(self.base, self.val_plan, self.recipe.workers, self.task)
        record = epoch_record(epoch, float(self.rates[epoch * self.steps_per_epoch]), train, val)
        if record_epoch(self.history, record):
            self.best = snapshot(self.base)
            checkpoints.write(self.run.best_path, torch_state_dict(self.base))
        self.log(epoch_line(record, self.recipe.epochs, self.history))
        self.run.write_history(self.history)
        self.scalars.epoch(record)
        self.checkpoint(Position(epoch + 1, 0, (epoch + 1) * self.steps_per_epoch))
        if self.stop_after == epoch:
            self.model.stop_training = True

    def checkpoint(self, at: Position):
        model = self.model
        arrays = {f"model/{i}": keras.ops.convert_to_numpy(v) for i, v in enumerate(model.variables)}
        arrays.update({f"optimizer/{i}": keras.ops.convert_to_numpy(v)
                       for i, v in enumerate(model.optimizer.variables)})
        arrays.update(_global_rng_state())

        def save(tmp):
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)

        self.scalars.flush()
        self.run.save_resume(at, lambda folder: checkpoints.write_atomic(folder / RESUME_FILE, save),
                             {"framework": "keras", "backend": keras.backend.backend(),
                              "replicas": self.recipe.replicas})

    def restore_best(self):
        for variable, value in zip(self.base.weights, self.best):
            variable.assign(value)


def _accuracy(logs):
    return next(v for k, v in logs.items() if k.endswith("accuracy") and not k.startswith("val_"))


def _global_rng_state() -> dict:
    """On the torch backend, an unseeded Keras dropout draws from torch's global generator (`F.dropout`), which
    no Keras variable holds (on tensorflow and jax the masks come from the layers' seed-generator variables): a
    resume point keeps its state, and the CUDA generators' where there are any, as the torch twin's does."""
    if keras.backend.backend() != "torch":
        return {}
    import torch

    state = {"torch_rng": torch.get_rng_state().numpy()}
    if torch.cuda.is_available():
        state.update({f"torch_cuda_rng/{i}": s.numpy() for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return state


def _load_resume(model: keras.Model, path) -> dict:
    """Restores the weights and the optimiser's state; returns the global generators' state (`_global_rng_state`),
    for the first step to start from."""
    with np.load(path) as saved:
        count = sum(1 for k in saved.files if k.startswith("model/"))
        if count != len(model.variables):
            raise ValueError(f"{path} holds {count} model variables, this model has {len(model.variables)}")
        for i, variable in enumerate(model.variables):
            variable.assign(saved[f"model/{i}"])
        model.optimizer.build(model.trainable_variables)
        for i, variable in enumerate(model.optimizer.variables):
            variable.assign(saved[f"optimizer/{i}"])
        return {k: saved[k] for k in saved.files if k.startswith("torch_")}


def _set_global_rng_state(state: dict) -> None:
    if keras.backend.backend() != "torch" or "torch_rng" not in state:
        return
    import torch

    torch.set_rng_state(torch.from_numpy(state["torch_rng"]))
    cuda = sorted((k for k in state if k.startswith("torch_cuda_rng/")), key=lambda k: int(k.split("/")[1]))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.from_numpy(state[k]) for k in cuda])


def train_model(model: keras.Model, train_plan: BatchPlan, val_plan: BatchPlan, recipe: Recipe, run: RunDir,
                *, resume: bool = False, log=print) -> dict:
    """Run the recipe; returns the history (also in `run`). The model ends with the best weights.

    Data-parallel (`recipe.replicas` devices) when the twin was built under `distributed.data_parallel`: `fit`
    shards each global batch over the devices, the rest of the recipe is unchanged."""
    set_weight_decay(model, recipe.weight_decay)
    task = task_of(recipe)
    # The contrastive model trains through its projection output alone (NT-Xent of the interleaved view pairs).
    view = training.training_view(model, recipe.aux_heads) if task.name != "contrastive" else \
        keras.Model(model.inputs, model.outputs[1], name=f"{model.name}_projection")
    outputs = len(view.outputs)
    steps_per_epoch = len(train_plan)
    rates = optim.learning_rates(recipe.lr, recipe.lr_end, recipe.epochs * steps_per_epoch, recipe.schedule)
    if task.name == "saliency":  # the recipe's nn.MSELoss(): the mean over every pixel of the batch
        loss, accuracy = keras.losses.MeanSquaredError(), []
    elif task.name == "contrastive":  # a loss on the projection batch, no backend-specific train_step
        loss, accuracy = NTXent(recipe.temperature), []
    elif task.name == "segmentation":  # the torch twin's ignore-label rule, all-ignored batch included
        loss, accuracy = SegmentationCrossEntropy(), []
    else:
        loss, accuracy = keras.losses.SparseCategoricalCrossentropy(from_logits=True), ["accuracy"]
    view.compile(
        optimizer=make_optimizer(rates, recipe),
        loss=[loss] * outputs if outputs > 1 else loss,
        loss_weights=[1.0] + [recipe.aux_weight] * (outputs - 1) if outputs > 1 else None,
        metrics=[accuracy] + [[] for _ in range(outputs - 1)] if outputs > 1 else accuracy,
        jit_compile="auto",
    )
    if keras.backend.backend() == "tensorflow":
        # The optimiser's slots made now, eagerly: left to `fit`, tensorflow creates them inside the first traced
        # step, as lifted initialisers (pspnet's Keras run, 17 px: 72 s -> 62 s, the same losses).
        view.optimizer.build(view.trainable_variables)
    keras.utils.set_random_seed(recipe.seed)
    history = new_history(recipe)
    state = run.resume_state() if resume else None
    position = Position.start(state)
    rng = {}
    if state is not None:
        rng = _load_resume(view, state["dir"] / RESUME_FILE)
        history = run.history_at(state, recipe)
        log(f"resuming {position.describe(recipe, steps_per_epoch)} from {state['dir']}")
    scalars = Scalars(run, purge_step=position.epoch, purge_iteration=position.step)
    train_seq = PlanSequence(train_plan, recipe.workers, outputs, start=position.batch)
    callback = RecipeCallback(model, train_seq, val_plan, recipe, run, history, scalars, rates, position, log,
                              resume_rng=rng)
    if state is not None and run.best_path.is_file():
        current = snapshot(model)
        load_torch_state_dict(model, checkpoints.read(run.best_path), strict=True)
        callback.best = snapshot(model)
        for variable, value in zip(model.weights, current):
            variable.assign(value)
    # A progress bar on a terminal, one line per epoch in a log file (tqdm's `disable=None` on the torch
    # side). Our ProgbarLogger goes first so the bar is finished before the epoch line.
    verbose = 1 if sys.stdout.isatty() else 2
    try:
        epoch = position.epoch
        if position.batch and epoch < recipe.epochs:
            # The rest of a half-done epoch: a fit of its own over the remaining batches, stopped after it.
            callback.stop_after = epoch
            view.fit(train_seq, epochs=recipe.epochs, initial_epoch=epoch, verbose=verbose, shuffle=False,
                     callbacks=[keras.callbacks.ProgbarLogger(), callback])
            train_seq.start, epoch = 0, epoch + 1
        if epoch < recipe.epochs:
            view.fit(train_seq, epochs=recipe.epochs, initial_epoch=epoch, verbose=verbose, shuffle=False,
                     callbacks=[keras.callbacks.ProgbarLogger(), callback])
    finally:
        scalars.close()
    callback.restore_best()
    log(best_line(history, run))
    return history
