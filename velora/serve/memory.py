"""Hand freed heap memory back to the OS after image decodes.

glibc keeps what a decode freed (in the decode thread's arena) for reuse, so one burst of large images leaves the
server at its peak size for good. `malloc_trim(0)` returns it; it costs microseconds when there is little to return.
"""

from __future__ import annotations

import ctypes
import platform


def _malloc_trim():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_TRIM = _malloc_trim()


def release_memory() -> bool:
    """Return freed heap pages to the OS (glibc only; elsewhere a no-op). True when it ran."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True
