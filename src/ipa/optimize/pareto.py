"""Pareto filtering in (latency low, accuracy high, penalty low): the exact solver's pruning step."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def pareto_filter(items: Sequence[T], key: Callable[[T], tuple[float, float, float]]) -> list[T]:
    """Keep the items no other item beats on all of (latency <=, accuracy >=, penalty <=).

    Sorted by latency, each item is checked against a staircase of the (accuracy, penalty)
    points seen so far: sorted by accuracy ascending, the staircase's penalties ascend too,
    so the cheapest seen point with accuracy >= a is the first one at or after a.
    """
    order = sorted(items, key=lambda it: _sort_key(key(it)))
    acc_steps: list[float] = []
    pen_steps: list[float] = []
    kept: list[T] = []
    for it in order:
        _, acc, pen = key(it)
        i = bisect.bisect_left(acc_steps, acc)
        if i < len(acc_steps) and pen_steps[i] <= pen:
            continue
        kept.append(it)
        j = i
        while j > 0 and pen_steps[j - 1] >= pen:  # points with less accuracy and no cheaper: gone
            j -= 1
        acc_steps[j:i] = [acc]
        pen_steps[j:i] = [pen]
    return kept


def _sort_key(k: tuple[float, float, float]) -> tuple[float, float, float]:
    lat, acc, pen = k
    return (lat, -acc, pen)
