"""Shared fixtures. The Keras backend is fixed per pytest process by KERAS_BACKEND (the Makefile runs
the suite once per backend); tests marked `keras` carry the backend in their ids."""
from __future__ import annotations

import os

import numpy as np
import pytest

BACKEND = os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

MODELS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]


def model_params(models=MODELS):
    """Parametrize over models with ids like `resnet50-jax`."""
    return pytest.mark.parametrize("model_name", models, ids=[f"{m}-{BACKEND}" for m in models])


@pytest.fixture
def rng():
    return np.random.RandomState(0)
