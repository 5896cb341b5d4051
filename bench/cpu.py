"""CPU seconds of a process: on a shared 2-core machine they compare across runs far better than wall time."""

from __future__ import annotations

import os
from pathlib import Path


def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()  # fields from the 3rd (state) on


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of `pid` so far (Linux /proc)."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14 and 15 of the whole line)


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of `pid`, of its children that ended (cutime, cstime) and of those alive: a PostgreSQL and its backends."""
    fields = _stat(pid)
    total = sum(int(fields[i]) for i in (11, 12, 13, 14)) / os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                child = _stat(int(entry.name))
            except OSError:
                continue  # gone meanwhile
            if int(child[1]) == pid:
                total += (int(child[11]) + int(child[12])) / os.sysconf("SC_CLK_TCK")
    return total


def per_10k(cpu_s: float, events: int) -> float:
    return cpu_s * 10_000 / events
