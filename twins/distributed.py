"""Data-parallel training, framework-free: which replica this process is, and how a global batch splits.

`twins train --batch-size G` is the global batch (what one optimiser step sees) on any number of replicas, so
the recipe (rate, steps per epoch, schedule) does not change with them: each of R replicas takes G / R rows of
every batch. The torch twin runs one process per replica under torchrun (`torch_impl.distributed`: DDP,
DistributedSampler); the Keras twin one process over R devices on jax (`keras_impl.distributed`: Keras'
DataParallel). Either way the replicas of step i hold, together, exactly the rows of batch i of a
single-process run with batch G (`twins.data.BatchPlan`), so both frameworks and any replica count see the
same pixels in the same steps; what differs is where BatchNorm takes its statistics (docs/scaling-out.md).
"""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class World:
    """This process's place among the data-parallel processes: torchrun's `RANK`, `WORLD_SIZE` and
    `LOCAL_RANK` (rank 0 of 1 outside torchrun). Rank 0 alone writes the run directory."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "World":
        def number(name: str, default: int) -> int:
            text = os.environ.get(name)
            if text is None:
                return default
            try:
                return int(text)
            except ValueError:
                raise ValueError(f"${name} must be an integer (torchrun sets it), got {text!r}") from None

        world = cls(number("RANK", 0), number("WORLD_SIZE", 1), number("LOCAL_RANK", 0))
        if world.size < 1 or not 0 <= world.rank < world.size:
            raise ValueError(f"$RANK {world.rank} is not a rank of $WORLD_SIZE {world.size}")
        return world

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def split_problem(batch_size: int, replicas: int, samples: int, drop_last: bool) -> str | None:
    """Why `samples` in global batches of `batch_size` cannot split evenly over `replicas`, or None. Every batch,
    the last one of an epoch included, must give each replica as many rows (Keras' sharding refuses anything
    else; torch's DistributedSampler would pad with repeated samples, which a single-process run never sees)."""
    if replicas < 1:
        return f"the number of replicas must be at least 1, got {replicas}"
    if batch_size % replicas:
        return (f"--batch-size {batch_size} (the global batch) does not split over {replicas} replicas; give a "
                f"multiple of {replicas}")
    last = samples % batch_size
    if not drop_last and last % replicas:
        return (f"{samples} train images in batches of {batch_size} leave a last batch of {last}, which does not "
                f"split over {replicas} replicas; add --drop-last or choose another --batch-size")
    return None
