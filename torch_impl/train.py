"""The fine-tuning recipe (the seed's `train_model`) as an explicit torch loop. Twin of
`keras_impl/train.py`.

Per epoch a train phase and a val phase; running loss and accuracy per phase; the weights with the best
val accuracy are kept and restored at the end; the history is returned and written to the run
directory (`twins.runs`), with a resume state after every epoch. Batches come from a
`twins.data.BatchPlan` through a `Dataset`/`DataLoader` (workers load whole batches; the adapter
transposes NHWC to NCHW). Inception's training loss is CE(logits) + 0.4 * CE(aux) through
`torch_impl.training.cross_entropy`; val loss and accuracy are computed from the logits by
`twins.metrics`, the same function the Keras twin uses.
"""
from __future__ import annotations

import copy
import functools
import sys
import time

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from twins import checkpoints, metrics
from twins.data import BatchPlan
from twins.runs import Recipe, RunDir, Scalars, epoch_record, natural_order, new_history, record_epoch

from . import training

RESUME_FILE = "torch_state.pt"


class PlanDataset(torch.utils.data.Dataset):
    """Batch `i` of a `BatchPlan` for the epoch in `self.epoch`, as NCHW tensors. Each DataLoader
    iterator copies the dataset into its workers, so setting `epoch` before iterating is enough."""

    def __init__(self, plan: BatchPlan):
        self.plan, self.epoch = plan, 0

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, index: int):
        x, y = self.plan.batch(self.epoch, index)
        return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))), torch.from_numpy(y)


def loader(plan: BatchPlan, workers: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(PlanDataset(plan), batch_size=None, shuffle=False, num_workers=workers)


def set_feature_extract(model: nn.Module, heads, feature_extract: bool) -> list[str]:
    """The seed's `set_parameter_requires_grad`: with `feature_extract`, every parameter outside the
    classifier heads (torch module paths) is frozen. Returns the names of the parameters that train
    (`twins.runs.natural_order`).
    Twin of `keras_impl.train.set_feature_extract`."""
    for name, parameter in model.named_parameters():
        in_head = any(name == h or name.startswith(h + ".") for h in heads)
        parameter.requires_grad_(in_head or not feature_extract)
    return natural_order(name for name, p in model.named_parameters() if p.requires_grad)


def _phase(model, batches, device, *, train, optimizer, loss_fn, desc, position):
    """One pass over `batches`: returns loss, acc, samples, seconds (and the per-step losses)."""
    model.train(train)
    total_loss, total_correct, seen, step_losses = 0.0, 0, 0, []
    start = time.perf_counter()
    # disable=None: a bar on a terminal, none in a log file (the epoch summary line is printed either way)
    bar = tqdm(batches, desc=desc, unit="batch", leave=True, file=sys.stdout, dynamic_ncols=True, position=position,
               disable=None)
    dtype = next(model.parameters()).dtype  # float64 for the recipe-parity test
    with torch.set_grad_enabled(train):
        for x, y in bar:
            x, y = x.to(device, dtype), y.to(device)
            if train:
                optimizer.zero_grad(set_to_none=True)
                outputs = model(x)
                loss = loss_fn(outputs, y)
                loss.backward()
                optimizer.step()
                logits = outputs[0] if isinstance(outputs, (tuple, list)) else outputs
                value = float(loss.detach())
                step_losses.append(value)
                hits = int((logits.detach().argmax(1) == y).sum())
            else:
                logits = model(x).detach().cpu().numpy()
                labels = y.cpu().numpy()
                value, hits = metrics.cross_entropy(logits, labels), metrics.correct(logits, labels)
            total_loss += value * len(y)
            total_correct += hits
            seen += len(y)
            elapsed = time.perf_counter() - start
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{total_correct / seen:.4f}",
                            img_s=f"{seen / elapsed:.1f}" if elapsed > 0 else "-")
    bar.close()
    result = {"loss": total_loss / seen, "acc": total_correct / seen, "samples": seen,
              "seconds": time.perf_counter() - start}
    if train:
        result["step_losses"] = step_losses
    return result


def train_model(model: nn.Module, train_plan: BatchPlan, val_plan: BatchPlan, recipe: Recipe, run: RunDir,
                *, resume: bool = False, log=print) -> dict:
    """Run the recipe; returns the history (also in `run`). The model ends with the best weights."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = training.sgd(trainable, recipe.lr, recipe.momentum)
    loss_fn = functools.partial(training.cross_entropy, aux_weight=recipe.aux_weight)
    torch.manual_seed(recipe.seed)
    history, start = new_history(recipe), 0
    best = copy.deepcopy(model.state_dict())
    state = run.resume_state() if resume else None
    if state is not None:
        saved = torch.load(state["dir"] / RESUME_FILE, map_location=device, weights_only=True)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["rng"])
        history, start = run.history(), state["epoch"] + 1
        if run.best_path.is_file():
            best = {k: torch.from_numpy(v) for k, v in checkpoints.read(run.best_path).items()}
        log(f"resuming after epoch {state['epoch'] + 1}/{recipe.epochs} from {state['dir']}")
    scalars = Scalars(run, purge_step=start)
    train_data, val_data = loader(train_plan, recipe.workers), loader(val_plan, recipe.workers)
    try:
        for epoch in range(start, recipe.epochs):
            train_data.dataset.epoch = epoch
            train = _phase(model, train_data, device, train=True, optimizer=optimizer, loss_fn=loss_fn,
                           desc=f"epoch {epoch + 1}/{recipe.epochs} train", position=0)
            val = _phase(model, val_data, device, train=False, optimizer=None, loss_fn=None,
                         desc=f"epoch {epoch + 1}/{recipe.epochs} val", position=0)
            record = epoch_record(epoch, recipe.lr, train, val)
            if record_epoch(history, record):
                best = copy.deepcopy(model.state_dict())
                checkpoints.write(run.best_path, {k: v.detach().cpu().numpy() for k, v in best.items()})
            log(f"epoch {epoch + 1}/{recipe.epochs}: train loss {train['loss']:.4f} acc {train['acc']:.4f} "
                f"({train['samples_per_sec']:.1f} img/s) | "
                f"val loss {val['loss']:.4f} acc {val['acc']:.4f}"
                + (" (best)" if history["best_epoch"] == epoch else ""))
            run.write_history(history)
            scalars.epoch(record)

            def write_resume(folder, model=model, optimizer=optimizer):
                payload = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                           "rng": torch.get_rng_state()}
                checkpoints.write_atomic(folder / RESUME_FILE, lambda tmp: torch.save(payload, tmp))

            run.save_resume(epoch, write_resume, {"framework": "torch"})
    finally:
        scalars.close()
    model.load_state_dict(best)
    log(f"best val acc {history['best_val_acc']:.4f} at epoch {history['best_epoch'] + 1}; "
        f"weights in {run.best_path}")
    return history


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
