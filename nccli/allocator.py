"""The C allocator told to keep freed memory for the next piece of work (glibc; elsewhere nothing changes).

Analyze allocates and frees arrays of a few MiB for every piece of rows. By
default glibc serves such arrays from fresh mappings and gives them back on
free, so the kernel maps and zeroes every page again: at K = 100 (N = 50 000,
d = 512) that was a third of the run. With a fixed mmap threshold (the
largest glibc allows) and a high trim threshold, freed memory stays in the
process for the next piece; the peak stays about what it was.
"""

import ctypes

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest (HEAP_MAX_SIZE / 2 on 64-bit)
TRIM_THRESHOLD = 256 * 2**20  # free memory kept at the top of a heap before any goes back


def keep_freed_memory() -> None:
    """Raise glibc's mmap and trim thresholds for this process; a no-op without glibc's ``mallopt``."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
