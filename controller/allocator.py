"""Keep freed memory in the process, so that large tensors are not page-faulted in anew each time.

glibc's malloc serves blocks above its mmap threshold (128 KiB at start, raised dynamically up
to 32 MiB) with fresh ``mmap`` pages and gives them back on ``free``; it also trims the top of
its heap once more than twice that threshold is free. The policy's derivative products
(:mod:`meta_train.derivatives`) and the sampler allocate and free many arrays of a few MiB
(4,000 steps x 100 units of float32 is 1.6 MiB) in every Hessian-vector product, so each
allocation is paid again in page faults and the kernel's zeroing of the pages. Raising both
thresholds keeps that memory in the heap for reuse: ``python -m bench meta`` reports what this
saves. The PyTorch CPU performance guide makes the same point with jemalloc or tcmalloc; these
two ``mallopt`` settings reach the same end without preloading a library.

Only glibc has ``mallopt``; elsewhere (macOS, musl) nothing changes. ``ADAPTCTL_KEEP_FREED_MEMORY=0``
in the environment leaves glibc's defaults (a process that must return memory to the system).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

ENVIRONMENT_SWITCH = "ADAPTCTL_KEEP_FREED_MEMORY"

# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 * 1024 * 1024
"""Blocks below this come from the heap (glibc's largest allowed value on 64-bit)."""
TRIM_THRESHOLD = 1024 * 1024 * 1024
"""Free memory kept at the heap's top before it is returned to the system."""
TOP_PAD = 64 * 1024 * 1024
"""Extra memory requested with each heap growth."""


def keep_freed_memory() -> bool:
    """Set glibc's malloc to keep freed blocks for reuse (see the module's docstring).

    Returns whether the settings took effect: False where the C library is not glibc or
    ``ADAPTCTL_KEEP_FREED_MEMORY`` is ``0``. Called once at the start of ``adaptctl``, the
    benches and each Ray worker.
    """
    if os.environ.get(ENVIRONMENT_SWITCH, "1") == "0":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    settings = (
        (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        (_M_TOP_PAD, TOP_PAD),
    )
    return all(libc.mallopt(option, value) == 1 for option, value in settings)
