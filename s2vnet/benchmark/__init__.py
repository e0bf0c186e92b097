"""Speed and memory measurements behind ``tools/benchmark.py`` (the paper's Table 5).

* :mod:`~s2vnet.benchmark.timing` -- generic helpers: median of timed runs with peak memory,
  ABBA-alternating pairs of two functions, one timed call;
* :mod:`~s2vnet.benchmark.measurements` -- what is measured (automatic passes with and without
  propagation, a click round, the encoder, SwinUNETR, a training step, the data pipeline, a
  per-module profile), each in a fresh process (:func:`run_in_subprocess`);
* :mod:`~s2vnet.benchmark.gpu_check` -- the GPU readiness check of ``scripts/gpu_check.sh``
  (docs/gpu.md): install, gpu tests and these measurements within a time limit, one report.
"""
from s2vnet.benchmark.measurements import measure, run_in_subprocess
from s2vnet.benchmark.timing import alternating_runs, call_seconds, synchronize, timed_runs

__all__ = ["alternating_runs", "call_seconds", "measure", "run_in_subprocess", "synchronize", "timed_runs"]
