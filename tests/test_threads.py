"""controller.threads.torch_threads sets torch's thread count for a block and restores it."""

from __future__ import annotations

import pytest
import torch

from controller.threads import torch_threads


def test_sets_and_restores_even_when_the_block_raises() -> None:
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError, match="inside"), torch_threads(1):
        raise RuntimeError("inside")
    assert torch.get_num_threads() == before


def test_refuses_no_threads() -> None:
    with pytest.raises(ValueError, match="at least one thread"), torch_threads(0):
        pass
