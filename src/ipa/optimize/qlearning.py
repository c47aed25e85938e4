"""Q-learning after the energy study, made to work on changing workloads.

The energy study's design: states are pipeline configs, actions nudge one knob of one stage, the reward is
the objective heavily penalised when the SLA or the load is broken, epsilon-greedy with decaying epsilon.
Run from scratch at every decision over raw knobs (variant, batch, cores, replicas), it lands cores away
from the optimum and sometimes finds nothing feasible. Three things make it work here:

- The exact solver's structure: for a (variant, batch, cores) the best replica count is the fewest that
  sustain the load, and only each stage's Pareto options (latency, accuracy, penalty) can be optimal. So a
  state picks one Pareto option per stage, and an action moves one stage one step along its options
  (sorted by latency).
- What it learned is kept between decisions (`QLearning` is an object that lives as long as the loop):
  the Q-table is keyed by (variant, batch, cores) per stage, which stays meaningful when the load moves,
  and every decision starts from the previous decision's config.
- After exploring, a greedy pass re-picks each stage's option given the others, then two stages' together,
  until nothing improves, so a nearly right config becomes a locally optimal one; when exploring found
  nothing feasible, a repair pass first re-picks options to reduce the violation until none is left.

It returns the best feasible config it visited: a heuristic, measured against the exact optimum by
`python bench/optimizer.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ipa.optimize.problem import Option, Problem
from ipa.optimize.search import Neighbourhood



@dataclass(frozen=True)
class QSettings:
    episodes: int = 30
    steps: int = 20
    alpha: float = 0.5  # learning rate
    discount: float = 0.8
    epsilon: float = 0.3  # exploration at the first episode of a decision, decaying
    epsilon_decay: float = 0.9
    patience: int = 8  # episodes without a better config before the decision stops exploring
    seed: int = 0


class QLearning:
    """A Q-learning solver that keeps what it learned across the decisions of one adaptation loop."""

    name = "q-learning"

    def __init__(self, settings: QSettings = QSettings()):
        self.settings = settings
        self.q: dict[tuple, np.ndarray] = {}
        self.last: tuple | None = None  # (variant, batch, cores) per stage of the previous decision
        self.rng = np.random.default_rng(settings.seed)

    def __call__(self, problem: Problem, load: float) -> list[Option] | None:
        from ipa.optimize.solvers import stage_fronts

        fronts = [sorted(f, key=lambda o: (o.latency_s, o.penalty)) for f in stage_fronts(problem, load)]
        if any(not f for f in fronts):
            return None
        space = Neighbourhood(problem, load, fronts)
        start = space.nearest(self.last) if self.last else tuple(0 for _ in fronts)
        best = self._explore(space, start)
        if best is None:  # nothing feasible visited: repair the start, then the best explored
            best = space.repair(start)
            if not space.feasible(best):
                return None
        best = space.greedy(best)
        self.last = space.key(best)
        return space.options(best)

    def _explore(self, space: Neighbourhood, start: tuple[int, ...]) -> tuple[int, ...] | None:
        s = self.settings
        best, best_value = (start, space.value(start)) if space.feasible(start) else (None, -np.inf)
        eps, stale = s.epsilon, 0
        for _ in range(s.episodes):
            state = best if best is not None else start
            improved = False
            for _ in range(s.steps):
                key = space.key(state)
                q = self.q.setdefault(key, np.zeros(space.n_actions))
                a = int(self.rng.integers(space.n_actions)) if self.rng.random() < eps else int(np.argmax(q))
                nxt = space.step(state, a)
                reward = space.reward(nxt)
                q_next = self.q.get(space.key(nxt))
                future = float(q_next.max()) if q_next is not None else 0.0
                q[a] += s.alpha * (reward + s.discount * future - q[a])
                if space.feasible(nxt) and reward > best_value + 1e-12:
                    best, best_value, improved = nxt, reward, True
                state = nxt
            eps *= s.epsilon_decay
            stale = 0 if improved else stale + 1
            if stale >= s.patience:
                break
        return best


def q_learning(problem: Problem, load: float, settings: QSettings = QSettings()) -> list[Option] | None:
    """One decision with nothing learned before (the stateless form `solve` uses)."""
    return QLearning(settings)(problem, load)
