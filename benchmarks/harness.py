"""Orchestration: validate the request, start one worker process per backend, collect its rows,
turn anything a worker did not deliver into a row that says why, compute `ratio_to_torch`, and
write JSON + Markdown + PNG.

Why this shape:
- One subprocess per backend (`python -m benchmarks.worker`): Keras fixes its backend at import,
  frameworks hold process-wide GPU/allocator/compile state. keras-jax on CUDA is the exception that
  gets one worker per row, because jax cannot reset its peak-memory counter.
- Timed steps one at a time: two workers timing at once would compete for the same cores or GPU.
  With `side_by_side` 2 (`make demo`'s quick sweep on a CPU) the next worker starts while one
  prepares (imports, builds, compiles, warms up: most of a worker's wall time in a short sweep, much
  of it on one core), and the two take turns for their timed steps (`benchmarks.gate`: a worker
  times only while every other one waits). The default is one worker at a time.
- This process imports no framework. Device detection for `--device auto` happens in a short probe
  subprocess, so the parent never holds a CUDA context or jax's preallocated GPU memory while a
  worker measures.
- A worker writes its rows to a JSON file after every row (atomically). If it crashes, is killed by
  the OOM killer or runs past `timeout_s`, the rows it finished are kept and every row it did not
  deliver gets status "worker crashed" / "timeout" with the tail of its output, so a backend never
  silently vanishes from the report.
- Environment that a framework reads at import is set here, per worker: KERAS_BACKEND for the
  Keras backends; for `--device cpu`, CUDA_VISIBLE_DEVICES="" and JAX_PLATFORMS=cpu so no framework
  touches a GPU that happens to be present.
"""
from __future__ import annotations

import collections
import datetime
import importlib.metadata
import json
import numbers
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from twins import registry

from benchmarks import report, schema, worker
from benchmarks.gate import open_shared as open_gate_shared
from benchmarks.gate import overlaps as gate_overlaps

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT_DIR = os.path.join(REPO_ROOT, "benchmarks", "results", "latest")
DEFAULT_TIMEOUT_S = 1800.0
# Small on CPU so a default run finishes in minutes on a laptop; timm-like on GPU.
DEVICE_DEFAULTS = {
    "cpu": {"batch_sizes": (8,), "warmup": 2, "repeats": 5, "latency_calls": 50},
    "cuda": {"batch_sizes": (64,), "warmup": 10, "repeats": 30, "latency_calls": 200},
}
PACKAGES = ("torch", "keras", "tensorflow", "jax", "jaxlib", "numpy", "matplotlib")
FILE_NAMES = {"json": "benchmark.json", "markdown": "benchmark.md", "png": "benchmark.png"}
STDERR_TAIL_LINES = 25
STDERR_TAIL_CHARS = 2500


def log(message: str) -> None:
    print(f"[benchmarks] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Validating the request


def _as_list(value, what: str) -> list:
    if value is None:
        return []
    if isinstance(value, str):
        items = [item.strip() for item in value.split(",")]
    else:
        items = list(value)
    items = [item for item in items if item != ""]
    if not items:
        raise ValueError(f"{what}: expected at least one value, got {value!r}")
    return list(dict.fromkeys(items))  # de-duplicated, order kept


def resolve_models(models) -> list[str]:
    names = _as_list(models, "models")
    if names == ["all"]:
        return registry.names()
    for name in names:
        registry.get(name)  # raises UnknownModelError naming every registered model
    return names


def _subset(names: list, known, what: str, allow_all: bool) -> list[str]:
    """`names` in the canonical order of `known`; an unknown name is a ValueError listing `known`."""
    if allow_all and names == ["all"]:
        return list(known)
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(
            f"unknown {what} {', '.join(repr(u) for u in unknown)}; expected a comma-separated "
            f"subset of: {', '.join(known)}" + (" (or 'all')" if allow_all else "")
        )
    return [name for name in known if name in names]


def resolve_backends(backends) -> list[str]:
    """Names from schema.BACKENDS; `all` stands for the five framework backends, `deploy` for the export runtimes."""
    names = _as_list(backends, "backends")
    groups = {"all": schema.DEFAULT_BACKENDS, "deploy": schema.EXPORT_BACKENDS}
    expanded = list(dict.fromkeys(b for name in names for b in groups.get(name, (name,))))
    unknown = [name for name in expanded if name not in schema.BACKENDS]
    if unknown:
        raise ValueError(
            f"unknown backend {', '.join(repr(u) for u in unknown)}; expected a comma-separated subset of: "
            f"{', '.join(schema.BACKENDS)} (or 'all' for the first five, 'deploy' for the export runtimes)"
        )
    return [name for name in schema.BACKENDS if name in expanded]


def resolve_modes(modes) -> list[str]:
    return _subset(_as_list(modes, "modes"), schema.MODES, "mode", allow_all=False)


def _positive_int(value, what: str, minimum: int = 1) -> int:
    """An integer >= minimum, given as an int or as a string of digits (from the command line)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{what}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def resolve_batch_sizes(batch_sizes) -> list[int] | None:
    if batch_sizes is None:
        return None
    if isinstance(batch_sizes, int):
        batch_sizes = [batch_sizes]
    return sorted({_positive_int(b, "batch size") for b in _as_list(batch_sizes, "batch sizes")})


# ---------------------------------------------------------------------------------------------
# Environment facts


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _git_state() -> dict | None:
    """Commit and dirtiness of the checkout being measured (read-only git calls)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=10,
        )
        return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return None


def _base_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # tensorflow's INFO chatter only; warnings stay
    return env


def probe_accelerators(timeout_s: float = 300.0) -> dict:
    """What torch and jax see, asked in a subprocess (see the module docstring for why)."""
    env = _base_env()
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"  # the probe must not reserve GPU memory
    with tempfile.TemporaryDirectory(prefix="twins-bench-probe-") as tmp:
        result = os.path.join(tmp, "probe.json")
        try:
            done = subprocess.run(
                [sys.executable, "-m", "benchmarks.worker", "--probe", "--result", result],
                cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout_s,
            )
        except subprocess.TimeoutExpired:
            log(f"device probe did not finish in {timeout_s:.0f} s; assuming no GPU")
            return {"torch_cuda": False, "jax_gpu": False, "gpu_names": [], "cuda_version": None}
        if done.returncode != 0 or not os.path.exists(result):
            log(f"device probe failed (exit {done.returncode}); assuming no GPU. Its stderr ends with:\n"
                + "\n".join(done.stderr.splitlines()[-10:]))
            return {"torch_cuda": False, "jax_gpu": False, "gpu_names": [], "cuda_version": None}
        with open(result) as f:
            return json.load(f)


def probed_device(probe: dict) -> str:
    """The device `--device auto` means, given what `probe_accelerators` returned."""
    return "cuda" if probe.get("torch_cuda") or probe.get("jax_gpu") else "cpu"


# ---------------------------------------------------------------------------------------------
# Workers


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        hint = " (on Linux usually the kernel's out-of-memory killer)" if -returncode == signal.SIGKILL else ""
        return f"was killed by {name}{hint}"
    return f"exited with code {returncode}"


def _tail(lines, n: int = STDERR_TAIL_LINES, limit: int = STDERR_TAIL_CHARS) -> str:
    wanted = [line.rstrip("\n") for line in lines if not line.startswith(schema.PROGRESS_PREFIX)]
    text = "\n".join(wanted[-n:])
    return text[-limit:] if len(text) > limit else text


def _config_key(config: dict) -> tuple:
    return (config["model"], config["mode"], config["batch"], config["img_size"])


def run_worker(backend: str, configs: list[dict], options: dict, env: dict, timeout_s: float,
               workdir: str, tag: str, verbose: bool = True, gate: str | None = None,
               live: set | None = None, gate_timed_only: bool = False) -> tuple[list[dict], dict, list[str]]:
    """Run one worker over `configs`; returns (rows, worker info, its output lines). Always one row
    per config: measured, or a failure row explaining why not. `gate`: the run's `benchmarks.gate` file
    (None: the worker never waits); `gate_timed_only`: the worker takes it for its timed loops only
    (`benchmarks.gpu`), not shared while it prepares; `live`: a set the process is in while it runs."""
    job_path = os.path.join(workdir, f"{tag}.job.json")
    result_path = os.path.join(workdir, f"{tag}.rows.json")
    fd = since = None
    if gate and not gate_timed_only:  # held shared from before the process starts until it has exited
        fd, since = open_gate_shared(gate)
    report.write_atomic(job_path, json.dumps({"backend": backend, "options": options, "configs": configs,
                                              "gate": gate, "gate_fd": fd, "gate_since": since,
                                              "gate_timed_only": gate_timed_only}))
    command = [sys.executable, "-m", "benchmarks.worker", "--job", job_path, "--result", result_path]
    output: collections.deque[str] = collections.deque(maxlen=5000)

    start = time.monotonic()
    try:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, errors="replace", bufsize=1, pass_fds=() if fd is None else (fd,),
            start_new_session=True,  # its own process group: a timeout also ends compiler subprocesses
        )
    finally:
        if fd is not None:
            os.close(fd)  # the worker's copy holds the lock now

    def pump():
        for line in process.stdout:
            output.append(line)
            if verbose and line.startswith(schema.PROGRESS_PREFIX):
                print(f"[benchmarks]   {line[len(schema.PROGRESS_PREFIX):].strip()}", file=sys.stderr, flush=True)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    if live is not None:
        live.add(process)
    try:
        returncode = process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(process)
        returncode = process.wait()
    except BaseException:  # Ctrl-C: do not leave a worker measuring in the background
        _kill_group(process)
        process.wait()
        raise
    finally:
        if live is not None:
            live.discard(process)
    reader.join(timeout=10)
    wall_s = time.monotonic() - start

    delivered, worker = [], {}
    if os.path.exists(result_path):
        try:
            with open(result_path) as f:
                payload = json.load(f)
            delivered, worker = payload.get("rows", []), payload.get("worker", {})
        except (OSError, json.JSONDecodeError) as exc:
            output.append(f"[harness] could not read the worker's result file: {exc}\n")
    by_key = {_config_key(row): row for row in delivered}

    tail = _tail(output)
    rows = []
    for config in configs:
        row = by_key.get(_config_key(config))
        if row is None:
            if timed_out:
                status = schema.STATUS_TIMEOUT
                error = (f"the {backend} worker ran past its {timeout_s:g} s limit (timeout_s) and was "
                         f"stopped before it measured this row; its last output:\n{tail}")
            else:
                status = schema.STATUS_CRASHED
                error = (f"the {backend} worker {_describe_exit(returncode)} before it measured this "
                         f"row; its last output:\n{tail}")
            row = schema.failed_row(config, options, status, error)
        rows.append(row)
    info = {
        "backend": backend,
        "tag": tag,
        "returncode": returncode,
        "timed_out": timed_out,
        "wall_s": round(wall_s, 2),
        "rows": len(configs),
        "versions": worker.get("versions", {}),
        "device_name": worker.get("device_name"),
        # what the worker recorded: its holds, the last one up to its last write (it lasts until the process exits)
        "gate": worker.get("gate", []) + ([["prepare" if gate_timed_only else "shared", *worker["gate_held"]]]
                                          if worker.get("gate_held") else []),
    }
    return rows, info, list(output)


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# ---------------------------------------------------------------------------------------------
# Rows


def add_ratios(rows: list[dict]) -> None:
    """`ratio_to_torch` = samples/s over the measured native torch row with the same model (peers:
    the model they are a peer of), mode, batch, dtype and image size; None where there is none."""
    reference = {
        (r["model"], r["mode"], r["batch"], r["dtype"], r["img_size"]): r["samples_per_sec"]
        for r in rows
        if r["backend"] == schema.REFERENCE_BACKEND and r["status"] == schema.STATUS_OK and r["samples_per_sec"]
    }
    for r in rows:
        base = reference.get((r.get("peer_of") or r["model"], r["mode"], r["batch"], r["dtype"], r["img_size"]))
        ok = r["status"] == schema.STATUS_OK and r["samples_per_sec"]
        r["ratio_to_torch"] = r["samples_per_sec"] / base if ok and base else None


def _sort_rows(rows: list[dict], models: list[str]) -> list[dict]:
    def key(r):
        model = r.get("peer_of") or r["model"]
        return (
            models.index(model) if model in models else len(models),
            schema.MODES.index(r["mode"]),
            r["batch"],
            schema.BACKENDS.index(r["backend"]),
            bool(r.get("peer_of")),
        )

    return sorted(rows, key=key)


# ---------------------------------------------------------------------------------------------
# The public entry point


def run(
    models="resnet50",
    backends="all",
    modes=("train", "infer"),
    batch_sizes=None,
    img_size=None,
    dtype="float32",
    device="auto",
    warmup=None,
    repeats=None,
    channels_last=False,
    peers=False,
    tf32=False,
    out_dir=None,
    timeout_s=DEFAULT_TIMEOUT_S,
    verbose=True,
    latency_calls=None,
    skip=None,
    artifacts=None,
    prepare_parallel=None,
    probe=None,
    side_by_side=None,
    gate=None,
) -> dict:
    """Benchmark `models` x `backends` x `modes` x `batch_sizes`; returns {"meta": ..., "rows": [...]}.

    `models`, `backends`, `modes`, `batch_sizes` take a list or a comma-separated string; `models`
    and `backends` accept "all". `batch_sizes`, `warmup` and `repeats` default per device
    (CPU: batch 8, 2 warm-up, 5 timed steps; CUDA: batch 64, 10 warm-up, 30 timed steps).
    `img_size` None = each model's registry `input_size`. `device` "auto" = cuda when torch sees a
    CUDA device or jax sees a GPU. `timeout_s` limits each worker process (wall clock).
    Mode `latency` measures batch 1 only, `latency_calls` timed calls (CPU 50, CUDA 200 by default) after the
    warm-up, and reports their p50 / p90 / p99. The export backends (`deploy`) run `infer` and `latency`; their
    `train` rows say "not applicable".
    `skip` maps `(backend, mode)` to why that pair is left out of this sweep: its rows say so (status "not
    measured") instead of being measured.
    The export runtimes' artifacts are made before any worker measures (`prepare_exports`, `prepare_parallel` at
    a time, default: two, or one on a single core; exporting is not timed); `artifacts` (what `prepare_exports`
    returned for these models, backends and sizes) passes artifacts made beforehand, alongside other work.
    `probe`: what `probe_accelerators` returned, asked beforehand (`device` "auto" then asks no more).
    `side_by_side` workers are alive at a time (default 1): each prepares (imports, builds, compiles, warms up)
    beside the others, and times its steps alone (`benchmarks.gate`); `make demo`'s quick sweep runs two on a CPU.
    `gate`: the gate file to use, for a caller that holds it shared around untimed work of its own
    (`gate.Gate`); default: one of the run's own.
    `out_dir` None = return the results without writing files; otherwise writes benchmark.json,
    benchmark.md, benchmark.png and logs/<backend>.log there (atomically). `verbose` False silences
    the progress lines on stderr (warnings still print).

    Raises ValueError (registry.UnknownModelError for a model) for a request that cannot mean
    anything; a backend that cannot run on this machine is not an error but a row with a status.
    """
    started = time.monotonic()
    say = log if verbose else (lambda message: None)  # progress only; warnings always go to stderr
    model_names = resolve_models(models)
    backend_names = resolve_backends(backends)
    mode_names = resolve_modes(modes)
    batches = resolve_batch_sizes(batch_sizes)
    if dtype not in schema.DTYPES:
        raise ValueError(f"dtype: expected one of {', '.join(schema.DTYPES)}, got {dtype!r}")
    if device not in schema.DEVICES:
        raise ValueError(f"device: expected one of {', '.join(schema.DEVICES)}, got {device!r}")
    if img_size is not None:
        img_size = _positive_int(img_size, "img_size")
        for name in model_names:
            info = registry.get(name)
            if img_size < info.min_input_size:
                raise ValueError(
                    f"img_size {img_size} is below {name}'s smallest input size {info.min_input_size}"
                )
            if info.max_input_size is not None and img_size > info.max_input_size:
                raise ValueError(f"img_size {img_size} is above {name}'s largest input size {info.max_input_size}")
            problem = info.size_problem(img_size, img_size)
            if problem:
                raise ValueError(f"img_size {img_size}: {problem}")
    if warmup is not None:
        # At least one: the first step (tracing, compilation, autotuning) is never among the timed ones.
        warmup = _positive_int(warmup, "warmup", minimum=1)
    if repeats is not None:
        repeats = _positive_int(repeats, "repeats")
    if latency_calls is not None:
        latency_calls = _positive_int(latency_calls, "latency_calls", minimum=10)
    for backend, mode in skip or {}:
        if backend not in schema.BACKENDS or mode not in schema.MODES:
            raise ValueError(f"skip: ({backend!r}, {mode!r}) is not a (backend, mode) pair; backends: "
                             f"{', '.join(schema.BACKENDS)}; modes: {', '.join(schema.MODES)}")
    timeout_s = float(timeout_s)
    if not timeout_s > 0:
        raise ValueError(f"timeout_s: expected a positive number of seconds, got {timeout_s!r}")

    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    if device == "auto":
        if probe is None:
            say("probing for a GPU (torch, then jax) in a subprocess")
            probe = probe_accelerators()
        resolved_device = probed_device(probe)
    else:
        # An explicit --device cuda stays cuda without a GPU: every worker then says why it cannot.
        resolved_device = device
    defaults = DEVICE_DEFAULTS[resolved_device]
    batches = batches or list(defaults["batch_sizes"])
    warmup = defaults["warmup"] if warmup is None else warmup
    repeats = defaults["repeats"] if repeats is None else repeats
    latency_calls = defaults["latency_calls"] if latency_calls is None else latency_calls

    options = {
        "latency_calls": latency_calls,
        "device": resolved_device,
        "dtype": dtype,
        "warmup": warmup,
        "repeats": repeats,
        "channels_last": bool(channels_last),
        "tf32": bool(tf32),
    }

    # The configurations each backend measures.
    def sizes_for(name):
        return img_size or registry.get(name).input_size

    peer_models = []
    if peers:
        if schema.PEER_OF in model_names:
            peer_models = [schema.PEER_MODEL]
        else:
            log(f"--peers adds {schema.PEER_MODEL} next to {schema.PEER_OF} only; "
                f"{schema.PEER_OF} is not among the models ({', '.join(model_names)}), so no peer rows")
        if not any(b in schema.KERAS_BACKENDS for b in backend_names):
            log("--peers has no effect without a Keras backend")
    jobs, not_applicable = [], []
    for backend in backend_names:
        configs = []
        for name in model_names + (peer_models if backend in schema.KERAS_BACKENDS else []):
            peer_of = schema.PEER_OF if name == schema.PEER_MODEL else None
            for mode in mode_names:
                for batch in ([1] if mode == "latency" else batches):
                    configs.append({
                        "model": name, "backend": backend, "mode": mode, "batch": batch,
                        "img_size": sizes_for(peer_of or name), "peer_of": peer_of,
                    })
        left_out = [c for c in configs if (backend, c["mode"]) in (skip or {})]
        for c in left_out:
            not_applicable.append(schema.failed_row(c, options, schema.STATUS_NOT_MEASURED, skip[(backend, c["mode"])]))
        configs = [c for c in configs if c not in left_out]
        if backend in schema.EXPORT_BACKENDS:
            skipped = [c for c in configs if c["mode"] == "train" or resolved_device == "cuda"]
            for c in skipped:
                why = ("an exported artifact is an inference program; it does not train" if c["mode"] == "train" else
                       "the export runtimes are measured on the CPU here (onnxruntime's CPU provider, LiteRT, "
                       "OpenVINO's CPU device); run with --device cpu")
                not_applicable.append(schema.failed_row(c, options, schema.STATUS_NOT_APPLICABLE, why))
            configs = [c for c in configs if c not in skipped]
        if not configs:
            continue
        if backend == "keras-jax" and resolved_device == "cuda":
            jobs += [(backend, [c], f"{backend}-{i}") for i, c in enumerate(configs)]
        else:
            jobs.append((backend, configs, backend))

    side_by_side = _positive_int(1 if side_by_side is None else side_by_side, "side_by_side")
    say(f"device {resolved_device}, dtype {dtype}, {warmup} warm-up + {repeats} timed steps, "
        f"batch {', '.join(map(str, batches))}; {sum(len(c) for _, c, _ in jobs)} rows in "
        f"{len(jobs)} worker(s), " + ("one at a time" if side_by_side == 1 or len(jobs) == 1 else
                                      f"{min(side_by_side, len(jobs))} preparing side by side, timing one at a time"))
    if schema.contended(load_before, os.cpu_count()):
        log(f"warning: load average {load_before[0]:.2f} on {os.cpu_count()} CPUs before starting; "
            "other processes compete for the CPU and the timings will be noisy")

    rows, workers, logs = [], [], collections.defaultdict(list)
    with tempfile.TemporaryDirectory(prefix="twins-bench-") as workdir:
        wanted = [(backend, c["model"], c["img_size"]) for backend, configs, _ in jobs
                  if backend in schema.EXPORT_BACKENDS for c in configs]
        artifacts = dict(artifacts or {})
        missing = [task for task in dict.fromkeys(wanted) if worker.artifact_key(*task[1:]) not in
                   artifacts.get(task[0], {})]
        if missing:
            made = prepare_exports(missing, workdir, parallel=prepare_parallel, verbose=verbose)
            for backend, entries in made.items():
                artifacts[backend] = {**artifacts.get(backend, {}), **entries}
        gate_path = gate or (os.path.join(workdir, "gate") if side_by_side > 1 else None)
        live: set = set()

        def one(job):
            backend, configs, tag = job
            env = _base_env()
            env.pop("KERAS_BACKEND", None)
            if backend in schema.KERAS_BACKENDS:
                env["KERAS_BACKEND"] = schema.KERAS_BACKEND_ENV[backend]
            if resolved_device == "cpu":
                env["CUDA_VISIBLE_DEVICES"] = ""
                env["JAX_PLATFORMS"] = "cpu"
            say(f"{backend}: starting a worker for {len(configs)} row(s)")
            mine = {**options, "artifacts": artifacts[backend]} if backend in artifacts else options
            worker_rows, info, output = run_worker(
                backend, configs, mine, env, timeout_s, workdir, tag, verbose=verbose, gate=gate_path, live=live
            )
            ok = sum(r["status"] == schema.STATUS_OK for r in worker_rows)
            say(f"{backend}: {ok}/{len(worker_rows)} row(s) measured in {info['wall_s']:.0f} s"
                + ("" if info["returncode"] == 0 else f" (worker {_describe_exit(info['returncode'])})")
                + (" (timed out)" if info["timed_out"] else ""))
            return worker_rows, info, output

        # Workers start in the plan's order, `side_by_side` alive at a time; each times its steps alone
        # (`benchmarks.gate`), so a second worker only ever shares the cores with another's preparation.
        pool = ThreadPoolExecutor(max_workers=side_by_side)
        try:
            for (backend, _, tag), (worker_rows, info, output) in zip(jobs, pool.map(one, jobs)):
                rows += worker_rows
                workers.append(info)
                logs[backend] += [f"===== worker {tag}: exit {info['returncode']}, {info['wall_s']} s =====\n"] + output
        except BaseException:  # Ctrl-C: no worker goes on measuring in the background
            pool.shutdown(wait=False, cancel_futures=True)
            for process in list(live):
                _kill_group(process)
            raise
        pool.shutdown()

    # The gate's promise, checked on what the workers recorded: no worker timed a step while another computed.
    overlapping = gate_overlaps({w["tag"]: w["gate"] for w in workers})
    for problem in overlapping:
        log(f"warning: {problem}; the timings are noisy")
    rows += not_applicable
    add_ratios(rows)
    rows = _sort_rows(rows, model_names)
    load_after = os.getloadavg() if hasattr(os, "getloadavg") else None

    cpu_model = _cpu_model()
    gpu_names = (probe or {}).get("gpu_names") or sorted(
        {w["device_name"] for w in workers if w.get("device_name") not in (None, "cpu")}
    )
    meta = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
        "device": resolved_device,
        "device_name": (
            (", ".join(gpu_names) if gpu_names else "no GPU visible to any framework")
            if resolved_device == "cuda" else cpu_model
        ),
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "gpu_names": gpu_names,
        "cuda_version": (probe or {}).get("cuda_version"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {name: _version(name) for name in PACKAGES},
        "tf32": bool(tf32),
        "options": {
            "models": model_names,
            "backends": backend_names,
            "modes": mode_names,
            "batch_sizes": batches,
            "img_size": img_size,
            "dtype": dtype,
            "device": device,
            "warmup": warmup,
            "repeats": repeats,
            "latency_calls": latency_calls,
            "channels_last": bool(channels_last),
            "peers": bool(peers),
            "tf32": bool(tf32),
            "timeout_s": timeout_s,
            "side_by_side": side_by_side,
        },
        "peak_mem_note": (
            "CUDA: the framework allocator's peak during the row (torch max_memory_allocated, tf "
            "get_memory_info peak, jax peak_bytes_in_use)" if resolved_device == "cuda" else
            "CPU: peak resident set size (ru_maxrss) of the worker process during the row, framework "
            "libraries included"
        ),
        "load_average_before": list(load_before) if load_before else None,
        "load_average_after": list(load_after) if load_after else None,
        "load_warning": (
            f"load average {load_before[0]:.2f} on {os.cpu_count()} CPUs before the run: other "
            "processes were competing for the CPU, timings are noisy"
            if schema.contended(load_before, os.cpu_count()) else None
        ),
        "git": _git_state(),
        "workers": workers,
        "timing_overlaps": overlapping,
        "wall_s": None,
        "files": None,
    }
    meta["wall_s"] = round(time.monotonic() - started, 1)
    result = {"meta": meta, "rows": rows}
    if out_dir is not None:
        meta["files"] = write_outputs(result, out_dir, logs)
    return result


def export_tasks(models, backends, img_size=None) -> list[tuple[str, str, int]]:
    """`(export backend, model, size)` of every artifact a CPU run of `run` with these arguments measures."""
    chosen = [b for b in resolve_backends(backends) if b in schema.EXPORT_BACKENDS]
    return [(backend, name, img_size or registry.get(name).input_size)
            for backend in chosen for name in resolve_models(models)]


def prepare_exports(tasks, folder: str, *, parallel=None, pool=None, verbose=True) -> dict:
    """Make the artifacts of `tasks` (`export_tasks`) with `twins export` into `folder`, `parallel` at a time
    (default: two, or one on a single core), or on `pool` (an executor the caller shares with other work):
    `{backend: {artifact key: what the export reported and its path, or {"error": why}}}`, for `run(artifacts=)`.
    An artifact already in `folder` under its name (`worker.artifact_paths`) with a report saying it passed its
    check is taken as it is (`make demo`'s parity run leaves resnet18's six there: `twins_cli.report`).
    Exporting is not timed, so the exports run side by side, before any worker measures (six `twins export`
    processes of resnet18 at 64x64 took 60-70 s one after another on 2 cores)."""
    say = log if verbose else (lambda message: None)

    def one(task):
        backend, model, size = task
        began = time.monotonic()
        entry = worker.export_artifact(backend, model, size, folder)
        say(f"{backend}: twins export {model} ({size}x{size}) "
            + (f"failed: {entry['error'][:200]}" if "error" in entry else "done")
            + f" in {time.monotonic() - began:.0f} s")
        return backend, worker.artifact_key(model, size), entry

    made: dict = {}
    tasks = list(dict.fromkeys(tasks))
    for task in list(tasks):
        backend, model, size = task
        entry = worker.kept_artifact(backend, model, size, folder)
        if entry is not None:  # checked, and made from other weights than `twins export`'s seed: fine to time
            say(f"{backend}: {model} ({size}x{size}) is in the folder already, checked against the eager twin "
                f"(error {entry['check']['error']:.1e}; {entry.get('weights') or 'its weights'}): not exported again")
            made.setdefault(backend, {})[worker.artifact_key(model, size)] = entry
            tasks.remove(task)
    if not tasks:
        return made
    own = None
    if pool is None:
        parallel = parallel or (2 if (os.cpu_count() or 1) > 1 else 1)
        own = pool = ThreadPoolExecutor(max_workers=parallel)
    say(f"exporting {len(tasks)} artifact(s) for the export runtimes, not timed")
    try:
        futures = [pool.submit(one, task) for task in tasks]
        for future in futures:
            backend, key, entry = future.result()
            made.setdefault(backend, {})[key] = entry
        return made
    finally:
        if own is not None:
            own.shutdown()


def write_outputs(result: dict, out_dir: str, logs: dict | None = None) -> dict:
    """benchmark.json, benchmark.md, benchmark.png (and logs/<backend>.log), each atomically."""
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    files = {kind: os.path.join(out_dir, name) for kind, name in FILE_NAMES.items()}
    if logs:
        files["logs"] = os.path.join(out_dir, "logs")
        for backend, lines in logs.items():
            report.write_atomic(os.path.join(files["logs"], f"{backend}.log"), "".join(lines))
    result["meta"]["files"] = files
    report.write_atomic(files["json"], json.dumps(result, indent=1) + "\n")
    report.write_atomic(files["markdown"], report.render_markdown(result["rows"], result["meta"]))
    report.render_chart(result["rows"], files["png"])
    return files
