"""How busy the machine was while a workload was timed.

Two measures, recorded before/after each workload: ``os.getloadavg()`` (1, 5, 15-minute
averages; they include this benchmark's own threads), and the share of all cores that other
processes used during the window: the busy time in ``/proc/stat`` (including steal time on a
VM) minus this process's CPU time, over wall time x cores. On 2 cores any other load turns a
parallel op's 0.1 ms into milliseconds, so the numbers are printed beside the times.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

# /proc/stat "cpu" line: user nice system idle iowait irq softirq steal (guest is in user).
BUSY_FIELDS = (0, 1, 2, 5, 6, 7)


@dataclass
class Load:
    loadavg_before: tuple[float, float, float] | None = None
    loadavg_after: tuple[float, float, float] | None = None
    others_share: float | None = None  # fraction of all cores used by other processes


def _loadavg() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except OSError:
        return None


def _busy_seconds() -> float | None:
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()[1:]
    except OSError:
        return None
    return sum(int(fields[i]) for i in BUSY_FIELDS) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


@contextmanager
def watch_load() -> Iterator[Load]:
    """Fill a :class:`Load` for the duration of the ``with`` block."""
    load = Load(loadavg_before=_loadavg())
    busy, own, start = _busy_seconds(), _own_cpu_seconds(), time.perf_counter()
    try:
        yield load
    finally:
        load.loadavg_after = _loadavg()
        busy_after = _busy_seconds()
        if busy is not None and busy_after is not None:
            wall = time.perf_counter() - start
            others = (busy_after - busy) - (_own_cpu_seconds() - own)
            load.others_share = max(0.0, others / (wall * (os.cpu_count() or 1)))
