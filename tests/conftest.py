import os
from pathlib import Path

import pytest
import torch

from mmlab.config import get_preset


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def nano():
    return get_preset("nano")


@pytest.fixture
def mirror_file():
    """A file of the data mirror ($MMLAB_DATA_MIRROR, else ../shared/data beside the repo).

    When MMLAB_DATA_MIRROR is set (as in CI) a missing file fails the test; otherwise it skips."""
    configured = os.environ.get("MMLAB_DATA_MIRROR")
    root = Path(configured) if configured else Path(__file__).resolve().parents[2] / "shared" / "data"

    def find(name: str) -> Path:
        path = root / name
        if not path.is_file():
            if configured:
                pytest.fail(f"{name} not found in MMLAB_DATA_MIRROR={configured}")
            pytest.skip(f"{name} not in the data mirror {root}")
        return path

    return find
