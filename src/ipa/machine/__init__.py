"""The machine's speed: how fast this machine runs the profiled rows now (`speed`), measured from served batches
(`measure`), followed from one served cell to the next (`tracker`), replayed over time by the simulator (`replay`),
and how batches sharing its CPUs slow each other (`contention`)."""

from ipa.machine.speed import MachineSpeed

__all__ = ["MachineSpeed"]
