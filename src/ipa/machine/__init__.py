"""The machine's speed: how fast this machine runs the profiled rows now (`speed.MachineSpeed`), measured from served
batches (`measure`), followed from one served cell to the next (`tracker`), replayed over time by the simulator
(`replay`), and how batches sharing its CPUs slow each other (`contention`)."""
