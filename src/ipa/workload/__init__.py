"""Workloads: requests per second over time, from the Twitter trace or synthetic patterns."""

from ipa.workload.patterns import FORMS, PATTERNS, Workload, load_workload
from ipa.workload.trace import find_trace, read_trace

__all__ = ["FORMS", "PATTERNS", "Workload", "find_trace", "load_workload", "read_trace"]
