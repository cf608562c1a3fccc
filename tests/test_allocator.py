"""controller.allocator: freed blocks of a few MiB stay in the heap for reuse (glibc)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="mallopt is glibc's",
)

# Allocate and free a 4 MiB block, then report the heap's free bytes (mallinfo2, glibc >= 2.33):
# a block served by mmap goes back to the system on free and never shows there.
PROBE = """
import ctypes, sys
from controller.allocator import keep_freed_memory
print(keep_freed_memory())
libc = ctypes.CDLL("libc.so.6")
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
block = libc.malloc(4 << 20)
ctypes.memset(block, 1, 4 << 20)
mapped = libc.mallinfo2().hblkhd
libc.free(ctypes.c_void_p(block))
print(mapped, libc.mallinfo2().fordblks)
"""


def _probe(switch: str | None) -> tuple[bool, int, int]:
    env = dict(os.environ)
    env.pop("ADAPTCTL_KEEP_FREED_MEMORY", None)
    if switch is not None:
        env["ADAPTCTL_KEEP_FREED_MEMORY"] = switch
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0] == "True", int(out[1]), int(out[2])


def test_freed_block_stays_in_the_heap() -> None:
    applied, mapped, free_after = _probe(None)
    assert applied
    assert mapped < 4 << 20  # the block came from the heap, not from mmap
    assert free_after >= 4 << 20  # and stayed there after free


def test_switch_off_leaves_glibc_defaults() -> None:
    applied, mapped, free_after = _probe("0")
    assert not applied
    assert mapped >= 4 << 20  # glibc's default: a 4 MiB block is mmapped
    assert free_after < 4 << 20  # and returned to the system on free
