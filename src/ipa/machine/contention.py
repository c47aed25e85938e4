"""How a machine's CPUs slow the batches that share them: the simulator's machine model and the plan's.

A profile row times a batch with the machine to itself. Served, a batch shares the CPUs with the other
stages' replicas, serving's processes and a local load generator, and it takes longer, more as the machine gets
busier. The simulator runs every batch at
`shared_rate` moment by moment; a plan (`ipa.optimize.problem.Problem.contended`) stretches each stage's
rows by it at the load the plan is for, so admission and capacity expect what the machine will do.
"""

from __future__ import annotations


def shared_rate(demand: float, own: float, cpus: float, around: float | None = None) -> float:
    """The pace a running batch keeps (1: its own) on `cpus` CPUs that `demand` CPUs of work share, `own` of them
    its own. The rest keeps each CPU busy a share rho of the time at moments that do not wait for it: rho^cpus of
    the time the batch finds every CPU taken and shares one with one other thread, so it is slowed below
    saturation too; past it, every running thing gets at most cpus / demand (processor sharing). Fitted on served
    batches' wall time over their CPU (docs/results.md), where the fluid share alone says 1.0 until every CPU is
    busy. `around`: the demand the wait is judged by when it is not the instant's (the simulator's mean over the
    last second, as the fit had cell means)."""
    rho = min(1.0, max(0.0, (demand if around is None else around) - own) / cpus)
    return min(1.0 if demand <= cpus else cpus / demand, 1.0 - 0.5 * rho ** cpus)
