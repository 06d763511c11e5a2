"""The check of a twin pair registered from outside the repository (`twins.registry.register`), run on the first
build of its Keras twin in a process (`twins.registry.on_first_build`; `twins_cli` installs it when imported, so
every `twins` tool, parity worker and benchmark runs it): the Keras twin's weights and the torch twin's state_dict
must correspond key for key before any tool compares, converts or trains them.
"""
from __future__ import annotations

from twins import checkpoints, registry


def check_pair(name: str, framework: str, model, options: dict) -> None:
    """After the Keras twin of the registered pair `name` is built: raise `registry.PairError` listing, in one
    message, every Keras weight whose layer name maps to no key of the torch twin's state_dict (`weights.slots`: the
    layer name with `-` for `.`, then weight/bias/BatchNorm's names), every torch key with no Keras weight, and every
    key whose shapes differ in torch's layout. The torch twin is built with the same options (less the Keras-only
    `input_shape`). Nothing is checked after a torch build, or where torch is not installed."""
    if framework != "Keras":
        return
    try:
        import torch_impl
    except ImportError:
        return
    from keras_impl import weights

    torch_state = torch_impl.build(name, **{k: v for k, v in options.items() if k != "input_shape"}).state_dict()
    try:
        keras_slots = weights.slots(model)
    except NotImplementedError as error:
        raise registry.PairError(f"the registered pair {name!r}: {error}") from None
    keras_shapes = {slot.key: tuple(slot.torch_shape) for slot in keras_slots}
    torch_shapes = {k: tuple(v.shape) for k, v in torch_state.items() if not checkpoints.is_counter(k)}
    layer_of = {slot.key: slot.variable.path.rsplit("/", 1)[0] for slot in keras_slots}
    keras_only = [k for k in keras_shapes if k not in torch_shapes]
    torch_only = [k for k in torch_shapes if k not in keras_shapes]
    shapes = [k for k in keras_shapes if k in torch_shapes and keras_shapes[k] != torch_shapes[k]]
    if not (keras_only or torch_only or shapes):
        return
    lines = [f"the registered pair {name!r} does not correspond: its Keras twin's weights (layer name with '-' for "
             f"'.', then weight/bias/BatchNorm's names) and its torch twin's state_dict keys differ"]
    if keras_only:
        lines.append(f"  {len(keras_only)} Keras weights map to no torch key: "
                     + ", ".join(f"{k} (layer {layer_of[k]})" for k in keras_only))
    if torch_only:
        lines.append(f"  {len(torch_only)} torch keys have no Keras layer: " + ", ".join(torch_only))
    if shapes:
        lines.append(f"  {len(shapes)} keys differ in shape (torch layout): "
                     + ", ".join(f"{k} Keras {keras_shapes[k]} torch {torch_shapes[k]}" for k in shapes))
    raise registry.PairError("\n".join(lines))
