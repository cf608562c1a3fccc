"""Test-wide settings."""

import torch

# One intra-op thread: on a busy 2-core machine spinning OpenMP workers make the math tests
# several times slower (52 s vs 8 s for tests/test_maml.py, measured), and one thread keeps
# reductions in a fixed order.
torch.set_num_threads(1)
