"""Pareto filtering in (latency low, accuracy high, penalty low[, CPU low]): the exact solver's pruning step."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def pareto_filter(items: Sequence[T], key: Callable[[T], tuple[float, ...]]) -> list[T]:
    """Keep the items no other item beats on all of (latency <=, accuracy >=, penalty <=[, CPU <=]).

    With three dimensions, sorted by latency, each item is checked against a staircase of the (accuracy, penalty)
    points seen so far: sorted by accuracy ascending, the staircase's penalties ascend too,
    so the cheapest seen point with accuracy >= a is the first one at or after a.
    """
    if items and len(key(items[0])) == 4:
        return _pareto_4d(items, key)
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


def _sort_key(k: tuple[float, ...]) -> tuple[float, ...]:
    return (k[0], -k[1], *k[2:])


def _pareto_4d(items: Sequence[T], key: Callable[[T], tuple[float, ...]]) -> list[T]:
    """Sorted by latency, an item is kept unless an earlier kept one is at least as good on the other three."""
    keys = [key(it) for it in items]
    order = sorted(range(len(items)), key=lambda i: _sort_key(keys[i]))
    acc, pen, cpu = (np.empty(len(items)) for _ in range(3))
    kept: list[T] = []
    for i in order:
        _, a, p, c = keys[i]
        n = len(kept)
        if n and np.any((acc[:n] >= a) & (pen[:n] <= p) & (cpu[:n] <= c)):
            continue
        acc[n], pen[n], cpu[n] = a, p, c
        kept.append(items[i])
    return kept
