"""The simulator: a request-level discrete-event model of the pipeline on a machine, driven by profiles.

`core` runs the events (arrivals, batches, timeouts, reconfigurations, the machine's shared CPUs); `accounting`
keeps the per-second books beside it (requests through `ipa.runtime.series`, reserved cores, energy).
"""

from ipa.runtime.series import SimResult
from ipa.runtime.sim.core import Event, SimSettings, Simulator, scaled

__all__ = ["Event", "SimResult", "SimSettings", "Simulator", "scaled"]
