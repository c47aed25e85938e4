"""Q-learning solver after the energy study: states are configs, actions nudge one knob of one stage.

State: per stage (variant, batch, cores, replicas). Actions: switch the variant up or down, +/-1
replica, batch up or down, cores up or down, for one stage. Reward: the objective, heavily
penalised for breaking the SLA or falling short of the load. Epsilon-greedy with decaying epsilon.
It returns the best feasible config it visited, so it is a heuristic: `bench/optimizer.py` reports
how far it lands from the exact optimum.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from ipa.optimize.problem import Option, Problem
from ipa.profiles.table import Profile

PENALTY = 10.0


@dataclass(frozen=True)
class QSettings:
    episodes: int = 200
    steps: int = 40
    alpha: float = 0.3  # learning rate
    discount: float = 0.9
    epsilon: float = 1.0
    epsilon_decay: float = 0.98
    epsilon_min: float = 0.05
    seed: int = 0


class _Space:
    """Per stage: sorted variants, batches, cores, and the profile row of each combination."""

    def __init__(self, problem: Problem, load: float):
        self.problem, self.load = problem, load
        self.stages = problem.spec.stage_names
        self.rows: list[dict[tuple[str, int, int], Profile]] = []
        self.axes: list[tuple[list[str], list[int], list[int]]] = []
        for s in self.stages:
            opts = problem.candidates(s, load)
            rows = {(o.variant, o.batch, o.cores): problem.profiles.lookup(s, o.variant, o.batch, o.cores) for o in opts}
            acc = {v.name: v.accuracy for v in problem.spec.stage(s).variants}
            variants = sorted({k[0] for k in rows}, key=lambda v: acc[v])
            self.rows.append(rows)
            self.axes.append((variants, sorted({k[1] for k in rows}), sorted({k[2] for k in rows})))
        self.actions = [(i, knob, step) for i in range(len(self.stages)) for knob in range(4) for step in (-1, 1)]

    def cap(self) -> int:
        return self.problem.frozen_replicas or self.problem.scaling_cap

    def start(self) -> tuple:
        n = self.problem.frozen_replicas or 1
        return tuple((0, 0, 0, n) for _ in self.stages)

    def step(self, state: tuple, action: tuple[int, int, int]) -> tuple:
        i, knob, d = action
        cur = list(state[i])
        if knob == 3:
            if self.problem.frozen_replicas:
                return state
            cur[3] = min(max(1, cur[3] + d), self.cap())
        else:
            cur[knob] = min(max(0, cur[knob] + d), len(self.axes[i][knob]) - 1)
        return state[:i] + (tuple(cur),) + state[i + 1 :]

    def options(self, state: tuple) -> list[Option] | None:
        out = []
        for i, (v, b, c, n) in enumerate(state):
            variants, batches, cores = self.axes[i]
            row = self.rows[i].get((variants[v], batches[b], cores[c]))
            if row is None:
                return None
            out.append(self.problem.option(row, self.load, replicas=n))
        return out

    def reward(self, chosen: list[Option] | None) -> tuple[float, bool]:
        if chosen is None:
            return -2 * PENALTY, False
        objective = self.problem.objective(chosen)
        latency = sum(o.latency_s for o in chosen)
        sla = self.problem.latency_budget_s
        short = sum(max(0.0, self.load - o.capacity_rps) for o in chosen) / max(self.load, 1.0)
        feasible = latency <= sla + 1e-9 and short <= 1e-9
        if feasible:
            return objective, True
        return objective - PENALTY * (1 + max(0.0, latency / sla - 1) + short), False


def q_learning(problem: Problem, load: float, settings: QSettings = QSettings()) -> list[Option] | None:
    space = _Space(problem, load)
    if any(not rows for rows in space.rows):
        return None
    rng = np.random.default_rng(settings.seed)
    q: dict[tuple, np.ndarray] = defaultdict(lambda: np.zeros(len(space.actions)))
    best: tuple[float, list[Option]] | None = None
    eps = settings.epsilon
    for _ in range(settings.episodes):
        state = space.start()
        for _ in range(settings.steps):
            a = int(rng.integers(len(space.actions))) if rng.random() < eps else int(np.argmax(q[state]))
            nxt = space.step(state, space.actions[a])
            chosen = space.options(nxt)
            r, feasible = space.reward(chosen)
            q[state][a] += settings.alpha * (r + settings.discount * q[nxt].max() - q[state][a])
            if feasible and chosen is not None and (best is None or r > best[0]):
                best = (r, chosen)
            state = nxt
        eps = max(settings.epsilon_min, eps * settings.epsilon_decay)
    return best[1] if best else None
