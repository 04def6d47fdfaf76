"""Performance measurement: the benchmark behind `python -m sam_lab.bench` and the reference loop."""

from sam_lab.perf.measure import BenchConfig, format_table, resident_bytes, run_bench, step_peak_bytes
from sam_lab.perf.reference import ReferenceLoop, ReferenceSAM

__all__ = [
    "BenchConfig",
    "ReferenceLoop",
    "ReferenceSAM",
    "format_table",
    "resident_bytes",
    "run_bench",
    "step_peak_bytes",
]
