"""Data parallelism on Keras' own engine: `keras.distribution.DataParallel` over the devices of one process
(Keras 3.15 distributes on the jax backend only). Twin of `torch_impl/distributed.py`.

`twins train --devices R` sets the distribution before the twin is built: its variables are replicated on R
devices and `fit` shards every batch along its first axis into R equal parts (`twins.distributed.split_problem`).
jax computes the model on the global (sharded) array, so BatchNorm's statistics and every mean in the loss are
over the global batch: what the torch twin gets with `--sync-bn`, here by construction.
"""
from __future__ import annotations

import os

import keras

# Keras' own multi-process launch (`keras.distribution.initialize`, i.e. jax.distributed.initialize) reads these.
MULTI_PROCESS_ENV = ("KERAS_DISTRIBUTION_NUM_PROCESSES", "KERAS_DISTRIBUTION_JOB_ADDRESSES")


def devices_problem(devices: int) -> str | None:
    """Why this process cannot train data-parallel on `devices` devices, or None."""
    if devices < 1:
        return f"--devices must be at least 1, got {devices}"
    backend = keras.backend.backend()
    if devices > 1 and backend != "jax":
        return (f"Keras {keras.__version__} trains data-parallel on the jax backend only (keras.distribution); this "
                f"run is on {backend}: add --backend jax, or train the torch twin under torchrun "
                "(--framework torch)")
    processes = os.environ.get(MULTI_PROCESS_ENV[0])
    if processes not in (None, "", "1"):
        return (f"${MULTI_PROCESS_ENV[0]}={processes}: twins train runs Keras data-parallel within one process "
                "(--devices); a run over several processes or machines is not supported (README \"Scaling out\")")
    if devices == 1:
        return None
    found = keras.distribution.list_devices()
    if devices > len(found):
        return (f"--devices {devices}: jax sees {len(found)} device{'s' if len(found) != 1 else ''} "
                f"({', '.join(found)}); on a CPU, JAX_NUM_CPU_DEVICES={devices} (set before jax starts) splits it "
                "into that many, for testing")
    return None


def data_parallel(devices: int) -> keras.distribution.DataParallel | None:
    """Keras' DataParallel over the first `devices` devices, set for everything built after it (None for one
    device: no distribution). Raises ValueError with `devices_problem`'s reason."""
    problem = devices_problem(devices)
    if problem:
        raise ValueError(problem)
    if devices == 1:
        return None
    distribution = keras.distribution.DataParallel(devices=keras.distribution.list_devices()[:devices])
    keras.distribution.set_distribution(distribution)
    return distribution
