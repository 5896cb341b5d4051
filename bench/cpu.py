"""CPU seconds of a process: on a shared 2-core machine they compare across runs far better than wall time."""

from __future__ import annotations

import os


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of `pid` so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14 and 15 of the whole line)


def per_10k(cpu_s: float, events: int) -> float:
    return cpu_s * 10_000 / events
