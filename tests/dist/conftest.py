"""Two-process tests of tensor and expert parallelism: gloo on this CPU, one thread per rank."""

from __future__ import annotations

import pytest
import torch.distributed as dist


def pytest_collection_modifyitems(items):
    if not dist.is_available() or not dist.is_gloo_available():
        skip = pytest.mark.skip(reason="this torch has no gloo backend")
        for item in items:
            if "tests/dist" in str(item.fspath):
                item.add_marker(skip)
