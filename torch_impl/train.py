"""The training recipes (seed 001's `train_model`, seed 002's iteration loop, seed 000's saliency loop) as
an explicit torch loop. Twin of `keras_impl/train.py`.

Per epoch a train phase and a val phase; running loss and accuracy per phase; the weights with the best
val accuracy are kept and restored at the end; the history is returned and written to the run
directory (`twins.runs`), with a resume state after every epoch. Per step, what `Recipe` asks for: the
rate of `twins.optim.learning_rates` (constant, or seed 002's linear decay), the L2 term on the conv
kernels in the loss, a loss line every `log_every` steps, a val evaluation every `val_every` and a
resume checkpoint every `checkpoint_every`. Batches come from a
`twins.data.BatchPlan` through a `Dataset`/`DataLoader` (workers load whole batches; the adapter
transposes NHWC to NCHW). Inception's training loss is CE(logits) + 0.4 * CE(aux) through
`torch_impl.training.cross_entropy`; val loss and accuracy are computed from the logits by
`twins.metrics`, the same function the Keras twin uses. The model's task (`twins.tasks`) decides the loss
(cross-entropy; MSE for the saliency map) and what a val phase scores (accuracy; CC, KLD, SIM), the recipe
the optimiser (SGD with momentum; torch's Adam for the saliency seed, with `zero_grad` every step, which
the seed's loop forgets).
"""
from __future__ import annotations

import copy
import sys
import time

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from twins import checkpoints, optim, tasks
from twins.data import BatchPlan
from twins.distributed import World
from twins.runs import (EpochMeter, NoScalars, Position, Recipe, RunDir, Scalars, best_line, due, epoch_line,
                        epoch_record, natural_order, new_history, record_epoch, record_eval, scores_text, step_line,
                        task_of)

from . import distributed, training

RESUME_FILE = "torch_state.pt"


def to_tensors(samples) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples stacked as `BatchPlan.collate` stacks them, images (and target maps) transposed to NCHW."""
    x, y = BatchPlan.collate(samples)
    if y.ndim == 4:  # target maps (SALICON), NHWC like the images
        y = np.ascontiguousarray(y.transpose(0, 3, 1, 2))
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))), torch.from_numpy(y)


def val_batches(plan, task: tasks.Task, workers: int):
    """What `evaluate` reads: a DataLoader over a val plan, or the kNN monitor's `tasks.KnnPlans` as they are
    (the contrastive task's monitor iterates its two plans itself)."""
    return plan if task.name == "contrastive" else loader(plan, workers)


def loader(plan: BatchPlan, workers: int, epoch: int = 0, start: int = 0,
           world: World = World()) -> torch.utils.data.DataLoader:
    """Epoch `epoch` of `plan` from batch `start` on, as this replica's share of every batch (all of it in a
    single process): a `distributed.PlanSampler` reseeded for the epoch (`set_epoch`) picks the positions."""
    sampler = distributed.PlanSampler(plan, world.size, world.rank, start)
    sampler.set_epoch(epoch)
    # A generator of its own: creating a DataLoader iterator draws a seed from the generator it is given,
    # and the global one is the dropout masks' (a resumed run must draw the same masks).
    return torch.utils.data.DataLoader(distributed.PlanSamples(plan), batch_size=plan.batch_size // world.size,
                                       sampler=sampler, collate_fn=to_tensors, num_workers=workers,
                                       drop_last=plan.drop_last, generator=torch.Generator().manual_seed(0))


def set_feature_extract(model: nn.Module, heads, feature_extract: bool) -> list[str]:
    """The seed's `set_parameter_requires_grad`: with `feature_extract`, every parameter outside the
    classifier heads (torch module paths) is frozen; without it, what trains is what the builder left
    trainable (everything, but for the saliency U-Net's `frozen` modules). Returns the names of the
    parameters that train (`twins.runs.natural_order`).
    Twin of `keras_impl.train.set_feature_extract`."""
    if feature_extract:
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(any(name == h or name.startswith(h + ".") for h in heads))
    return natural_order(name for name, p in model.named_parameters() if p.requires_grad)


def set_weight_decay(model: nn.Module, weight_decay: float) -> list[str]:
    """The parameters the recipe's L2 term decays (`twins.optim.l2_keys`: every conv kernel that
    trains), as names. Twin of `keras_impl.train.set_weight_decay`."""
    if not weight_decay:
        return []
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters() if p.requires_grad}
    return natural_order(optim.l2_keys(shapes))


def tqdm_print(message: str) -> None:
    """print() that does not tear a progress bar in two."""
    tqdm.write(message, file=sys.stdout)


def to_nhwc(array: np.ndarray) -> np.ndarray:
    """A model output or target as `twins.tasks` scores it: maps channels-last, logits as they are."""
    return np.ascontiguousarray(array.transpose(0, 2, 3, 1)) if array.ndim == 4 else array


def evaluate(model, batches, device, desc, task: tasks.Task) -> dict:
    """The val phase: eval-mode outputs scored by the task (`twins.tasks`: loss and acc, or loss, cc, kld and
    sim), as the Keras twin scores its own; plus samples and seconds. The contrastive task's `batches` are the
    kNN monitor's plans (`twins.tasks.KnnPlans`), scored on the encoder's features (the first output)."""
    model.eval()
    if task.name == "contrastive":
        return knn_evaluate(model, batches, device, desc)
    tally = task.tally()
    start = time.perf_counter()
    dtype = next(model.parameters()).dtype  # float64 for the recipe-parity test
    bar = tqdm(batches, desc=desc, unit="batch", leave=False, file=sys.stdout, dynamic_ncols=True, disable=None)
    with torch.no_grad():
        for x, y in bar:
            tally.add(to_nhwc(model(x.to(device, dtype)).cpu().numpy()), to_nhwc(y.numpy()))
            bar.set_postfix_str(scores_text(tally.result()))
    bar.close()
    return {**tally.result(), "seconds": time.perf_counter() - start}


def knn_evaluate(model, plans: tasks.KnnPlans, device, desc) -> dict:
    """`twins.tasks.knn_monitor` on the eval-mode encoder features `model(x)[0]`. Twin of
    `keras_impl.train.knn_evaluate`."""
    dtype = next(model.parameters()).dtype
    bar = tqdm(total=len(plans.memory) + len(plans.query), desc=desc, unit="batch", leave=False, file=sys.stdout,
               dynamic_ncols=True, disable=None)

    def features(x: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(device, dtype)
        with torch.no_grad():
            return model(batch)[0].cpu().numpy()

    result = tasks.knn_monitor(features, plans, progress=bar.update)
    bar.close()
    return result


def make_optimizer(parameters, recipe: Recipe) -> torch.optim.Optimizer:
    """The recipe's optimiser: SGD with momentum (seeds 001, 002) or Adam (seed 000). Twin of
    `keras_impl.train.make_optimizer`."""
    if recipe.optimizer == "adam":
        return training.adam(parameters, recipe.lr, recipe.betas)
    return training.sgd(parameters, recipe.lr, recipe.momentum)


def train_model(model: nn.Module, train_plan: BatchPlan, val_plan: BatchPlan, recipe: Recipe, run: RunDir,
                *, resume: bool = False, log=tqdm_print, world: World = World()) -> dict:
    """Run the recipe; returns the history (also in `run`). The model ends with the best weights.

    Under torchrun (`world.distributed`, the process group joined by `distributed.start`) every rank runs
    this: the model in DDP (with `recipe.sync_bn`, its BatchNorms synchronised first), each rank loading
    `recipe.batch_size / world.size` rows of every batch. Rank 0 alone evaluates (on the unwrapped model, so
    no collective waits on the others), logs and writes; the others wait for it at their next step. Only rank 0
    ends with the best weights and returns the history; the others keep their starting weights and history."""
    main = world.main
    device = distributed.device_of(world)
    model.to(device)
    if recipe.sync_bn:
        model = distributed.sync_batchnorm(model, device)
    if not main:
        log = lambda message: None  # noqa: E731
    task = task_of(recipe)
    trainable = [p for p in model.parameters() if p.requires_grad]
    # The trainable parameters only, as the seed's `Adam(train_params)`.
    optimizer = make_optimizer(trainable, recipe)
    parameters = dict(model.named_parameters())
    decayed = [parameters[name] for name in set_weight_decay(model, recipe.weight_decay)]
    task_loss = training.loss_for(task.name, recipe.aux_weight, recipe.temperature)

    def loss_fn(outputs, labels):
        loss = task_loss(outputs, labels)
        return loss + optim.l2_penalty(decayed, recipe.weight_decay) if decayed else loss

    steps_per_epoch = len(train_plan)
    total = recipe.epochs * steps_per_epoch
    rates = optim.learning_rates(recipe.lr, recipe.lr_end, total, recipe.schedule)
    # Each replica draws its own dropout masks, as one process over the global batch draws different ones per row.
    torch.manual_seed(recipe.seed + world.rank)
    history = new_history(recipe)
    best = copy.deepcopy(model.state_dict())
    state = run.resume_state() if resume else None
    position = Position.start(state)
    if state is not None:
        saved = torch.load(state["dir"] / RESUME_FILE, map_location=device, weights_only=True)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        rng = saved["rank_rng"] if "rank_rng" in saved else [saved["rng"]]  # "rng": written before the ranks' list
        if len(rng) == world.size:  # the same number of replicas: each continues its own masks
            torch.set_rng_state(rng[world.rank].cpu())  # map_location moved it to the device
            if saved.get("rank_cuda_rng") and device.type == "cuda":
                torch.cuda.set_rng_state(saved["rank_cuda_rng"][world.rank].cpu(), device)
        if "cuda_rng" in saved and torch.cuda.is_available() and not world.distributed:
            torch.cuda.set_rng_state_all([state.cpu() for state in saved["cuda_rng"]])
        history = run.history_at(state, recipe)
        if run.best_path.is_file():
            best = {k: torch.from_numpy(v) for k, v in checkpoints.read(run.best_path).items()}
        log(f"resuming {position.describe(recipe, steps_per_epoch)} from {state['dir']}")
    scalars = Scalars(run, purge_step=position.epoch, purge_iteration=position.step) if main else NoScalars()
    val_data = val_batches(val_plan, task, recipe.workers)
    replica = distributed.data_parallel(model, device)

    def checkpoint(at: Position):
        # Every rank's generator (a collective: every rank checkpoints at the same step); rank 0 writes.
        rank_rng = distributed.gather(torch.get_rng_state())
        rank_cuda_rng = distributed.gather(torch.cuda.get_rng_state(device)) if device.type == "cuda" else None

        def write_resume(folder):
            payload = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                       "rank_rng": rank_rng, "rank_cuda_rng": rank_cuda_rng}
            # Dropout masks on a GPU come from its own generators (one process's: a single-process run's).
            if torch.cuda.is_available() and not world.distributed:
                payload["cuda_rng"] = torch.cuda.get_rng_state_all()
            checkpoints.write_atomic(folder / RESUME_FILE, lambda tmp: torch.save(payload, tmp))

        if main:
            scalars.flush()
            run.save_resume(at, write_resume, {"framework": "torch", "replicas": world.size})

    try:
        for epoch in range(position.epoch, recipe.epochs):
            resumed = epoch == position.epoch
            first = position.batch if resumed else 0
            meter = EpochMeter(position.meter if resumed else None, task.train_metrics)
            desc = f"epoch {epoch + 1}/{recipe.epochs} train"
            bar = tqdm(loader(train_plan, recipe.workers, epoch, first, world), desc=desc, unit="batch",
                       file=sys.stdout, dynamic_ncols=True, disable=None if main else True, initial=first,
                       total=steps_per_epoch)
            replica.train()
            for index, (x, y) in enumerate(bar, start=first):
                step = epoch * steps_per_epoch + index
                lr = float(rates[step])
                for group in optimizer.param_groups:
                    group["lr"] = lr
                dtype = next(model.parameters()).dtype
                x, y = x.to(device, dtype), y.to(device, dtype) if y.is_floating_point() else y.to(device)
                optimizer.zero_grad(set_to_none=True)
                outputs = replica(x)
                loss = loss_fn(outputs, y)
                loss.backward()
                optimizer.step()
                logits = outputs[0] if isinstance(outputs, (tuple, list)) else outputs
                correct = int((logits.detach().argmax(1) == y).sum()) if "acc" in task.train_metrics else None
                value, correct, size = distributed.global_step_values(float(loss.detach()), correct, len(y))
                meter.add(value, correct, size, lr)
                running = meter.running()
                bar.set_postfix({k: f"{v:.4f}" if k != "img_s" else f"{v:.1f}" for k, v in running.items()})
                if due(recipe.log_every, step):
                    log(step_line(step, total, value, lr))
                    scalars.step(step, loss=value, lr=lr)
                if due(recipe.val_every, step) and main:
                    with meter.paused():
                        val = evaluate(model, val_data, device, f"step {step} val", task)
                    record_eval(history, step, epoch, val)
                    run.write_history(history)
                    scalars.step(step, score=(task.step_tag, val[task.score]))
                    log(f"[{step} / {total}] val {scores_text(val)}")
                    replica.train()
                if recipe.checkpoint_every and (step + 1) % recipe.checkpoint_every == 0 \
                        and index + 1 < steps_per_epoch:
                    with meter.paused():
                        checkpoint(Position(epoch, index + 1, step + 1, meter.state()))
            bar.close()
            if main:
                train = meter.result()
                val = evaluate(model, val_data, device, f"epoch {epoch + 1}/{recipe.epochs} val", task)
                record = epoch_record(epoch, float(rates[epoch * steps_per_epoch]), train, val)
                if record_epoch(history, record):
                    best = copy.deepcopy(model.state_dict())
                    checkpoints.write(run.best_path, {k: v.detach().cpu().numpy() for k, v in best.items()})
                log(epoch_line(record, recipe.epochs, history))
                run.write_history(history)
                scalars.epoch(record)
            checkpoint(Position(epoch + 1, 0, (epoch + 1) * steps_per_epoch))
    finally:
        scalars.close()
    distributed.barrier()  # the others finish once rank 0 has written the last epoch
    model.load_state_dict(best)
    if main:
        log(best_line(history, run))
    return history


def score(model: nn.Module, plan: BatchPlan, task: tasks.Task, workers: int = 0) -> dict:
    """A checkpoint's val scores on `plan` (`twins evaluate`); the model is on its device already."""
    return evaluate(model, val_batches(plan, task, workers), next(model.parameters()).device, "evaluate", task)


def predict_logits(model: nn.Module, plan: BatchPlan) -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode logits and labels of every sample of `plan` (epoch 0, in order)."""
    device = next(model.parameters()).device
    model.eval()
    outs, labels = [], []
    dtype = next(model.parameters()).dtype
    with torch.no_grad():
        for x, y in loader(plan, 0):
            outs.append(model(x.to(device, dtype)).cpu().numpy())
            labels.append(y.numpy())
    return np.concatenate(outs), np.concatenate(labels)
