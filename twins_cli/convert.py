"""`twins convert`: move a checkpoint between torch layout (.pth/.pt/.safetensors/.npz) and Keras files
(.weights.h5/.keras), through the weight bridge, atomically. A TensorFlow checkpoint of a TF-slim
network (vgg19_slim: the public `vgg_19.ckpt`, or a prefix whose `.index` sits beside it) is a source
too: `twins.checkpoints.read` maps it to torch layout.

The class count of the written model is `--num-classes`, else the checkpoint's own (the rows of its
classifier weight). A class count other than the checkpoint's means a fresh head: the classifier is
excluded unless `--exclude` names what to exclude. Keras' own files are read through the architecture
that wrote them, so `--exclude` takes torch-layout sources only.
"""
from __future__ import annotations

import os
from pathlib import Path

from twins import checkpoints, registry

KERAS_SUFFIXES = (".weights.h5", ".keras")


def _is_keras_file(path: str) -> bool:
    return path.endswith(KERAS_SUFFIXES)


def _check_formats(src: str, dst: str) -> None:
    from twins import tf_checkpoint

    ok = KERAS_SUFFIXES + checkpoints.SUFFIXES
    if not src.endswith(ok) and not Path(src).exists() and tf_checkpoint.prefix_of(Path(src)) is None:
        raise SystemExit(f"source not found: {src} (nor {Path(src).name}.index beside it, as a TensorFlow "
                         "checkpoint prefix has)")
    if not src.endswith(ok) and tf_checkpoint.prefix_of(Path(src)) is None:
        raise SystemExit(f"source {src!r}: unsupported format; expected one of {', '.join(ok)}, "
                         f"or {tf_checkpoint.FORMAT}")
    if not dst.endswith(ok):
        raise SystemExit(f"destination {dst!r}: unsupported format; expected one of {', '.join(ok)}")


def cmd_convert(args) -> int:
    _check_formats(args.src, args.dst)
    info = registry.get(args.model)
    exclude = tuple(args.exclude or ())
    os.environ.setdefault("KERAS_BACKEND", args.backend or "torch")
    if args.backend:
        os.environ["KERAS_BACKEND"] = args.backend
    import keras

    import keras_impl
    from keras_impl.weights import load_torch_state_dict, torch_state_dict

    if _is_keras_file(args.src):
        if exclude:
            raise SystemExit("--exclude applies to torch-layout sources; convert to .safetensors first")
        if args.src.endswith(".keras"):
            model = keras.saving.load_model(args.src, compile=False)
        else:
            model = keras_impl.build(args.model, num_classes=args.num_classes or info.num_classes)
            if not Path(args.src).is_file():
                raise SystemExit(f"checkpoint not found: {args.src}")
            model.load_weights(args.src)
        state = torch_state_dict(model)
        report_text = f"read {len(state)} tensors from {args.src}"
    else:
        state = checkpoints.strip_data_parallel(checkpoints.read(args.src))
        trained = classes_in(state, info)
        num_classes = args.num_classes or trained
        if num_classes != trained and not exclude:
            exclude = info.classifier  # a class count other than the checkpoint's means a fresh head
        model = keras_impl.build(args.model, num_classes=num_classes)
        report = load_torch_state_dict(model, state, exclude=exclude, strict=True)
        report_text = f"{args.src}: {report.summary()}"
        if report.skipped:
            report_text += f" (fresh: {', '.join(report.skipped)})"
        state = torch_state_dict(model)
    print(report_text)
    if _is_keras_file(args.dst):
        suffix = ".weights.h5" if args.dst.endswith(".weights.h5") else ".keras"
        save = model.save_weights if suffix == ".weights.h5" else model.save

        def writer(tmp: Path):
            # Keras insists on the suffix, so the temp file keeps it; the rename is still atomic.
            named = tmp.with_name(tmp.name + suffix)
            try:
                save(str(named))
                os.replace(named, tmp)
            finally:
                named.unlink(missing_ok=True)

        checkpoints.write_atomic(args.dst, writer)
    else:
        checkpoints.write(args.dst, state)
    print(f"wrote {args.dst} ({args.model}, {keras.backend.backend()} backend)")
    return 0


def classes_in(state, info) -> int:
    """The class count of a torch-layout checkpoint: the rows of its last classifier layer's weight (a block's
    first weight: saliency_unet's `conv_0.0.weight`), the registry's default when the checkpoint has no
    head."""
    head = info.classifier[-1]
    key = next((k for k in state if k == f"{head}.weight" or (k.startswith(f"{head}.") and k.endswith(".weight"))),
               None)
    return int(state[key].shape[0]) if key is not None else info.num_classes
