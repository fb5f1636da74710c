"""Load shapes for Locust: fixed concurrency, constant request rate with Poisson arrivals, or a sweep of either.

Load it beside the locustfile: `locust -f loadtest/locustfile.py,loadtest/shapes.py --levels 1,2,4 ...`; rate mode
draws its arrivals from the locustfile's `--seed`.
One step per level; each step begins with a warm-up whose requests are recorded as `warmup` and left out
of every figure (Locust's own statistics are reset when measurement begins).
"""

from __future__ import annotations

import time

from locust import LoadTestShape, events

from loadtest.steps import (
    PoissonArrivals,
    StepState,
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
                       help="users: fixed concurrency per step; rate: Poisson arrivals at LEVEL requests/s")
    group.add_argument("--levels", default="1", help="comma-separated levels, one step each (e.g. 1,2,4,8)")
    group.add_argument("--warmup", default="5s", help="warm-up at the start of each step, excluded from results")
    group.add_argument("--step-time", default="30s", help="measured time of each step")
    group.add_argument("--rate-users", type=int, default=16,
                       help="rate mode: users available to serve arrivals (the most requests in flight)")


class SweepShape(LoadTestShape):
    """Steps through `--levels`; the Locust users ask it for the current step, phase and arrivals."""

    def __init__(self) -> None:
        super().__init__()
        self.steps = None
        self.current: StepState | None = None
        self.arrivals: PoissonArrivals | None = None

    def tick(self):
        if self.steps is None:
            self.steps = _steps_from_options(self.runner.environment.parsed_options)
        state = state_at(self.steps, self.get_run_time())
        self._enter(state)
        if state is None:
            return None
        options = self.runner.environment.parsed_options
        return users_for(state.step, options.rate_users), SPAWN_RATE

    def state_now(self) -> StepState | None:
        """The step and phase at this instant, None once the plan is over (ticks come only once a second)."""
        if self.steps is None:
            return self.current
        return state_at(self.steps, self.get_run_time())

    def _enter(self, state: StepState | None) -> None:
        previous, self.current = self.current, state
        if state is None:
            return
        if previous is None or previous.step != state.step:
            self._start_arrivals(state)
        measuring_before = previous is not None and previous.phase == "measure" and previous.step == state.step
        if state.phase == "measure" and not measuring_before:
            self.runner.stats.reset_all()

    def _start_arrivals(self, state: StepState) -> None:
        seed = self.runner.environment.parsed_options.seed  # the locustfile's --seed, which the CLI passes
        self.arrivals = arrivals_for(state.step, seed, time.monotonic())


def _steps_from_options(options):
    levels = parse_levels(options.levels, options.shape_mode)
    return build_steps(options.shape_mode, levels, parse_duration(options.warmup), parse_duration(options.step_time))
