"""Test-wide settings."""

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

# One intra-op thread: on a busy 2-core machine spinning OpenMP workers make the math tests
# several times slower (52 s vs 8 s for tests/test_maml.py, measured), and one thread keeps
# reductions in a fixed order.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Default journals (controller.journal.state_dir) go to a fresh directory per test, never
    to the user's home, and no test sees another's."""
    directory = tmp_path_factory.mktemp("state")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ADAPTCTL_STATE_DIR", str(directory))
        yield directory
