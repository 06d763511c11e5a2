"""Data parallelism on torch's own engines: torchrun's process group, DistributedDataParallel, a
DistributedSampler over a `twins.data.BatchPlan`, SyncBatchNorm. Twin of `keras_impl/distributed.py`.

`twins train` runs unchanged under `torchrun --nproc_per_node=R`: each process reads its place from the
environment (`twins.distributed.World`), joins the process group (gloo on CPU, nccl on GPU), wraps the twin
in DDP (which averages the gradients and broadcasts rank 0's BatchNorm buffers at every forward) and loads
its share of every global batch through `PlanSampler`. Rank 0 alone evaluates and writes.
"""
from __future__ import annotations

import datetime

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, DistributedSampler

from twins.data import BatchPlan
from twins.distributed import World


def device_of(world: World) -> torch.device:
    """This process's device: GPU `LOCAL_RANK` when CUDA is visible, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", world.local_rank if world.distributed else torch.cuda.current_device())
    return torch.device("cpu")


# How long a rank waits in a collective: the others wait for rank 0's val phase at their next step (torch's
# default is 10 minutes for nccl).
TIMEOUT = datetime.timedelta(minutes=60)


def start(world: World, device: torch.device | None = None) -> torch.device:
    """Join torchrun's process group (its `MASTER_ADDR`/`MASTER_PORT` rendezvous): nccl on GPUs, gloo on the
    CPU (or on the `device` given). Returns the device this rank trains on."""
    device = device or device_of(world)
    if world.distributed and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=world.rank, world_size=world.size,
                                timeout=TIMEOUT)
    return device


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (rank 0 has written what the others read next)."""
    if dist.is_initialized():
        dist.barrier()


def gather(value) -> list:
    """`value` of every rank, in rank order (any picklable object; `[value]` in a single process)."""
    if not dist.is_initialized():
        return [value]
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def global_step_values(loss: float, correct: int | None, size: int) -> tuple[float, int | None, int]:
    """A step's loss, correct count and batch size over the global batch: the mean of the replicas' losses (every
    replica holds as many rows, `twins.distributed.split_problem`, so for a mean over rows this is the global
    batch's; pspnet's mean over labelled pixels and NT-Xent are per-replica quantities, docs/scaling-out.md), the
    sum of the counts."""
    if not dist.is_initialized():
        return loss, correct, size
    values = torch.tensor([loss, float(correct or 0), float(size)], dtype=torch.float64)
    dist.all_reduce(values)
    replicas = dist.get_world_size()
    return float(values[0]) / replicas, None if correct is None else int(values[1]), int(values[2])


def data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` in DistributedDataParallel (one device per process); as it is outside a process group."""
    if not dist.is_initialized():
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


class AllReduceSum(torch.autograd.Function):
    """The sum over ranks, differentiable: every rank's input feeds every rank's output, so the backward sums
    the gradients over ranks too (what SyncBatchNorm's backward does with its statistics' gradients).
    `torch.distributed.nn.functional.all_reduce` is this, deprecated in torch 2.13 for a private module."""

    @staticmethod
    def forward(ctx, tensor):
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class CpuSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """`nn.SyncBatchNorm` for gloo on the CPU, where torch 2.13's own refuses to run ("SyncBatchNorm expected
    input tensor to be on GPU"): in training, the mean and variance of the global batch through `AllReduceSum`,
    in two passes (the mean, then the mean squared deviation from it); the running statistics take the
    unbiased variance, as torch's BatchNorm. Parameters and buffers are BatchNorm's, so checkpoints keep their
    keys. Outside training or a process group: BatchNorm."""

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"expected an (N, C, ...) input, got {input.dim()} dimensions")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor(float(x.numel() // x.shape[1]), dtype=torch.float64, device=x.device)
        dist.all_reduce(count)
        if count.item() < 2:  # torch's BatchNorm refuses it too: no variance to normalise with
            raise ValueError(f"Expected more than 1 value per channel when training, got {int(count.item())} over "
                             "every replica")
        count = count.to(x.dtype)
        mean = AllReduceSum.apply(x.sum(dims)) / count
        centred = x - mean.reshape(shape)
        var = AllReduceSum.apply((centred * centred).sum(dims)) / count
        y = centred * torch.rsqrt(var + self.eps).reshape(shape)
        if self.affine:
            y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - momentum).add_(momentum * mean.detach())
                self.running_var.mul_(1 - momentum).add_(momentum * var.detach() * count / (count - 1))
        return y


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """`--sync-bn`: every BatchNorm normalises with the statistics of the global batch. torch's
    `nn.SyncBatchNorm` on GPUs; `CpuSyncBatchNorm` on the CPU. The parameters and buffers are the same
    tensors (an optimiser built before still holds them; `state_dict` keys do not change)."""
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if isinstance(model, nn.modules.batchnorm._BatchNorm) and not isinstance(model, CpuSyncBatchNorm):
        synced = CpuSyncBatchNorm(model.num_features, model.eps, model.momentum, model.affine,
                                  model.track_running_stats)
        if model.affine:
            synced.weight, synced.bias = model.weight, model.bias
        if model.track_running_stats:
            synced.running_mean, synced.running_var = model.running_mean, model.running_var
            synced.num_batches_tracked = model.num_batches_tracked
        synced.train(model.training)
        return synced
    for name, child in model.named_children():
        model.add_module(name, sync_batchnorm(child, device))
    return model


class PlanSamples(Dataset):
    """The samples of a `BatchPlan` keyed `(epoch, position)` (`BatchPlan.sample`): a sampler picks the
    positions, the plan decides which image sits at each and how it is augmented."""

    def __init__(self, plan: BatchPlan):
        self.plan = plan

    def __len__(self) -> int:
        return self.plan.num_samples

    def __getitem__(self, key):
        epoch, position = key
        return self.plan.sample(epoch, position)


class PlanSampler(DistributedSampler):
    """torch's DistributedSampler over the positions of a plan's epoch: replica r of R takes positions r,
    r + R, r + 2R, ... (DistributedSampler's split, `drop_last` as the plan's), so that the replicas' batches
    of G / R rows at step i are, together, rows iG .. iG + G - 1: batch i of the plan at batch size G.
    `set_epoch(e)` moves to epoch e: its keys then index epoch e's permutation, drawn by the plan
    (`default_rng([seed, e])`) rather than by torch's `shuffle`, so every rank, a single-process run and the
    Keras twin agree on it. `start` skips the batches a resumed run has trained already."""

    def __init__(self, plan: BatchPlan, replicas: int = 1, rank: int = 0, start: int = 0):
        super().__init__(range(plan.num_samples), num_replicas=replicas, rank=rank, shuffle=False,
                         drop_last=plan.drop_last)
        self.skip = start * (plan.batch_size // replicas)

    def __iter__(self):
        positions = list(super().__iter__())[self.skip:]
        return iter([(self.epoch, position) for position in positions])

    def __len__(self) -> int:
        return self.num_samples - self.skip
