"""Generic timing and memory helpers of the benchmark: medians of timed runs, peak memory, ABBA pairs.

Peak memory is the process RSS high-water mark on CPU (``VmHWM``, reset before the timed runs
where Linux allows it) and ``torch.cuda.max_memory_allocated`` on GPU, so a measurement should
run in a process of its own (see :func:`s2vnet.benchmark.measurements.run_in_subprocess`).
Every time is wall-clock with the device's queued work finished.
"""
import logging
import resource
import statistics
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------ memory
def _vm_hwm_mb() -> Optional[float]:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _vm_rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux >= 4.0: writing 5 resets the RSS high-water mark to the current RSS
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        logger.warning("cannot reset the RSS high-water mark; peak memory includes set-up")


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return _vm_hwm_mb() or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (a no-op on CPU), so that a clock read after it is fair."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_runs(function: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> Dict[str, object]:
    """Median seconds over ``repeats`` runs after ``warmup``; peak memory over the timed runs."""
    for _ in range(warmup):
        function()
    synchronize(device)
    before = _vm_rss_mb() if device.type == "cpu" else torch.cuda.memory_allocated(device) / 2**20
    _reset_peak(device)
    seconds = [call_seconds(function, device) for _ in range(repeats)]
    return {"seconds": seconds, "median_s": statistics.median(seconds), "peak_mb": _peak_mb(device), "memory_before_mb": before}


def alternating_runs(first: Callable[[], object], second: Callable[[], object], device: torch.device, repeats: int) -> Tuple[float, float]:
    """Median seconds of ``first`` and of ``second``, run alternately ``repeats`` times each (after
    one warm-up of each): a ratio of the two then sees the same machine state, which separate
    measurement processes on a shared machine do not. The order flips every pair (ABBA...), so
    neither always runs on the caches the other left."""
    first(), second()
    synchronize(device)
    functions = (first, second)
    times: Tuple[List[float], List[float]] = ([], [])
    for repeat in range(repeats):
        for which in ((0, 1) if repeat % 2 == 0 else (1, 0)):
            times[which].append(call_seconds(functions[which], device))
    return statistics.median(times[0]), statistics.median(times[1])


def call_seconds(function: Callable[[], object], device: torch.device) -> float:
    """Wall time of one call, with the device's queued work finished before it returns."""
    start = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - start
