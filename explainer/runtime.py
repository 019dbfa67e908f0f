"""Process-level tuning for CPU runs.

glibc serves large allocations (above a dynamic threshold of at most 32 MiB) with fresh `mmap`
pages and hands them back on free; a backward pass that saves hundreds of activation tensors then
pays a page fault for every page it touches. On virtual machines that made a forward with autograd
20× slower than the same forward without it. Keeping freed memory in the heap removes the cost.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3


def keep_freed_memory() -> bool:
    """Ask glibc to serve large blocks from the heap and keep freed memory; False where not glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return all(
        (
            mallopt(_M_MMAP_THRESHOLD, 2**30),
            mallopt(_M_TRIM_THRESHOLD, 2**31 - 1),
            mallopt(_M_TOP_PAD, 256 * 2**20),
        )
    )
