"""Checkpointed unrolling: keep every k-th state going forward, recompute the rest going back.

Shared by the back-gradient reverse pass in PyTorch (``inner_loop``) and the compiled one
(``kernels.lenet``); the state is whatever one step maps to the next (a parameter dict, a
flat tensor).
"""
from __future__ import annotations

from typing import Callable, Iterator, TypeVar

State = TypeVar("State")


def unroll_keeping(step: Callable[[State, int], State], state: State, steps: range,
                   keep_every: int) -> tuple[State, dict[int, State]]:
    """The state after the ``steps`` (a range of step indices), and the kept states
    {t: state_t} for every ``keep_every``-th t from the range's start."""
    kept: dict[int, State] = {}
    for t in steps:
        if (t - steps.start) % keep_every == 0:
            kept[t] = state
        state = step(state, t)
    return state, kept


def states_in_reverse(step: Callable[[State, int], State], kept: dict[int, State],
                      steps: range, keep_every: int) -> Iterator[tuple[int, State]]:
    """(t, state_t) for t in ``steps`` from the last down, each segment recomputed once from
    its kept start."""
    segment: dict[int, State] = {}
    for t in reversed(steps):
        if t not in segment:
            start = t - (t - steps.start) % keep_every
            segment = {start: kept[start]}
            for u in range(start, t):
                segment[u + 1] = step(segment[u], u)
        yield t, segment.pop(t)
