"""Checkpointed unrolling: keep every k-th state going forward, recompute the rest going back.

Shared by the back-gradient reverse pass in PyTorch (``inner_loop``) and the compiled one
(``kernels.lenet``); the state is whatever one step maps to the next (a parameter dict, a
flat tensor).
"""
from __future__ import annotations

from typing import Callable, Iterator, TypeVar

State = TypeVar("State")


def unroll_keeping(step: Callable[[State, int], State], state: State, num_steps: int,
                   keep_every: int) -> tuple[State, dict[int, State]]:
    """The state after ``num_steps`` steps, and the kept states {t: state_t}, t a multiple of
    ``keep_every``."""
    kept: dict[int, State] = {}
    for t in range(num_steps):
        if t % keep_every == 0:
            kept[t] = state
        state = step(state, t)
    return state, kept


def states_in_reverse(step: Callable[[State, int], State], kept: dict[int, State],
                      num_steps: int, keep_every: int) -> Iterator[tuple[int, State]]:
    """(t, state_t) for t = num_steps - 1 down to 0, each segment recomputed once from its kept
    start."""
    segment: dict[int, State] = {}
    for t in reversed(range(num_steps)):
        if t not in segment:
            start = t - t % keep_every
            segment = {start: kept[start]}
            for u in range(start, t):
                segment[u + 1] = step(segment[u], u)
        yield t, segment.pop(t)
