"""Shared fixtures: the tiny random model and, for `gemma` tests, the packaged Gemma 3 270M."""

from __future__ import annotations

import pytest
import torch

from gsx.models import ModelSpec, load_model, random_tiny_model


@pytest.fixture(scope="session")
def tiny_model():
    torch.manual_seed(0)
    return random_tiny_model()


@pytest.fixture(scope="session")
def gemma_model():
    return load_model(ModelSpec())
