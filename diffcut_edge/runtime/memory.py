"""Will it fit? One check, before a large allocation, against the memory the machine has free.

An 8 GB board fails late and badly when an array does not fit (the OOM killer, or a MemoryError deep
inside NumPy): the stages that can size their work in advance (post-processing at a large mask size,
a large benchmark batch) ask here first and refuse in one line saying what to lower.
"""

from __future__ import annotations

from diffcut_edge.errors import DiffCutError

SHARE = 0.8  # of the available memory a single step may plan to use


def available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), or None where it cannot be read (then nothing is checked)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_fits(needed: int, what: str, lower: str) -> None:
    """Raise a DiffCutError when ``needed`` bytes exceed :data:`SHARE` of the available memory."""
    free = available_bytes()
    if free is not None and needed > SHARE * free:
        raise DiffCutError(
            f"{what} needs about {needed / 2**30:.1f} GiB, and {free / 2**30:.1f} GiB is available: {lower}"
        )
