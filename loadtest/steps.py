"""The plan of a load test as pure data: steps of a sweep, warm-up then measurement, and open-loop arrivals.

No Locust import here: the CLI process (which must not be gevent-patched) and the tests use it too.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

MODES = ("users", "rate")
ARRIVAL_KINDS = ("poisson", "constant")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


@dataclass(frozen=True)
class Step:
    """One level of a sweep: `level` users (mode users) or requests per second (mode rate)."""

    index: int
    mode: str
    level: float
    warmup_s: float
    duration_s: float

    @property
    def length_s(self) -> float:
        return self.warmup_s + self.duration_s


@dataclass(frozen=True)
class StepState:
    step: Step
    phase: str  # warmup | measure
    elapsed_s: float  # since the step began


def parse_duration(text: str) -> float:
    """`30s`, `2m`, `500ms`, `1h` or plain seconds."""
    match = _DURATION.match(str(text))
    if not match:
        raise ValueError(f"bad duration {text!r}; e.g. 30s, 2m, 500ms")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def parse_levels(text: str, mode: str) -> list[float]:
    """`1,2,4,8` users (whole numbers) or `0.5,1,2` requests per second, each above zero."""
    try:
        levels = [float(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"bad levels {text!r}; e.g. 1,2,4,8") from None
    if not levels or any(level <= 0 for level in levels):
        raise ValueError(f"levels must be positive numbers, got {text!r}")
    if mode == "users" and any(level != int(level) for level in levels):
        raise ValueError(f"user counts must be whole numbers, got {text!r}")
    return levels


def build_steps(mode: str, levels: list[float], warmup_s: float, duration_s: float) -> list[Step]:
    if mode not in MODES:
        raise ValueError(f"unknown load mode {mode!r}; use one of {', '.join(MODES)}")
    if duration_s <= 0 or warmup_s < 0:
        raise ValueError("step duration must be positive and warm-up not negative")
    return [Step(index, mode, level, warmup_s, duration_s) for index, level in enumerate(levels)]


def state_at(steps: list[Step], elapsed_s: float) -> StepState | None:
    """Where the plan is `elapsed_s` after it began; None once every step is over."""
    start = 0.0
    for step in steps:
        if elapsed_s < start + step.length_s:
            into = elapsed_s - start
            return StepState(step, "warmup" if into < step.warmup_s else "measure", into)
        start += step.length_s
    return None


def users_for(step: Step, rate_users: int) -> int:
    """How many Locust users a step needs: the level itself, or a pool that serves Poisson arrivals."""
    return int(step.level) if step.mode == "users" else rate_users


class ArrivalSchedule:
    """Open-loop arrival times at a mean rate, independent of the server: exponential gaps (`poisson`) or equal
    gaps (`constant`, the first arrival at `start_s`). Times are on the clock of `start_s`."""

    def __init__(self, rate_per_s: float, start_s: float, rng: random.Random, kind: str = "poisson") -> None:
        if rate_per_s <= 0:
            raise ValueError(f"rate must be positive, got {rate_per_s}")
        if kind not in ARRIVAL_KINDS:
            raise ValueError(f"unknown arrival kind {kind!r}; use one of {', '.join(ARRIVAL_KINDS)}")
        self.rate_per_s = rate_per_s
        self.kind = kind
        self._start_s = start_s
        self._taken = 0
        self._next_s = start_s
        self._rng = rng

    def take(self) -> float:
        """The time of the next arrival, advancing the schedule."""
        if self.kind == "constant":
            self._next_s = self._start_s + self._taken / self.rate_per_s
        else:
            self._next_s += self._rng.expovariate(self.rate_per_s)
        self._taken += 1
        return self._next_s


def arrivals_for(step: Step, seed: int, start_s: float, kind: str = "poisson") -> ArrivalSchedule | None:
    """The step's arrival schedule in rate mode (None in users mode): the same for the same seed, step and kind.

    Its own generator, apart from prompt and length choices, so the schedule does not depend on what was sent.
    """
    if step.mode != "rate":
        return None
    return ArrivalSchedule(step.level, start_s, random.Random(f"arrivals/{seed}/{step.index}"), kind)


def arrivals_due(step: Step, seed: int, kind: str, from_s: float, to_s: float) -> int:
    """How many of the step's scheduled arrivals fall in [from_s, to_s), in seconds since the step began."""
    schedule = arrivals_for(step, seed, 0.0, kind)
    if schedule is None:
        return 0
    due = 0
    while (at_s := schedule.take()) < to_s:
        due += at_s >= from_s
    return due
