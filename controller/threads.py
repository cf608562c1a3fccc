"""torch's thread count for one block of work, restored after it.

Multi-threaded torch (OpenMP) workers spin waiting for cores while MuJoCo's batch threads or
other processes hold them: the sampler runs its policy on one thread, the runtime adapts on
``ControllerConfig.adapt_threads``. Every such limit goes through :func:`torch_threads`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with torch's intra-op thread count set to ``count``; restore it after."""
    if count < 1:
        raise ValueError(f"torch needs at least one thread, got {count}")
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
