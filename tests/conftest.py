"""Test-wide options: ``--device`` (or ``MIMO_TEST_DEVICE``) runs the device-aware tests (parity, engine) on
another device, e.g. ``MIMO_TEST_DEVICE=cuda pytest tests/parity tests/unit/test_engine.py``; where that device
does not exist they are skipped, saying why."""

from __future__ import annotations

import os

import pytest
import torch


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--device", default=os.environ.get("MIMO_TEST_DEVICE", "cpu"),
                     help="device for the device-aware tests (default: $MIMO_TEST_DEVICE, else cpu)")


@pytest.fixture(scope="session")
def device(request: pytest.FixtureRequest) -> torch.device:
    dev = torch.device(request.config.getoption("--device"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device here (--device / MIMO_TEST_DEVICE asked for one)")
    return dev
