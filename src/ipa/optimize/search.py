"""Local search over configs: each stage's Pareto options, one or two stages re-picked at a time.

For a (variant, batch, cores) the best replica count is the fewest that sustain the load, and only a
stage's Pareto options can be part of an optimum (`solvers.stage_fronts`), so a config is one option
index per stage. From any config, `repair` re-picks options until every constraint holds, and `greedy`
re-picks the option of one stage, then of two stages together, while the objective improves, every
candidate of a move scored at once with numpy. The exact solver starts from what it finds (a near-optimal
incumbent prunes most of its dynamic program); Q-learning uses the states, rewards and moves.
"""

from __future__ import annotations

import numpy as np

from ipa.optimize.problem import Option, Problem

PENALTY = 10.0  # reward of a config that breaks a constraint: its objective less PENALTY x (1 + violation)


class Neighbourhood:
    """One decision's configs as an option index per stage (each stage's options sorted by latency), their
    objective and constraint violation, the moves between them, and the local search over them."""

    def __init__(self, problem: Problem, load: float, fronts: list[list[Option]]):
        self.problem, self.load, self.fronts = problem, load, fronts
        self.k = len(fronts)
        self.lat = [np.array([o.latency_s for o in f]) for f in fronts]
        self.pen = [np.array([o.penalty for o in f]) for f in fronts]
        self.acc = [np.array([o.accuracy for o in f]) for f in fronts]
        self.cores = [np.array([o.total_cores for o in f]) for f in fronts]
        self.cpu = [np.array([o.cpu_demand for o in f]) for f in fronts]
        self.keys = [[(o.variant, o.batch, o.cores) for o in f] for f in fronts]
        self.n_actions = 2 * self.k
        self.sla = problem.latency_budget_s
        self.budget = problem.max_cores if problem.max_cores is not None else np.inf
        self.cpu_budget = problem.cpu_budget(load)
        method = problem.spec.accuracy_method
        self.combine = np.prod if method == "multiply" else (np.mean if method == "average" else np.sum)
        self._cache: dict[tuple[int, ...], tuple[float, float]] = {}

    def key(self, state: tuple[int, ...]) -> tuple:
        return tuple(self.keys[i][j] for i, j in enumerate(state))

    def nearest(self, last: tuple) -> tuple[int, ...]:
        """The previous decision's config at this load: the same options where they are still Pareto, else
        the option with the closest latency on the same variant (or any)."""
        out = []
        for i, want in enumerate(last):
            if want in self.keys[i]:
                out.append(self.keys[i].index(want))
                continue
            same = [j for j, k in enumerate(self.keys[i]) if k[0] == want[0]] or list(range(len(self.keys[i])))
            out.append(same[0])
        return tuple(out)

    def step(self, state: tuple[int, ...], action: int) -> tuple[int, ...]:
        stage, up = divmod(action, 2)
        j = min(max(state[stage] + (1 if up else -1), 0), len(self.fronts[stage]) - 1)
        return state[:stage] + (j,) + state[stage + 1:]

    def _score(self, state: tuple[int, ...]) -> tuple[float, float]:
        """(objective, violation): violation 0 when every constraint holds."""
        hit = self._cache.get(state)
        if hit is not None:
            return hit
        lat = sum(self.lat[i][j] for i, j in enumerate(state))
        cores = sum(self.cores[i][j] for i, j in enumerate(state))
        cpu = sum(self.cpu[i][j] for i, j in enumerate(state))
        acc = float(self.combine([self.acc[i][j] for i, j in enumerate(state)]))
        objective = self.problem.weights.alpha * acc - sum(self.pen[i][j] for i, j in enumerate(state))
        violation = (max(0.0, lat / self.sla - 1) + max(0.0, cores - self.budget) / max(self.budget, 1)
                     + max(0.0, cpu - self.cpu_budget) / max(self.cpu_budget, 1e-9))
        self._cache[state] = (objective, violation)
        return objective, violation

    def feasible(self, state: tuple[int, ...]) -> bool:
        return self._score(state)[1] <= 1e-9

    def value(self, state: tuple[int, ...]) -> float:
        return self._score(state)[0]

    def reward(self, state: tuple[int, ...]) -> float:
        objective, violation = self._score(state)
        return objective if violation <= 1e-9 else objective - PENALTY * (1 + violation)

    def repair(self, state: tuple[int, ...]) -> tuple[int, ...]:
        """From a config that breaks a constraint: re-pick the stage option that most reduces the violation,
        until it holds or nothing reduces it."""
        while self._score(state)[1] > 1e-9:
            cand, key = self._best_move(state, pairs=False, by_violation=True)
            if cand is None or -key[0] >= self._score(state)[1] - 1e-12:
                break
            state = cand
        return state

    def greedy(self, state: tuple[int, ...]) -> tuple[int, ...]:
        """Re-pick one stage's option given the others, then two stages' together, while that improves."""
        while True:
            value = self.value(state)
            cand, key = self._best_move(state, pairs=False)
            if cand is None or key[1] <= value + 1e-12:
                cand, key = self._best_move(state, pairs=True)
            if cand is None or key[1] <= value + 1e-12:
                return state
            state = cand

    def _totals(self, state: tuple[int, ...]):
        lat = sum(self.lat[i][j] for i, j in enumerate(state))
        pen = sum(self.pen[i][j] for i, j in enumerate(state))
        cores = sum(self.cores[i][j] for i, j in enumerate(state))
        cpu = sum(self.cpu[i][j] for i, j in enumerate(state))
        return lat, pen, cores, cpu, [self.acc[i][j] for i, j in enumerate(state)]

    def _best_move(self, state: tuple[int, ...], pairs: bool, by_violation: bool = False):
        """The best config one stage (or two) away, all candidates scored at once: (state, (feasible, objective)),
        or with `by_violation` the one with the least violation, keyed (-violation, objective)."""
        lat, pen, cores, cpu, accs = self._totals(state)
        groups = [(a, b) for a in range(self.k) for b in range(a + 1, self.k)] if pairs else [(i,) for i in range(self.k)]
        best, best_key = None, None
        for g in groups:
            shape = [len(self.fronts[i]) for i in g]
            L, P, C, U = (np.full(shape, t, dtype=float) for t in (lat, pen, cores, cpu))
            kept = [a for i, a in enumerate(accs) if i not in g]
            for axis, i in enumerate(g):
                view = [1] * len(g)
                view[axis] = -1
                j = state[i]
                L += (self.lat[i] - self.lat[i][j]).reshape(view)
                P += (self.pen[i] - self.pen[i][j]).reshape(view)
                C += (self.cores[i] - self.cores[i][j]).reshape(view)
                U += (self.cpu[i] - self.cpu[i][j]).reshape(view)
            A = self._accuracy(kept, [self.acc[i] for i in g], shape)
            objective = self.problem.weights.alpha * A - P
            violation = (np.maximum(0.0, L / self.sla - 1) + np.maximum(0.0, C - self.budget) / max(self.budget, 1)
                         + np.maximum(0.0, U - self.cpu_budget) / max(self.cpu_budget, 1e-9))
            if by_violation:
                key = np.lexsort((objective.ravel(), -violation.ravel()))[-1]
                cand_key = (-float(violation.ravel()[key]), float(objective.ravel()[key]))
            else:
                masked = np.where(violation <= 1e-9, objective, -np.inf)
                key = int(np.argmax(masked))
                if not np.isfinite(masked.ravel()[key]):
                    continue
                cand_key = (True, float(masked.ravel()[key]))
            if best_key is None or cand_key > best_key:
                cand = list(state)
                for i, j in zip(g, np.unravel_index(key, shape)):
                    cand[i] = int(j)
                best, best_key = tuple(cand), cand_key
        return best, best_key

    def _accuracy(self, kept: list[float], moving: list[np.ndarray], shape: list[int]) -> np.ndarray:
        """The pipeline accuracy over every combination of the moving stages' options, the others kept."""
        grid = np.zeros(shape) if self.combine is not np.prod else np.ones(shape)
        for axis, acc in enumerate(moving):
            view = [1] * len(shape)
            view[axis] = -1
            grid = grid * acc.reshape(view) if self.combine is np.prod else grid + acc.reshape(view)
        if self.combine is np.prod:
            return grid * float(np.prod(kept)) if kept else grid
        total = grid + sum(kept)
        return total / self.k if self.combine is np.mean else total

    def options(self, state: tuple[int, ...]) -> list[Option]:
        return [self.fronts[i][j] for i, j in enumerate(state)]
