"""Throughput benchmarks of the twins: native torch, torch.compile, and the Keras twin on the
tensorflow, jax and torch Keras backends, each measured in its own subprocess.

    python -m benchmarks --models resnet50 --backends all --mode train,infer

or, from Python (what a report command calls):

    import benchmarks
    result = benchmarks.run(["resnet18"], "torch,keras-jax", ["infer"], [8], out_dir="out/bench")
    result["meta"], result["rows"]

`benchmarks.harness` orchestrates the worker processes, `benchmarks.worker` measures inside one
backend (what one step is, how the clock and memory are read: see its docstring),
`benchmarks.report` renders the Markdown table and the PNG chart, `benchmarks.schema` holds the
shared names (backends, columns, status words). Importing this package imports no framework.
"""
from __future__ import annotations

from benchmarks.harness import export_tasks, prepare_exports, probe_accelerators, probed_device, run, write_outputs
from benchmarks.report import render_chart, render_markdown
from benchmarks.schema import BACKENDS, COLUMNS, MODES

__all__ = ["run", "write_outputs", "render_markdown", "render_chart", "BACKENDS", "COLUMNS", "MODES"]
