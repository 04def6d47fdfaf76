"""Performance measurement: the benchmark behind `python -m sam_lab.bench` and the reference loop."""

from sam_lab.perf.measure import BenchConfig, run_bench
from sam_lab.perf.memory import resident_bytes, step_peak_bytes
from sam_lab.perf.reference import ReferenceLoop, ReferenceSAM
from sam_lab.perf.table import format_table

__all__ = [
    "BenchConfig",
    "ReferenceLoop",
    "ReferenceSAM",
    "format_table",
    "resident_bytes",
    "run_bench",
    "step_peak_bytes",
]
