"""Wall-clock time and peak resident memory (RSS) of a block of code.

`measure_resources` samples the process's RSS in a background thread every
`interval_s` seconds. A peak shorter than the interval can fall between two
samples, so the process's lifetime maximum (`resource.getrusage`'s ru_maxrss) is
used as well when it rose inside the block: then it is the exact peak.
"""

from __future__ import annotations

import contextlib
import os
import resource
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

_MIB = 1024 * 1024


def current_rss_bytes() -> int | None:
    """Return the resident set size of this process in bytes, or None where it cannot be read."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.Process().memory_info().rss)


def max_rss_bytes() -> int:
    """Return the peak RSS of this process so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


@dataclass
class ResourceUsage:
    """Time and memory of one measured block."""

    seconds: float = 0.0
    """Wall-clock seconds."""
    rss_before_mib: float | None = None
    """RSS when the block started (MiB)."""
    peak_rss_mib: float | None = None
    """Largest RSS seen while the block ran (MiB)."""
    peak_increase_mib: float | None = None
    """peak_rss_mib − rss_before_mib: the memory the block added at its peak."""

    def to_dict(self) -> dict[str, Any]:
        """Return the fields, seconds rounded to ms and MiB to 0.1."""
        out = asdict(self)
        out["seconds"] = round(self.seconds, 3)
        for key in ("rss_before_mib", "peak_rss_mib", "peak_increase_mib"):
            if out[key] is not None:
                out[key] = round(out[key], 1)
        return out


@contextlib.contextmanager
def measure_resources(interval_s: float = 0.005) -> Iterator[ResourceUsage]:
    """Measure the wall-clock time and peak RSS of the `with` block; the yielded record is filled on exit."""
    usage = ResourceUsage()
    before = current_rss_bytes()
    lifetime_peak_before = max_rss_bytes()
    peak = [before or 0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(interval_s):
            rss = current_rss_bytes()
            if rss is not None and rss > peak[0]:
                peak[0] = rss

    sampler = threading.Thread(target=sample, name="gsx-rss-sampler", daemon=True)
    if before is not None:
        sampler.start()
    started = time.perf_counter()
    try:
        yield usage
    finally:
        usage.seconds = time.perf_counter() - started
        stop.set()
        if sampler.is_alive():
            sampler.join()
        lifetime_peak = max_rss_bytes()
        if lifetime_peak > lifetime_peak_before:
            peak[0] = max(peak[0], lifetime_peak)
        if before is not None:
            usage.rss_before_mib = before / _MIB
            usage.peak_rss_mib = peak[0] / _MIB
            usage.peak_increase_mib = (peak[0] - before) / _MIB
