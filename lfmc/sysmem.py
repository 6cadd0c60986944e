"""This machine's memory as the OS reports it (os and /proc only): one place for the compiler's weight checks and
the runtime's memory budget and probes, which must not import each other's layers."""
from __future__ import annotations

import os


def proc_kib(path: str, field: str) -> int | None:
    """The value of ``field`` (in kB, as Linux writes them) in a /proc file such as /proc/meminfo or
    /proc/<pid>/status, or None where the file or the field is missing."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def available_memory() -> int | None:
    """Bytes of memory available now (Linux /proc/meminfo), or None where unknown."""
    kib = proc_kib("/proc/meminfo", "MemAvailable")
    if kib is not None:
        return kib * 1024
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def physical_memory() -> int | None:
    """Bytes of physical memory, or None where unknown."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
