"""The orchestration layer above both twins: the `twins` command (`main`), the parity engine
(`parity`), checkpoint conversion (`convert`), the report (`report`) and the TF32 switch both the
parity engine and the benchmark worker use (`precision`).

It imports `twins` (the framework-free core), `keras_impl` and `torch_impl`; the frameworks and the
twin packages are imported inside the functions that need them, so `twins --help` starts fast and a
parity worker imports Keras only after its backend is set.
"""
from twins import registry as _registry


def _check_pair(name, framework, model, options):
    from .pair_check import check_pair

    check_pair(name, framework, model, options)


# A pair registered from outside the repository is checked on the first build of its Keras twin (`pair_check`).
_registry.on_first_build(_check_pair)
