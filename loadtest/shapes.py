"""Load shapes for Locust: fixed concurrency, open-loop arrivals at a request rate, or a sweep of either.

Load it beside the locustfile: `locust -f loadtest/locustfile.py,loadtest/shapes.py --levels 1,2,4 ...`; rate mode
draws its arrivals (Poisson or constant) from the locustfile's `--seed`.
One step per level; each step begins with a warm-up whose requests are recorded as `warmup` and left out
of every figure (Locust's own statistics are reset when measurement begins).

Rate mode is open loop: every arrival has a scheduled time, fixed in advance; a user takes the next arrival when it
is free and sends it at that time, or at once if the time has passed (every user was busy: the client's
concurrency cap, `--rate-users`). Latency is measured from the scheduled time, so a late send still counts.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from locust import LoadTestShape, events

from loadtest.steps import (
    ARRIVAL_KINDS,
    ArrivalSchedule,
    Step,
    StepState,
    arrivals_due,
    arrivals_for,
    build_steps,
    parse_duration,
    parse_levels,
    state_at,
    users_for,
)

SPAWN_RATE = 100  # users per second: a step reaches its level at once


@events.init_command_line_parser.add_listener
def _add_shape_options(parser) -> None:
    group = parser.add_argument_group("quantserve load shape")
    group.add_argument("--shape-mode", choices=["users", "rate"], default="users",
                       help="users: fixed concurrency per step; rate: open-loop arrivals at LEVEL requests/s")
    group.add_argument("--levels", default="1", help="comma-separated levels, one step each (e.g. 1,2,4,8)")
    group.add_argument("--warmup", default="5s", help="warm-up at the start of each step, excluded from results")
    group.add_argument("--step-time", default="30s", help="measured time of each step")
    group.add_argument("--arrivals", choices=ARRIVAL_KINDS, default="poisson",
                       help="rate mode: exponential gaps (poisson) or equal gaps (constant)")
    group.add_argument("--rate-users", type=int, default=64,
                       help="rate mode: users available to serve arrivals (the client's cap on requests in flight)")
    group.add_argument("--schedule-json", default="", help="write each step's measured window and arrivals due here")


@dataclass(frozen=True)
class Arrival:
    """One scheduled request: its time on the perf_counter clock and the step and phase it falls in."""

    at_s: float
    state: StepState


class SweepShape(LoadTestShape):
    """Steps through `--levels`; the Locust users ask it for the current step and phase, and in rate mode for
    the next arrival. Every time here is on Locust's clock (`time.perf_counter`), the plan starting at `start_time`."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[Step] | None = None
        self.current: StepState | None = None
        self._schedule: ArrivalSchedule | None = None
        self._schedule_step: Step | None = None

    def tick(self):
        state = self.state_now()
        self._enter(state)
        if state is None:
            return None
        return users_for(state.step, self._options.rate_users), SPAWN_RATE

    @property
    def _options(self):
        return self.runner.environment.parsed_options

    @property
    def open_loop(self) -> bool:
        return self._options.shape_mode == "rate"

    def _plan(self) -> list[Step]:
        if self.steps is None:
            self.steps = _steps_from_options(self._options)
        return self.steps

    def state_now(self) -> StepState | None:
        """The step and phase at this instant, None once the plan is over (ticks come only once a second)."""
        return state_at(self._plan(), self.get_run_time())

    def take_arrival(self) -> Arrival | None:
        """The next scheduled request of the plan (rate mode), None once the plan's last step is over."""
        steps = self._plan()
        step = self._schedule_step or steps[0]
        while True:
            if self._schedule_step is not step:
                self._schedule_step, self._schedule = step, self._new_schedule(step)
            at_s = self._schedule.take()
            if at_s < self.start_time + step_start_s(steps, step) + step.length_s:
                return Arrival(at_s, state_at(steps, at_s - self.start_time))
            if step.index + 1 >= len(steps):
                return None
            step = steps[step.index + 1]

    def _new_schedule(self, step: Step) -> ArrivalSchedule:
        start = self.start_time + step_start_s(self._plan(), step)
        return arrivals_for(step, self._options.seed, start, self._options.arrivals)  # the locustfile's --seed

    def _enter(self, state: StepState | None) -> None:
        previous, self.current = self.current, state
        if state is None:
            return
        measuring_before = previous is not None and previous.phase == "measure" and previous.step == state.step
        if state.phase == "measure" and not measuring_before:
            self.runner.stats.reset_all()

    def schedule_facts(self, stopped_at_s: float) -> list[dict]:
        """Per step that began: its measured window (epoch seconds) and, in rate mode, the arrivals due in it."""
        epoch_offset = time.time() - time.perf_counter()
        facts = []
        for step in self._plan():
            began = step_start_s(self._plan(), step)
            ran_s = min(stopped_at_s - self.start_time - began, step.length_s)
            if ran_s <= step.warmup_s:
                continue
            due = arrivals_due(step, self._options.seed, self._options.arrivals, step.warmup_s, ran_s)
            start = self.start_time + began + epoch_offset
            facts.append({"level": step.level, "mode": step.mode, "arrivals": self._options.arrivals,
                          "rate_users": self._options.rate_users, "measure_start_s": start + step.warmup_s,
                          "measure_end_s": start + ran_s, "stopped_early": ran_s < step.length_s,
                          "arrivals_due": due if step.mode == "rate" else None})
        return facts


def step_start_s(steps: list[Step], step: Step) -> float:
    """When `step` begins, in seconds since the plan began."""
    return sum(earlier.length_s for earlier in steps[:step.index])


@events.quitting.add_listener
def _write_schedule(environment, **_kwargs) -> None:
    shape, options = environment.shape_class, environment.parsed_options
    if not isinstance(shape, SweepShape) or options is None or not options.schedule_json:
        return
    stopped_at = getattr(environment, "quantserve_stopped_at", None) or time.perf_counter()  # request budget spent
    facts = shape.schedule_facts(stopped_at)
    Path(options.schedule_json).write_text(json.dumps(facts, indent=2) + "\n")


def _steps_from_options(options):
    levels = parse_levels(options.levels, options.shape_mode)
    return build_steps(options.shape_mode, levels, parse_duration(options.warmup), parse_duration(options.step_time))
