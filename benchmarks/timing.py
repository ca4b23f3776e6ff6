"""The one timing routine, and the interleaved schedule of the repeats.

A call is timed by the wall clock around it (``time.perf_counter``); every timed call returns
only when its work is done. The process's minor page faults during each timed repeat are
counted too: a fresh page costs ~3 us to touch on the project's VM (benchmarks/NOTES.md, O18),
so how many pages a call's allocations fault explains much of a small call's spread.

Repeats of several calls are interleaved (A B C A B C ...), so that a change of load on the
machine hits them all alike, and each call's repeats are spread evenly over the whole
measurement, however many it gets.
"""

from __future__ import annotations

import math
import resource
import statistics
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any


def time_call(call: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of one call."""
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


def minor_faults() -> int:
    """Minor page faults of this process so far (every thread's)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


@dataclass
class Samples:
    seconds: list[float] = field(default_factory=list)
    faults: list[int] = field(default_factory=list)  # per timed repeat, when counted

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def summary(self) -> dict[str, Any]:
        summary = {"median": self.median, "min": min(self.seconds), "max": max(self.seconds),
                   "repeats": len(self.seconds), "samples": self.seconds}
        if self.faults:
            summary["page_faults"] = statistics.median(self.faults)
        return summary


def repeats_for(seconds: float, minimum: int, maximum: int, target_seconds: float) -> int:
    """Enough repeats of a call taking ``seconds`` to fill ``target_seconds``, within bounds."""
    wanted = math.ceil(target_seconds / max(seconds, 1e-9))
    return max(minimum, min(maximum, wanted))


def interleaved(
    calls: dict[Hashable, tuple[Callable[[], Any], int]],
    on_error: Callable[[Hashable, BaseException], None],
) -> dict[Hashable, Samples]:
    """Time each ``calls[key] = (call, repeats)`` ``repeats`` times, interleaved.

    There are as many rounds as the largest repeat count; a call with r repeats runs in the
    rounds where floor(round * r / rounds) steps up. A call that raises is reported to
    ``on_error`` and dropped from the later rounds.
    """
    rounds = max((repeats for _, repeats in calls.values()), default=0)
    samples = {key: Samples() for key in calls}
    failed: set[Hashable] = set()
    for r in range(rounds):
        for key, (call, repeats) in calls.items():
            if key in failed or (r + 1) * repeats // rounds == r * repeats // rounds:
                continue
            try:
                before = minor_faults()
                samples[key].seconds.append(time_call(call)[0])
                samples[key].faults.append(minor_faults() - before)
            except Exception as error:  # a peer failing mid-run must not end the run
                failed.add(key)
                on_error(key, error)
    return samples
