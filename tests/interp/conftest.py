"""Fixtures for dashboard and steering tests: a small SAE, token batches, and Chromium."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from gsx.interp.browser import find_chromium

from .helpers import REPO_ROOT, make_jumprelu_sae


@pytest.fixture
def tiny_sae():
    return make_jumprelu_sae(64, 32)


@pytest.fixture
def tiny_tokens(tiny_model):
    texts = [
        "The minister said the plan would cut costs by a third.",
        "Shares in the firm rose sharply after the results.",
        "The team won the cup final in front of a home crowd.",
        "A new film opens in cinemas across the country this week.",
    ]
    tokens = tiny_model.to_tokens(texts, prepend_bos=True)
    return tokens[:, :40]


@pytest.fixture(scope="session")
def chromium() -> str:
    """Return the Chromium executable; install it with scripts/install-system-deps.sh when root.

    Skips only when Chromium is absent and this process cannot install it.
    """
    browser = find_chromium()
    if browser is not None:
        return browser
    script = REPO_ROOT / "scripts" / "install-system-deps.sh"
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(f"Chromium is not installed and this user cannot install it; run `sudo {script}`")
    subprocess.run(["sh", str(script)], check=True, timeout=900)
    browser = find_chromium()
    if browser is None:
        pytest.fail(f"{script} ran but no Chromium executable is on PATH")
    return browser
