"""Timing helpers shared by the benchmarks."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path


def interleaved_ms(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple[float, list[float]]]:
    """Median ms per call (and every call's ms) for each runtime, the runtimes taking turns call by call.

    This machine's speed drifts (17 % across one `make bench` run, see bench/README.md);
    measuring one runtime after the other would put that drift into their ratios, taking turns
    spreads it over all of them.
    """
    for fn in calls.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            t = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t) * 1e3)
    return {name: (statistics.median(ts), ts) for name, ts in times.items()}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
