"""`twins dp-parity`: one data-parallel training step over R replicas of B rows against single-process steps.

    twins dp-parity resnet18 --framework torch --sync-bn     # torchrun, R gloo processes, SyncBatchNorm
    twins dp-parity resnet18 --framework torch               # per-replica BatchNorm: what differs, measured
    twins dp-parity resnet18 --framework keras               # Keras DataParallel over R jax devices

Each run takes one SGD-momentum step, in float64, on a batch of R x B random images, and compares the loss, the
gradients (torch), the update of every parameter and of every BatchNorm running statistic with:
- `global batch`: one single-process step of the same twin over all R x B rows. Expected equal for torch with
  --sync-bn and for Keras on jax (it computes on the sharded global batch); without --sync-bn torch's replicas
  normalise with their own statistics, so the rows are expected to differ and say by how much.
- `per replica` (torch without --sync-bn): what DDP computes then, built independently: the loss and gradient
  as the mean over replicas of single-process steps on each replica's rows alone, the update as one step with
  that gradient, and the running statistics as replica 0's rows alone give them (DDP broadcasts rank 0's buffers).
A row passes when its comparison comes out as expected: equal within the bound, or (expected to differ) over
it. `--tamper` feeds every replica after the first replica 0's rows (a sampler that forgets its rank), which must
fail.

The torch side runs under `torchrun --standalone --nproc_per_node=R` (gloo), the Keras side in one process with R
jax CPU devices (`JAX_NUM_CPU_DEVICES=R`, set before jax starts): a proof of the computation, on the CPU whatever
accelerators the machine has. Classifiers without aux heads only (the Keras side's loss is `fit`'s
cross-entropy).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from twins import checkpoints, registry
from twins.metrics import abs_err

# float64 steps of one twin against itself: the error is the rounding of the summation orders (all-reduce vs
# one batch); the worst measured on resnet18 is 9.7e-14 (torch, SyncBatchNorm, an update) and 8.5e-14 (Keras on
# jax), docs/parity/data-parallel.json. A replica fed the wrong rows is off by 1e-1 or more.
BOUND = 1e-10
LR, MOMENTUM = 0.1, 0.9
GLOBAL, PER_REPLICA = "global batch", "per replica"


def batch(rows: int, size: int, seed: int = 0):
    """`rows` random NCHW float64 images and labels of 3 classes (the twins are built with a 3-class head)."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((rows, 3, size, size)), rng.integers(0, 3, rows)


def row(check: str, against: str, err: float, key: str, expected: str) -> dict:
    within = err <= BOUND
    return {"check": check, "against": against, "error": err, "bound": BOUND, "expected": expected,
            "passed": within == (expected == "equal"), "detail": f"worst: {key}" if key else ""}


def comparisons(checks: dict, against: str, expected: str) -> list[dict]:
    """`checks`: check -> (error, worst key)."""
    return [row(check, against, err, key, expected) for check, (err, key) in checks.items()]


# ----------------------------------------------------------------------------------------------
# torch: a worker per rank under torchrun


def torch_worker(args) -> None:
    import torch

    from torch_impl import build, distributed, training
    from twins.distributed import World
    from twins_cli.parity import worst

    world = World.from_env()
    device = distributed.start(world, torch.device("cpu"))  # the float64 proof runs on the CPU (gloo), GPU or not
    torch.manual_seed(0)
    model = build(args.model, num_classes=3).to(torch.float64)
    reference = copy.deepcopy(model)
    x, y = batch(world.size * args.rows, args.img_size)
    shard = 0 if args.tamper else world.rank
    x_t, y_t = torch.from_numpy(x), torch.from_numpy(y)
    mine = slice(shard, None, world.size)  # DistributedSampler's split: rows r, r + R, ...
    loss_fn = training.loss_for(registry.get(args.model).task)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if args.sync_bn:
        model = distributed.sync_batchnorm(model, device)
    replica = distributed.data_parallel(model, device)
    optimizer = training.sgd(model.parameters(), LR, MOMENTUM)
    replica.train()
    loss = loss_fn(replica(x_t[mine]), y_t[mine])
    loss.backward()
    optimizer.step()
    losses = distributed.gather(float(loss.detach()))
    if not world.main:
        distributed.stop()
        return
    grads = {k: p.grad.numpy() for k, p in model.named_parameters()}
    params = [k for k, p in model.named_parameters()]
    stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
    after = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    update = {k: after[k] - before[k].numpy() for k in before}

    def step(rows):
        """A single-process step of `reference`'s copy over `rows`: (loss, grads, updates)."""
        twin = copy.deepcopy(reference)
        opt = training.sgd(twin.parameters(), LR, MOMENTUM)
        start = {k: v.detach().clone() for k, v in twin.state_dict().items()}
        value, grads = training.value_and_grad(twin, loss_fn, x_t[rows], y_t[rows])
        grads = {k: g.numpy().copy() for k, g in grads.items()}
        opt.step()
        return float(value), grads, {k: (v - start[k]).detach().numpy() for k, v in twin.state_dict().items()}

    def checks(ref_loss, ref_grads, ref_update):
        return {"loss": (abs_err(np.mean(losses), ref_loss), ""), "gradients": worst(grads, ref_grads, params),
                "step_params": worst(update, ref_update, params), "step_bn_stats": worst(update, ref_update, stats)}

    rows = comparisons(checks(*step(slice(None))), GLOBAL, "equal" if args.sync_bn else "differs")
    if not args.sync_bn:
        shards = [step(slice(r, None, world.size)) for r in range(world.size)]
        mean_grads = {k: np.mean([s[1][k] for s in shards], axis=0) for k in params}
        # One step with the mean gradient: SGD's first step is `-lr * grad` (the momentum buffer starts at it).
        mean_update = {**shards[0][2], **{k: -LR * g for k, g in mean_grads.items()}}
        rows += comparisons(checks(float(np.mean([s[0] for s in shards])), mean_grads, mean_update), PER_REPLICA,
                            "equal")
    engine = f"DistributedDataParallel ({'nccl' if device.type == 'cuda' else 'gloo'})"
    write_result(args.out, args, world.size, engine, rows)
    distributed.stop()


# ----------------------------------------------------------------------------------------------
# Keras: one process over R devices (jax)


def keras_worker(args) -> None:
    import keras

    from keras_impl import build, distributed, training
    from keras_impl.weights import torch_state_dict
    from twins_cli.parity import keras_dtype, worst

    replicas = args.replicas
    with keras_dtype("float64"):
        problem = distributed.devices_problem(replicas)
        if problem:
            raise SystemExit(problem)
        x, y = batch(replicas * args.rows, args.img_size)
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        fed = x.copy()
        if args.tamper:  # every device's rows (Keras shards contiguous blocks) are device 0's
            fed = np.concatenate([x[:args.rows]] * replicas)

        def step(model, images):
            model.compile(optimizer=training.sgd(LR, MOMENTUM),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            start = torch_state_dict(model)
            loss = float(model.train_on_batch(images, y))
            return loss, {k: v - start[k] for k, v in torch_state_dict(model).items()}

        keras.utils.set_random_seed(0)
        reference = build(args.model, num_classes=3)
        weights = reference.get_weights()
        ref_loss, ref_update = step(reference, x)
        distribution = distributed.data_parallel(replicas)
        model = build(args.model, num_classes=3)
        model.set_weights(weights)
        loss, update = step(model, fed)
        keras.distribution.set_distribution(None)
    params = [k for k in update if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    stats = [k for k in update if k.endswith(("running_mean", "running_var"))]
    rows = comparisons({"loss": (abs_err(loss, ref_loss), ""), "step_params": worst(update, ref_update, params),
                        "step_bn_stats": worst(update, ref_update, stats)}, GLOBAL, "equal")
    engine = f"keras.distribution.DataParallel ({keras.backend.backend()}, {len(distribution.device_mesh.devices)} " \
             f"{keras.distribution.list_devices()[0].split(':')[0]} devices)"
    write_result(args.out, args, replicas, engine, rows)


def write_result(path: str, args, replicas: int, engine: str, rows: list[dict]) -> None:
    result = {"model": args.model, "framework": args.framework, "engine": engine, "replicas": replicas,
              "rows_per_replica": args.rows, "img_size": args.img_size, "sync_bn": args.sync_bn,
              "tamper": args.tamper, "dtype": "float64", "optimizer": f"SGD lr {LR} momentum {MOMENTUM}, one step",
              "rows": rows}
    text = json.dumps(result, indent=1) + "\n"
    checkpoints.write_atomic(path, lambda tmp: tmp.write_text(text))


# ----------------------------------------------------------------------------------------------
# the command: starts the workers, prints the table


def launch(args, out: str) -> subprocess.CompletedProcess:
    worker = [sys.executable, "-m", "twins_cli.dp_parity", "--out", out, "--model", args.model, "--framework",
              args.framework, "--rows", str(args.rows), "--img-size", str(args.img_size), "--replicas",
              str(args.replicas)] + ["--sync-bn"] * args.sync_bn + ["--tamper"] * args.tamper
    env = dict(os.environ)
    if args.framework == "torch":
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={args.replicas}", *worker[1:]]
    else:
        env.update(KERAS_BACKEND="jax", JAX_NUM_CPU_DEVICES=str(args.replicas), JAX_PLATFORMS="cpu")
        command = worker
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.timeout)


def table(result: dict) -> str:
    lines = [f"{result['model']} on {result['engine']}: {result['replicas']} replicas x {result['rows_per_replica']} "
             f"rows at {result['img_size']} px, {result['dtype']}, {result['optimizer']}"
             + (", SyncBatchNorm" if result["sync_bn"] else "")
             + (", TAMPERED: every replica fed replica 0's rows" if result["tamper"] else ""),
             "| check | against | expected | error | bound | result | worst tensor |", "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['check']} | {r['against']} | {r['expected']} | {r['error']:.1e} | {r['bound']:.0e} | "
                     f"{'pass' if r['passed'] else 'FAIL'} | {r['detail'].replace('worst: ', '')} |")
    return "\n".join(lines)


def cmd_dp_parity(args) -> int:
    info = registry.get(args.model)
    if info.task != "classification" or info.aux_heads:
        raise SystemExit(f"twins dp-parity compares classifiers without aux heads (the Keras step is fit's "
                         f"cross-entropy of one output); {args.model} is a {info.task} model"
                         + (f" with aux heads ({', '.join(info.aux_heads)})" if info.aux_heads else ""))
    if args.sync_bn and args.framework == "keras":
        raise SystemExit("--sync-bn is the torch twin's; Keras on jax takes BatchNorm statistics over the global "
                         "batch by itself")
    if args.replicas < 2:
        raise SystemExit(f"--replicas must be at least 2, got {args.replicas}")
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "result.json")
        done = launch(args, out)
        if done.returncode != 0 or not Path(out).is_file():
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-25:])
            raise SystemExit(f"the data-parallel step exited {done.returncode}:\n{tail}")
        result = json.loads(Path(out).read_text())
    print(table(result))
    if args.json:
        text = json.dumps(result, indent=1) + "\n"
        checkpoints.write_atomic(args.json, lambda tmp: tmp.write_text(text))
        print(f"wrote {args.json}")
    failed = [r for r in result["rows"] if not r["passed"]]
    print(f"{len(result['rows']) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def add_arguments(p) -> None:
    p.add_argument("--framework", choices=("torch", "keras"), default="torch")
    p.add_argument("--replicas", type=int, default=2, help="torch processes, or jax devices (default 2)")
    p.add_argument("--rows", type=int, default=4, help="rows per replica (default 4)")
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--sync-bn", action="store_true", help="torch: SyncBatchNorm (the global batch's statistics)")
    p.add_argument("--tamper", action="store_true", help="feed every replica after the first replica 0's rows: the check must fail")


def add_parser(sub) -> None:
    p = sub.add_parser("dp-parity", help="one data-parallel step (torchrun DDP, or Keras DataParallel on jax) "
                                         "against single-process steps")
    p.add_argument("model")
    add_arguments(p)
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--timeout", type=float, default=600, help="seconds for the workers (default 600)")
    p.set_defaults(func=cmd_dp_parity)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="a worker of twins dp-parity")
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", required=True)
    add_arguments(parser)
    args = parser.parse_args(argv)
    (torch_worker if args.framework == "torch" else keras_worker)(args)


if __name__ == "__main__":
    main()
