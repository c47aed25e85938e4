"""The simulator: a request-level discrete-event model of the pipeline on a machine, driven by profiles.

`core` runs the events (arrivals, batches, timeouts, reconfigurations, the machine's shared CPUs); `accounting`
keeps the per-second books beside it (requests through `ipa.runtime.series`, reserved cores, energy).
"""

from ipa.runtime.series import SimResult
from ipa.runtime.sim.core import Event, Pace, SimSettings, Simulator, Speed, scaled

__all__ = ["Event", "Pace", "SimResult", "SimSettings", "Simulator", "Speed", "scaled"]
