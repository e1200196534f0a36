"""Fixtures for the loading tests: a blocked network, a temporary Hugging Face cache, a tiny model."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Fail the test if anything opens a network connection (the hub must not be needed)."""
    attempts: list[tuple] = []

    def blocked(*args, **kwargs):
        attempts.append(args[1:] if args else kwargs)
        raise OSError("network access is blocked in gsx loading tests")

    monkeypatch.setattr(socket.socket, "connect", blocked)
    monkeypatch.setattr(socket.socket, "connect_ex", blocked)
    monkeypatch.setattr(socket, "create_connection", blocked)
    yield attempts
    assert not attempts, f"the test tried to open network connections: {attempts}"


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    """Point HF_HOME and HF_HUB_CACHE at an empty folder, set HF_HUB_OFFLINE=1, unset GSX_SAE_DIR."""
    home = tmp_path / "hf"
    cache = home / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("GSX_SAE_DIR", raising=False)
    return cache


@pytest.fixture(scope="session")
def tiny_model_random_norms():
    """The gsx random tiny model (d_model 64, 2 layers, 4 heads of 16) with random norm weights.

    The norm weights are randomised so that a hook before the weight and a hook
    after it carry different values.
    """
    from gsx.models import random_tiny_model

    model = random_tiny_model()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for block in model.blocks:
            for norm in (block.ln1, block.ln2):
                norm.w.copy_(torch.rand(norm.w.shape, generator=generator) * 1.5 + 0.25)
    return model
