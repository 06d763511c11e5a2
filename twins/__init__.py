"""Framework-free core shared by the Keras twin (`keras_impl`) and the PyTorch twin (`torch_impl`):
the model registry and checkpoint files.

The layers, bottom to top: `twins` (this core: numpy only) <- `keras_impl`, `torch_impl` (one framework
each) <- `twins_cli`, `benchmarks` (orchestrate both twins: the `twins` command, the parity engine,
the report, the benchmark harness). Nothing here imports a framework, a twin package or the layer
above; the one exception is a lazy `import torch` in `checkpoints` to read or write a `.pth` file,
which is a torch pickle that only torch unpickles safely (`weights_only=True`).
"""
