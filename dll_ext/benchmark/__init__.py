"""Benchmarks of dll_ext ops against native PyTorch: a generic harness and per-op cases.

Run them with `dll-ext bench [--quick] [--device cpu|cuda] [--op NAME] [--out DIR]`, or as
pytest-benchmark tests with `pytest benchmarks/`.
"""
from dll_ext.benchmark.harness import (Case, Impls, Settings, format_table, measure_peak, run_cases,
                                      steady_state_malloc, time_case, write_json, write_plot)

__all__ = ["Case", "Impls", "Settings", "format_table", "measure_peak", "run_cases", "steady_state_malloc",
           "time_case", "write_json", "write_plot"]
