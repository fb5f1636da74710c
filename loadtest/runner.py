"""Run one sweep step as its own headless Locust process and collect its records, showing progress.

The Locust process imports only the locustfile, the shape and their small helpers: no serving modules,
and gevent's patching stays out of the CLI process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loadtest.cost import Slo
from loadtest.levels import StepWindow
from loadtest.records import RequestRecord, read_records

PACKAGE_DIR = Path(__file__).resolve().parent
STOP_TIMEOUT_S = 60  # requests in flight when a step ends may finish within this
PROGRESS_EVERY_S = 5.0
SCHEDULE_FILE = "schedule.json"


class StepInterrupted(KeyboardInterrupt):
    """Ctrl-C during a step; carries the records the step wrote until then."""

    def __init__(self, records: list[RequestRecord]) -> None:
        super().__init__("interrupted")
        self.records = records


@dataclass(frozen=True)
class StepSettings:
    """What every step of a run shares: where the load goes, what is sent, how it is paced, judged and seeded."""

    target: str
    endpoint: str  # chat | embeddings
    mode: str  # users | rate
    warmup_s: float
    duration_s: float
    max_requests: int
    rate_users: int  # rate mode: the client's cap on requests in flight
    prompts: str  # a prompt set's name or JSONL path; "synthetic" when each step writes its own (StepSpec.prompts)
    max_tokens: str
    slo: Slo
    seed: int  # prompt, output length and arrival choices
    arrivals: str = "poisson"  # rate mode: poisson | constant
    exact_output: bool = True  # send ignore_eos and min_tokens = max_tokens
    temperature: float | None = None  # None: not sent, the server's default (OpenAI's 1.0)


@dataclass(frozen=True)
class StepSpec:
    """One Locust process: one model id at one load level."""

    settings: StepSettings
    model_id: str
    label: str
    level: float
    folder: Path
    prompts: str = ""  # this step's own prompt file (synthetic prompts); "" for the settings' prompt set

    @property
    def name(self) -> str:
        unit = "users" if self.settings.mode == "users" else "req/s"
        return f"{self.label} @ {self.level:g} {unit}"


def locust_command(step: StepSpec) -> list[str]:
    settings = step.settings
    model_flag = "--embedding-model" if settings.endpoint == "embeddings" else "--model"
    return [
        sys.executable, "-m", "locust", "--headless", "--only-summary", "--loglevel", "WARNING",
        "-f", f"{PACKAGE_DIR / 'locustfile.py'},{PACKAGE_DIR / 'shapes.py'}",
        "--host", settings.target, model_flag, step.model_id, "--run-label", step.label,
        "--shape-mode", settings.mode, "--levels", f"{step.level:g}", "--rate-users", str(settings.rate_users),
        "--warmup", f"{settings.warmup_s:g}s", "--step-time", f"{settings.duration_s:g}s",
        "--max-requests", str(settings.max_requests), "--prompts", step.prompts or settings.prompts,
        "--max-tokens", settings.max_tokens, "--slo-ttft-ms", f"{settings.slo.ttft_ms or 0:g}",
        "--slo-tpot-ms", f"{settings.slo.tpot_ms or 0:g}", "--seed", str(settings.seed),
        "--arrivals", settings.arrivals, "--schedule-json", str(step.folder / SCHEDULE_FILE),
        "--stop-timeout", str(STOP_TIMEOUT_S), "--exit-code-on-error", "0",
        "--records-csv", str(step.folder / "records.csv"), "--csv", str(step.folder / "locust"),
        *(["--ignore-eos"] if settings.exact_output else []),
        *(["--temperature", f"{settings.temperature:g}"] if settings.temperature is not None else []),
    ]


def run_step(step: StepSpec, progress: Callable[[str], None]) -> list[RequestRecord]:
    """Run the step to its end (or its time bound) and return its records; raises RuntimeError if Locust failed."""
    step.folder.mkdir(parents=True, exist_ok=True)
    records_csv, log_path = step.folder / "records.csv", step.folder / "locust.log"
    deadline = time.monotonic() + step.settings.warmup_s + step.settings.duration_s + STOP_TIMEOUT_S + 60
    interrupted = False
    with log_path.open("w") as log:
        process = subprocess.Popen(locust_command(step), stdout=log, stderr=subprocess.STDOUT, env=_locust_env())
        try:
            _wait(process, step, records_csv, deadline, progress)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    records = read_records(records_csv) if records_csv.exists() else []
    if interrupted:
        raise StepInterrupted(records)
    if process.returncode not in (0, -9) and not records:
        raise RuntimeError(f"Locust failed on {step.name} (exit {process.returncode}): {_tail(log_path)}")
    return records


def read_windows(step: StepSpec) -> list[StepWindow]:
    """The measured windows the step's Locust process reported (none if it wrote no schedule.json)."""
    try:
        facts = json.loads((step.folder / SCHEDULE_FILE).read_text())
    except (OSError, ValueError):
        return []
    return [StepWindow(label=step.label, level=fact["level"], measure_start_s=fact["measure_start_s"],
                       measure_end_s=fact["measure_end_s"], arrivals=fact["arrivals"], rate_users=fact["rate_users"],
                       arrivals_due=fact["arrivals_due"], stopped_early=fact["stopped_early"]) for fact in facts]


def _wait(process: subprocess.Popen, step: StepSpec, records_csv: Path, deadline: float, progress) -> None:
    started = time.monotonic()
    total = step.settings.warmup_s + step.settings.duration_s
    while process.poll() is None:
        if time.monotonic() > deadline:
            progress(f"  {step.name}: still running past its time bound, stopping it")
            process.kill()
            return
        try:
            process.wait(timeout=PROGRESS_EVERY_S)
        except subprocess.TimeoutExpired:
            sent, errors = _count(records_csv)
            elapsed = min(time.monotonic() - started, total)
            progress(f"  {step.name}: {elapsed:.0f}/{total:.0f} s, {sent} requests done, {errors} errors")


def _count(records_csv: Path) -> tuple[int, int]:
    try:
        records = read_records(records_csv)
    except (OSError, ValueError, TypeError):  # not written yet, or a row half written
        return 0, 0
    return len(records), sum(not record.ok for record in records)


def _locust_env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(PACKAGE_DIR.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _tail(path: Path, lines: int = 8) -> str:
    try:
        return " | ".join(path.read_text().strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"
