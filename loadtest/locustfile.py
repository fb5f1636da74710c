"""Locust users that speak the OpenAI API to quantserve (or any OpenAI-compatible server) and measure it.

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8000 --model smollm2-135m:onnx-int4
    locust -f loadtest/locustfile.py,loadtest/shapes.py --headless --levels 1,2,4 --model ...   # a sweep

ChatStreamUser streams chat completions and fires its own request types beside the HTTP one (whose time is
only time-to-headers): TTFT, ITL (every gap between streamed tokens), TPOT (a request's mean time per output token
after the first) and E2E, plus SLO (a failure when a request misses `--slo-ttft-ms` / `--slo-tpot-ms`).
EmbeddingsUser posts to /v1/embeddings. Each request becomes one row of `--records-csv`; TTFT and E2E count from
when the request was due (in rate mode its scheduled arrival, so a late send still counts). Only classes whose model
is given run.
"""

# isort: off
import locust  # noqa: F401  # first: gevent must patch the standard library before ssl/urllib3 load
# isort: on

import logging
import random
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass

import gevent
import requests
from gevent import GreenletExit
from locust import HttpUser, constant, events, task

from loadtest.measure import accepted, measure_stream, read_embeddings, slo_miss
from loadtest.records import RequestRecord, open_writer, to_row
from loadtest.sse import parse_stream
from loadtest.steps import StepState
from loadtest.workload import PromptCycle, chat_request, load_prompt_set, output_length_sampler

IDLE_S = 0.2
log = logging.getLogger("quantserve.loadtest")


@events.init_command_line_parser.add_listener
def _add_options(parser) -> None:
    group = parser.add_argument_group("quantserve workload")
    group.add_argument("--model", default="", help="chat model id, MODEL or MODEL:VARIANT (runs ChatStreamUser)")
    group.add_argument("--embedding-model", default="", help="embedding model id (runs EmbeddingsUser)")
    group.add_argument("--prompts", default="short", help="prompt set: short, long, mix, extraction or a JSONL path")
    group.add_argument("--max-tokens", default="64",
                       help="output length: N, uniform:LO:HI, normal:MEAN:SD or exp:MEAN (sent as max_tokens)")
    group.add_argument("--ignore-eos", action="store_true",
                       help="exact output lengths: send ignore_eos and min_tokens = max_tokens (vLLM extensions)")
    group.add_argument("--temperature", type=float, default=None,
                       help="sampling temperature; not sent by default (the server's default, OpenAI's 1.0)")
    group.add_argument("--slo-ttft-ms", type=float, default=0, help="TTFT bound of the SLO (0: none)")
    group.add_argument("--slo-tpot-ms", "--slo-itl-ms", type=float, default=0,
                       help="bound on a request's mean time per output token (0: none)")
    group.add_argument("--records-csv", default="", help="write one row per request to this CSV file")
    group.add_argument("--max-requests", type=int, default=0, help="stop after sending this many requests (0: no cap)")
    group.add_argument("--request-timeout", type=float, default=120, help="seconds to wait for a response")
    group.add_argument("--run-label", default="", help="label stored with every record (the CLI: the variant)")
    group.add_argument("--seed", type=int, default=0, help="seed for prompt and output length choices")


class RunState:
    """What every user of one Locust process shares: the workload, the request budget and the records file."""

    def __init__(self, environment) -> None:
        options = environment.parsed_options
        self.environment = environment
        self.options = options
        self.rng = random.Random(options.seed)
        self.prompts = PromptCycle(load_prompt_set(options.prompts), self.rng)
        self.sample_max_tokens = output_length_sampler(str(options.max_tokens), self.rng)
        self.sent = 0
        self.stopping = False
        self._file = open(options.records_csv, "w", newline="") if options.records_csv else None  # noqa: SIM115
        self._writer = open_writer(self._file) if self._file else None

    def take_request(self) -> bool:
        """Count one request against `--max-requests`; False (and stop the test) once it is spent."""
        cap = self.options.max_requests
        if cap and self.sent >= cap:
            if not self.stopping:
                self.stopping = True
                log.info("sent %d requests (--max-requests): stopping", self.sent)
                self.environment.quantserve_stopped_at = time.perf_counter()  # the schedule's end, for offered load
                runner = self.environment.runner
                gevent.spawn(runner.quit if self.options.headless else runner.stop)
            return False
        self.sent += 1
        return True

    def write(self, record: RequestRecord) -> None:
        if self._writer:
            self._writer.writerow(to_row(record))
            self._file.flush()

    def close(self) -> None:
        if self._file:
            self._file.close()
            self._file = self._writer = None


@events.init.add_listener
def _on_init(environment, **_kwargs) -> None:
    options = environment.parsed_options
    if options is None:
        return
    wanted = {"ChatStreamUser": bool(options.model), "EmbeddingsUser": bool(options.embedding_model)}
    if not any(wanted.values()):
        sys.exit("quantserve locustfile: pass --model MODEL[:VARIANT] and/or --embedding-model MODEL")
    environment.user_classes = [cls for cls in environment.user_classes if wanted.get(cls.__name__, True)]
    environment.quantserve_run = RunState(environment)


@events.quitting.add_listener
def _on_quitting(environment, **_kwargs) -> None:
    run = getattr(environment, "quantserve_run", None)
    if run:
        run.close()


@dataclass(frozen=True)
class Slot:
    """When a request is due (perf_counter seconds), the step and phase it belongs to (None without a shape), and
    whether it had to wait for a free user."""

    due_s: float
    state: StepState | None
    waited_for_user: bool


class OpenAIUser(HttpUser):
    """Shared parts: pacing (open-loop arrivals from the rate shape), records, and Locust events."""

    abstract = True
    wait_time = constant(0)  # rate mode paces inside the task, so the first request of a user is paced too

    @property
    def shared(self) -> RunState:
        return self.environment.quantserve_run

    def _ready(self) -> Slot | None:
        """Wait until the next request is due; None when the plan is over or the request budget is spent.

        Rate mode: take the shape's next arrival and sleep until its time; if that time has already passed, every
        user was busy when it came due (the client's concurrency cap): it goes out at once, late, and says so.
        """
        shape = self.environment.shape_class
        if getattr(shape, "open_loop", False):
            arrival = shape.take_arrival()
            slot = None if arrival is None else Slot(arrival.at_s, arrival.state, time.perf_counter() > arrival.at_s)
            if slot is not None:
                gevent.sleep(max(0.0, slot.due_s - time.perf_counter()))
        else:
            state = shape.state_now() if hasattr(shape, "state_now") else None
            over = hasattr(shape, "state_now") and state is None
            slot = None if over else Slot(time.perf_counter(), state, False)
        if slot is None or not self.shared.take_request():
            gevent.sleep(IDLE_S)  # the runner stops this user within a second; do not spin until then
            return None
        return slot

    def _new_record(self, endpoint: str, model: str, prompt_id: str, max_tokens: int, slot: Slot) -> RequestRecord:
        now_s, now_perf = time.time(), time.perf_counter()
        record = RequestRecord(endpoint=endpoint, model=model, prompt_id=prompt_id, max_tokens=max_tokens,
                               run_label=self.shared.options.run_label, start_s=now_s,
                               scheduled_s=now_s - (now_perf - slot.due_s), lag_ms=(now_perf - slot.due_s) * 1000,
                               waited_for_user=slot.waited_for_user)
        if slot.state is None:
            record.level = self.environment.runner.user_count
        else:
            record.mode, record.level, record.phase = slot.state.step.mode, slot.state.step.level, slot.state.phase
        return record

    def _fire(self, request_type: str, name: str, ms: float, exception: Exception | None = None) -> None:
        self.environment.events.request.fire(request_type=request_type, name=name, response_time=ms,
                                             response_length=0, exception=exception, context={})

    def _finish(self, record: RequestRecord) -> None:
        record.end_s = time.time()
        self.shared.write(record)

    @contextmanager
    def _unfinished_recorded(self, record: RequestRecord):
        """A request still running when Locust stops this user (the step's stop timeout) is a failure, not a gap."""
        try:
            yield
        except GreenletExit:
            record.ok, record.error = False, "unfinished: the step's stop timeout ended it before its response"
            self._finish(record)
            raise


class ChatStreamUser(OpenAIUser):
    @task
    def chat(self) -> None:
        slot = self._ready()
        if slot is None:
            return
        options = self.shared.options
        prompt, max_tokens = self.shared.prompts.take(), self.shared.sample_max_tokens()
        record = self._new_record("chat", options.model, prompt.id, max_tokens, slot)
        body = chat_request(options.model, prompt.messages, max_tokens, options.temperature, options.ignore_eos,
                            prompt.response_format)
        with self._unfinished_recorded(record), self.client.post(
                "/v1/chat/completions", json=body, stream=True, catch_response=True, name=f"chat {options.model}",
                timeout=(5, options.request_timeout)) as response:
            self._read_stream(response, record, slot.due_s)
        self._finish(record)
        if record.ok:
            self._fire_latencies(record)

    def _read_stream(self, response, record: RequestRecord, due_s: float) -> None:
        if not accepted(response, record):
            response.failure(record.error)
            return
        try:
            result = parse_stream((time.perf_counter(), line) for line in response.iter_lines())
        except requests.RequestException as exc:
            record.error = f"stream broken: {type(exc).__name__}: {exc}"[:300]
            response.failure(record.error)
            return
        measure_stream(record, result, due_s)
        if record.error:
            response.failure(record.error)
        else:
            response.success()

    def _fire_latencies(self, record: RequestRecord) -> None:
        name = record.model
        self._fire("TTFT", name, record.ttft_ms)
        self._fire("E2E", name, record.e2e_ms)
        if record.tpot_ms is not None:
            self._fire("TPOT", name, record.tpot_ms)
        for gap_ms in record.token_gaps_ms:
            self._fire("ITL", name, gap_ms)
        options = self.shared.options
        miss = slo_miss(record, options.slo_ttft_ms, options.slo_tpot_ms)
        self._fire("SLO", name, record.e2e_ms, exception=RuntimeError(miss) if miss else None)


class EmbeddingsUser(OpenAIUser):
    @task
    def embed(self) -> None:
        slot = self._ready()
        if slot is None:
            return
        model = self.shared.options.embedding_model
        prompt = self.shared.prompts.take()
        record = self._new_record("embeddings", model, prompt.id, 0, slot)
        with self._unfinished_recorded(record), self.client.post(
                "/v1/embeddings", json={"model": model, "input": prompt.text}, catch_response=True,
                name=f"embeddings {model}", timeout=(5, self.shared.options.request_timeout)) as response:
            record.e2e_ms = (time.perf_counter() - slot.due_s) * 1000
            if accepted(response, record):
                read_embeddings(response.json(), record)
            response.success() if record.ok else response.failure(record.error)
        self._finish(record)
