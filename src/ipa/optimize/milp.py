"""The problem as an integer program: IPA's Gurobi formulation (`gurobi`) and the same model on HiGHS (`milp`).

Both are anchors for the exact solver: the same optimum, found by a general-purpose solver. Per stage s,
a binary x[s, r] picks one profiled (variant, batch, cores) row r; an integer n[s] counts its replicas.

    one row per stage        sum_r x[s, r] = 1
    throughput               x[s, r] = 1  =>  n[s] * h_r >= load           (IPA's indicator constraint)
    latency                  sum_s sum_r (l_r + (b_r - 1) / load) x[s, r] <= SLA - serving latency
    cores                    C = sum_s sum_r c_r n[s] x[s, r]  (<= the core budget, when there is one)
    CPU                      sum_s sum_r d_r x[s, r] <= CPUs - serving's (when bounded)
    maximise                 alpha A - beta C - gamma sum b_r x - delta (idle C + sum load e_r / b_r x)

`multiply` accuracy: IPA's own code leaves it unimplemented for Gurobi ("quadratic limitation"); here
the product is built stage by stage, p_s = sum_v a_v z[s, v] with z[s, v] = p_{s-1} * i[s, v], each
product of a [0, 1] variable and a binary linearised exactly (McCormick). `sum` and `average` are
linear. Gurobi keeps IPA's shape (variant and batch binaries, their AND, indicator constraints, a
bilinear n x x cost that Gurobi linearises itself); HiGHS needs everything linear: n[s] >= the row's
replica count, and y = n x by McCormick. Rows that could not reach the load within the scaling cap
are left out before the model is built, as Gurobi's presolve would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ipa.errors import ConfigError
from ipa.optimize.problem import EPS, Option, Problem
from ipa.profiles.table import Profile

Chosen = list[Option]


@dataclass(frozen=True)
class Row:
    """One candidate of a stage with everything the model needs, at one load."""

    profile: Profile
    accuracy: float
    need: int  # fewest replicas that sustain the load
    latency: float  # p99 of a batch plus the batch-fill wait
    cpu: float  # cores burned at the load
    dynamic_w: float  # dynamic power at the load


class SolverUnavailable(ConfigError):
    """The solver's package is not installed, or its licence refuses the instance."""


def _rows(problem: Problem, load: float) -> list[list[Row]]:
    out = []
    for stage in problem.spec.stage_names:
        rows = []
        frozen = problem.frozen_variants.get(stage)
        for p in problem.profiles.for_stage(stage):
            if p.batch > problem.batching_cap or (frozen and p.variant != frozen):
                continue
            need = max(1, math.ceil(load / p.throughput_rps - EPS))
            if problem.frozen_replicas:
                if need > problem.frozen_replicas:
                    continue
                need = problem.frozen_replicas
            elif need > problem.scaling_cap:
                continue
            o = problem.option(p, load, replicas=need)
            rows.append(Row(p, o.accuracy, need, o.latency_s, o.cpu_demand,
                            load * p.energy_j_per_batch / p.batch))
        out.append(rows)
    return out


def _chosen(problem: Problem, load: float, rows: list[list[Row]], picks: list[int], replicas: list[int]) -> Chosen:
    return [problem.option(rs[i].profile, load, replicas=n) for rs, i, n in zip(rows, picks, replicas)]


def _n_bounds(problem: Problem) -> tuple[int, int]:
    if problem.frozen_replicas:
        return problem.frozen_replicas, problem.frozen_replicas
    return 1, problem.scaling_cap


# -- HiGHS ---------------------------------------------------------------------------------------------

class _Lp:
    """A sparse integer program built as arrays and handed to HiGHS in one call (an expression object per
    term is what made a 3 x 10 instance take seconds)."""

    def __init__(self):
        self.lb: list[float] = []
        self.ub: list[float] = []
        self.cost: list[float] = []
        self.integer: list[int] = []
        self.rows: list[tuple[float, float, list[int], list[float]]] = []

    def var(self, lb: float, ub: float, cost: float = 0.0, integer: bool = False) -> int:
        self.lb.append(lb)
        self.ub.append(ub)
        self.cost.append(cost)
        self.integer.append(int(integer))
        return len(self.lb) - 1

    def row(self, terms: dict[int, float], lo: float = -math.inf, hi: float = math.inf) -> None:
        self.rows.append((lo, hi, list(terms), list(terms.values())))

    def maximize(self, highspy) -> list[float] | None:
        import numpy as np

        h = _highs(highspy)
        h.setOptionValue("mip_rel_gap", 0.0)
        h.setOptionValue("mip_abs_gap", 1e-9)
        inf = highspy.kHighsInf
        n = len(self.lb)
        clip = lambda v: np.clip(np.array(v, dtype=float), -inf, inf)  # noqa: E731
        h.addVars(n, clip(self.lb), clip(self.ub))
        h.changeColsCost(n, np.arange(n, dtype=np.int32), np.array(self.cost, dtype=float))
        h.changeColsIntegrality(n, np.arange(n, dtype=np.int32),
                                np.array([highspy.HighsVarType.kInteger if i else highspy.HighsVarType.kContinuous
                                          for i in self.integer]))
        starts, index, value = [], [], []
        for _, _, idx, val in self.rows:
            starts.append(len(index))
            index += idx
            value += val
        h.addRows(len(self.rows), clip([r[0] for r in self.rows]), clip([r[1] for r in self.rows]), len(index),
                  np.array(starts, dtype=np.int32), np.array(index, dtype=np.int32), np.array(value, dtype=float))
        h.changeObjectiveSense(highspy.ObjSense.kMaximize)
        h.run()
        if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
            return None
        return list(h.getSolution().col_value)


def milp(problem: Problem, load: float) -> Chosen | None:
    """The optimum by HiGHS (an open MILP solver), or None if nothing is feasible."""
    try:
        import highspy
    except ImportError:
        raise SolverUnavailable("solver 'milp' needs HiGHS: pip install highspy (or pip install 'ipa[solvers]')") from None
    rows = _rows(problem, load)
    if any(not rs for rs in rows):
        return None
    lp = _Lp()
    lo, hi = _n_bounds(problem)
    w = problem.weights
    core_price = w.beta + w.delta * problem.idle_power_w_per_core
    x = [[lp.var(0, 1, -(w.gamma * r.profile.batch + w.delta * r.dynamic_w), True) for r in rs] for rs in rows]
    n = [lp.var(lo, hi, 0.0, True) for _ in rows]
    latency, cpu, cores_used = {}, {}, {}
    for s, rs in enumerate(rows):
        lp.row({xi: 1.0 for xi in x[s]}, 1, 1)
        lp.row({n[s]: 1.0} | {xi: -r.need for r, xi in zip(rs, x[s])}, lo=0)  # n >= the chosen row's replicas
        for c in sorted({r.profile.cores for r in rs}):  # cores of the stage = sum_c c * (n AND "runs on c")
            k = {xi: 1.0 for r, xi in zip(rs, x[s]) if r.profile.cores == c}
            y = lp.var(0, hi, -core_price * c)
            lp.row({y: 1.0} | {xi: -hi for xi in k}, hi=0)
            lp.row({y: 1.0, n[s]: -1.0}, hi=0)
            lp.row({y: 1.0, n[s]: -1.0} | {xi: -hi for xi in k}, lo=-hi)
            cores_used[y] = float(c)
        for r, xi in zip(rs, x[s]):
            latency[xi] = r.latency
            cpu[xi] = r.cpu
    lp.row(latency, hi=problem.latency_budget_s + EPS)
    if problem.max_cores is not None:
        lp.row(cores_used, hi=problem.max_cores + EPS)
    if problem.cpus is not None:
        lp.row(cpu, hi=problem.cpu_budget(load) + EPS)
    for var, coef in _accuracy_terms(problem, rows, x, lp).items():
        lp.cost[var] += w.alpha * coef
    values = lp.maximize(highspy)
    if values is None:
        return None
    picks = [max(range(len(xs)), key=lambda i: values[xs[i]]) for xs in x]
    return _chosen(problem, load, rows, picks, [round(values[v]) for v in n])


def _accuracy_terms(problem: Problem, rows, x, lp: _Lp) -> dict[int, float]:
    """The pipeline accuracy as {variable: coefficient}; multiply: the exact product chain, with
    z[s, v] = p_{s-1} * i[s, v] for each variant v (i[s, v] = the sum of its rows' x)."""
    method = problem.spec.accuracy_method
    if method in ("sum", "average"):
        scale = 1.0 / len(rows) if method == "average" else 1.0
        return {xi: r.accuracy * scale for rs, xs in zip(rows, x) for r, xi in zip(rs, xs)}
    product = {xi: r.accuracy for r, xi in zip(rows[0], x[0])}
    for rs, xs in zip(rows[1:], x[1:]):
        nxt: dict[int, float] = {}
        for v in sorted({r.profile.variant for r in rs}):
            chosen = {xi: 1.0 for r, xi in zip(rs, xs) if r.profile.variant == v}
            acc = next(r.accuracy for r in rs if r.profile.variant == v)
            z = lp.var(0, 1)
            lp.row({z: 1.0} | {xi: -1.0 for xi in chosen}, hi=0)  # z <= i
            lp.row({z: 1.0} | {k: -c for k, c in product.items()}, hi=0)  # z <= p
            lp.row({z: 1.0} | {k: -c for k, c in product.items()} | {xi: -1.0 for xi in chosen}, lo=-1)  # z >= p + i - 1
            nxt[z] = acc
        product = nxt
    return product


def _highs(highspy):
    """A quiet HiGHS: the library prints a banner to stdout (the fd, not sys.stdout) on its first instance,
    which would break `ipa optimize --json`."""
    import os
    import sys

    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            h = highspy.Highs()
            h.setOptionValue("output_flag", False)
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    return h


# -- Gurobi (IPA's formulation) ------------------------------------------------------------------------

def gurobi(problem: Problem, load: float) -> Chosen | None:
    """IPA's integer program on Gurobi: variant and batch binaries, the row binary that is their AND (refined
    by cores), indicator throughput constraints, integer replicas, bilinear cores. None if nothing is feasible."""
    try:
        import gurobipy as gp
        from gurobipy import GRB
    except ImportError:
        raise SolverUnavailable("solver 'gurobi' needs gurobipy: pip install gurobipy (a size-limited licence comes "
                                "with it; or pip install 'ipa[gurobi]')") from None
    rows = _rows(problem, load)
    if any(not rs for rs in rows):
        return None
    with gp.Env(params={"OutputFlag": 0}) as env, gp.Model("ipa", env=env) as m:
        m.Params.MIPGap = 0.0
        m.Params.MIPGapAbs = 1e-9
        lo, hi = _n_bounds(problem)
        x, n, chosen_variant = [], [], []
        for rs in rows:
            variants = {v: m.addVar(vtype=GRB.BINARY) for v in sorted({r.profile.variant for r in rs})}
            batches = {b: m.addVar(vtype=GRB.BINARY) for b in sorted({r.profile.batch for r in rs})}
            n_s = m.addVar(lb=lo, ub=hi, vtype=GRB.INTEGER)
            x_s = [m.addVar(vtype=GRB.BINARY) for _ in rs]
            m.addConstr(gp.quicksum(variants.values()) == 1)
            m.addConstr(gp.quicksum(batches.values()) == 1)
            m.addConstr(gp.quicksum(x_s) == 1)
            for v, i_v in variants.items():  # with one row chosen, x = i AND b (and the cores it runs on)
                m.addConstr(i_v == gp.quicksum(xi for r, xi in zip(rs, x_s) if r.profile.variant == v))
            for b, b_b in batches.items():
                m.addConstr(b_b == gp.quicksum(xi for r, xi in zip(rs, x_s) if r.profile.batch == b))
            for r, xi in zip(rs, x_s):
                m.addGenConstrIndicator(xi, True, n_s * r.profile.throughput_rps >= load)
            x.append(x_s)
            n.append(n_s)
            chosen_variant.append(variants)
        pairs = [(r, xi, n_s) for rs, xs, n_s in zip(rows, x, n) for r, xi in zip(rs, xs)]
        m.addConstr(gp.quicksum(r.latency * xi for r, xi, _ in pairs) <= problem.latency_budget_s + EPS)
        cores = gp.quicksum(r.profile.cores * n_s * xi for r, xi, n_s in pairs)
        if problem.max_cores is not None:
            m.addQConstr(cores <= problem.max_cores + EPS)
        if problem.cpus is not None:
            m.addConstr(gp.quicksum(r.cpu * xi for r, xi, _ in pairs) <= problem.cpu_budget(load) + EPS)
        accuracy = _gurobi_accuracy(gp, m, problem, rows, chosen_variant)
        w = problem.weights
        cost = ((w.beta + w.delta * problem.idle_power_w_per_core) * cores
                + gp.quicksum((w.gamma * r.profile.batch + w.delta * r.dynamic_w) * xi for r, xi, _ in pairs))
        m.setObjective(w.alpha * accuracy - cost, GRB.MAXIMIZE)
        try:
            m.optimize()
        except gp.GurobiError as e:
            raise SolverUnavailable(f"gurobi refused the instance ({m.NumVars} variables, {m.NumConstrs} linear "
                                    f"and {m.NumGenConstrs} general constraints): {e}") from None
        if m.Status != GRB.OPTIMAL:
            return None
        picks = [max(range(len(xs)), key=lambda k: xs[k].X) for xs in x]
        return _chosen(problem, load, rows, picks, [round(v.X) for v in n])


def _gurobi_accuracy(gp, m, problem: Problem, rows, chosen_variant):
    """The pipeline accuracy over the variant binaries i[s, v]; multiply: p_s = sum_v a_v z[s, v],
    z[s, v] = p_{s-1} * i[s, v] linearised exactly."""
    acc = [{r.profile.variant: r.accuracy for r in rs} for rs in rows]
    per_stage = [gp.quicksum(acc[s][v] * i_v for v, i_v in iv.items()) for s, iv in enumerate(chosen_variant)]
    method = problem.spec.accuracy_method
    if method in ("sum", "average"):
        total = gp.quicksum(per_stage)
        return total * (1.0 / len(rows)) if method == "average" else total
    product = per_stage[0]
    for s, iv in enumerate(chosen_variant[1:], start=1):
        terms = []
        for v, i_v in iv.items():
            z = m.addVar(lb=0, ub=1)
            m.addConstr(z <= i_v)
            m.addConstr(z <= product)
            m.addConstr(z >= product + i_v - 1)
            terms.append(acc[s][v] * z)
        product = gp.quicksum(terms)
    return product
