"""`quantserve loadtest run --seed` reaches the rate-mode arrival schedule: the CLI's arguments become the Locust
command, Locust's own parser reads it with the locustfile's and the shape's options, and the shape draws from it."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from loadtest import cli
from loadtest.runner import locust_command
from loadtest.steps import arrivals_for, build_steps
from loadtest.sweep import step_for, sweep_from_args

ARRIVALS = 20
# In its own process: importing locust patches the standard library with gevent.
SCHEDULE_SCRIPT = f"""
import json, sys
import locust  # first: gevent patching
from locust.argument_parser import get_parser
from locust.env import Environment
import loadtest.locustfile  # its --seed and workload options
from loadtest.shapes import SweepShape

gaps = []
for argv in json.loads(sys.stdin.read()):
    shape = SweepShape()
    Environment(shape_class=shape, parsed_options=get_parser().parse_args(argv)).create_local_runner()
    shape.tick()
    times = [shape.take_arrival().at_s for _ in range({ARRIVALS})]
    gaps.append([later - earlier for earlier, later in zip(times, times[1:])])
print(json.dumps(gaps))
"""


def locust_argv(seed: int, tmp_path) -> list[str]:
    """What `quantserve loadtest run --rate 2 --seed SEED` hands to `python -m locust` for its first step."""
    parser = argparse.ArgumentParser()
    cli.add_commands(parser.add_subparsers())
    args = parser.parse_args(["loadtest", "run", "--model", "m:v", "--rate", "2", "--seed", str(seed),
                              "--reports-dir", str(tmp_path), "--run-id", f"seed-{seed}"])
    sweep = sweep_from_args(args)
    command = locust_command(step_for(sweep, "m:v", sweep.levels[0]))
    assert command[1:3] == ["-m", "locust"]
    return command[3:]


def arrival_gaps(argvs: list[list[str]]) -> list[list[float]]:
    out = subprocess.run([sys.executable, "-c", SCHEDULE_SCRIPT], input=json.dumps(argvs), capture_output=True,
                         text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_cli_seed_sets_the_arrival_schedule(tmp_path):
    first, again, other = arrival_gaps([locust_argv(seed, tmp_path) for seed in (7, 7, 8)])
    assert len(first) == ARRIVALS - 1 and all(gap > 0 for gap in first)
    assert first == again
    assert first != other


def test_arrivals_depend_on_seed_and_step_not_on_each_other():
    steps = build_steps("rate", [2.0, 2.0], warmup_s=1, duration_s=10)

    def schedule(seed: int, step_index: int) -> list[float]:
        arrivals = arrivals_for(steps[step_index], seed, start_s=0.0)
        return [arrivals.take() for _ in range(ARRIVALS)]

    assert schedule(1, 0) == schedule(1, 0)
    assert len({tuple(schedule(seed, index)) for seed in (0, 1) for index in (0, 1)}) == 4
    assert arrivals_for(build_steps("users", [4], 1, 10)[0], 1, 0.0) is None
